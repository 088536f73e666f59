"""Checkpoints that resume a run exactly: arrays through orbax or a plain ``.npz``, state as JSON.

A checkpoint is a pytree of arrays plus a JSON object, saved under ``directory/<step>/``. The
runner (:func:`mtljax.run.run` with ``schedule.checkpoint_every``) stores

* arrays: ``{"train_state": TrainState, "best_params": params}`` — parameters, optimizer
  state, method state (PRNG keys included) and the step counter, and the parameters selected
  on validation so far;
* JSON: the config, the batch iterator's position (:meth:`BatchIterator.state
  <mtljax.data.loader.BatchIterator.state>`, which with the seed fixes every later batch), the
  best-so-far score, step and validation metrics, the last validation metrics and the count of
  non-finite steps.

Nothing else carries randomness: the method's PRNG key lives in its state and the batch order
is a function of ``(seed, epoch, position)``, so a resumed run computes the same steps as an
uninterrupted one (bitwise on CPU, where XLA is deterministic).

Two formats, chosen by ``backend``:

``"orbax"``
  orbax-checkpoint's ``CheckpointManager`` (the ``ckpt`` extra), with an array item
  ``arrays`` (``StandardSave``) and a JSON item ``meta``. orbax writes to a temporary folder
  and renames it, and keeps the last ``keep`` steps. Saves are synchronous: the train step
  donates its state, and a checkpoint is on disk when :meth:`Checkpointer.save` returns.
``"npz"``
  No dependency beyond NumPy. ``arrays.npz`` holds leaf ``i`` of the flattened pytree as
  ``leaf_<i>``, a typed PRNG key as its ``jax.random.key_data``, and ``meta.json`` the JSON
  object. Both files are written and fsync-ed in ``directory/.tmp-<step>-*``, which is then
  renamed to ``directory/<step>`` (``os.replace``, atomic on POSIX).

In both, the JSON object gains a ``"_leaves"`` entry: each leaf's path
(``jax.tree_util.keystr``), dtype, shape and PRNG key implementation, which a restore checks
against its target before reading any array.

``"auto"`` (the default) keeps the format of the checkpoints already in ``directory``, else
uses orbax when it imports and npz otherwise: orbax-checkpoint 0.12.8 on jax 0.10.2 (CPU)
round-trips typed PRNG keys, NNX states and optax states when restored into an abstract
target, and saves a small model in ~30 ms, so it is not flaky enough to demote. Both formats
restore *into a target* (the freshly initialised state), so the restored state has the
target's NamedTuple and NNX types.

A killed save leaves at most a temporary folder (a name that is not an integer), which
:meth:`Checkpointer.steps` ignores; a step folder exists only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

BACKENDS = ("auto", "orbax", "npz")
_NPZ = "arrays.npz"
_META = "meta.json"
_LEAVES = "_leaves"  # the meta key describing the saved arrays


def orbax_available() -> bool:
    """Whether ``orbax.checkpoint`` imports."""
    try:
        import orbax.checkpoint  # noqa: F401
    except ImportError:
        return False
    return True


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Saves and restores numbered checkpoints in one directory, keeping the last ``keep``.

    Args:
      directory: where the step folders go (created on the first save).
      keep: how many of the latest checkpoints to keep (older ones are deleted after a save).
      backend: ``"auto"``, ``"orbax"`` or ``"npz"`` (see the module docstring).

    Example:
      >>> import tempfile, jax.numpy as jnp
      >>> ckpt = Checkpointer(tempfile.mkdtemp(), backend="npz")
      >>> ckpt.save(10, {"w": jnp.ones(2)}, {"note": "hi"})
      >>> arrays, meta = ckpt.restore({"w": jnp.zeros(2)})
      >>> ckpt.latest_step(), arrays["w"].tolist(), meta["note"]
      (10, [1.0, 1.0], 'hi')
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        if int(keep) < 1:
            raise ValueError(f"keep must be a positive integer, got {keep}.")
        self.directory = os.path.abspath(os.fspath(directory))
        self.keep = int(keep)
        existing = {self._format(s) for s in self.steps()}
        if len(existing) > 1:
            raise ValueError(f"{self.directory} mixes orbax and npz checkpoints.")
        if backend == "auto":
            backend = existing.pop() if existing else ("orbax" if orbax_available() else "npz")
        elif existing and existing != {backend}:
            raise ValueError(
                f"{self.directory} holds {existing.pop()} checkpoints; cannot add {backend} ones."
            )
        if backend == "orbax" and not orbax_available():
            raise ValueError(
                "The orbax format needs orbax-checkpoint (pip install 'mtljax[ckpt]'); "
                'use backend="npz" otherwise.'
            )
        self.backend = backend
        self._manager = None

    def steps(self) -> list[int]:
        """The steps with a complete checkpoint, ascending."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(
            int(name)
            for name in os.listdir(self.directory)
            if name.isdigit() and os.path.isdir(os.path.join(self.directory, name))
        )

    def latest_step(self) -> int | None:
        """The last checkpointed step, or ``None`` when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def _format(self, step: int) -> str:
        path = os.path.join(self.directory, str(step), _NPZ)
        return "npz" if os.path.exists(path) else "orbax"

    def _orbax(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, enable_async_checkpointing=False
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def save(self, step: int, arrays: Any, meta: Mapping[str, Any]) -> None:
        """Writes ``arrays`` (a pytree of arrays) and ``meta`` (JSON-able) as ``step``.

        The call returns once the checkpoint is complete on disk. ``meta`` may hold NaN and
        ±Inf floats (written as JSON's ``NaN``/``Infinity`` extension, read back by Python).
        """
        step = int(step)
        if _LEAVES in meta:
            raise ValueError(f"meta may not use the key {_LEAVES!r} (reserved).")
        meta = {**meta, _LEAVES: _describe(arrays)}
        if self.backend == "orbax":
            import orbax.checkpoint as ocp

            manager = self._orbax()
            args = ocp.args.Composite(
                arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
            )
            manager.save(step, args=args, force=True)
            manager.wait_until_finished()
            return
        self._save_npz(step, arrays, meta)
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(os.path.join(self.directory, str(old)))

    def _save_npz(self, step: int, arrays: Any, meta: dict) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.startswith(".tmp-"):  # left behind by a killed save
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        host = {
            f"leaf_{i}": np.asarray(jax.device_get(jax.random.key_data(x) if _is_key(x) else x))
            for i, x in enumerate(jax.tree.leaves(arrays))
        }
        tmp = tempfile.mkdtemp(prefix=f".tmp-{step}-", dir=self.directory)
        with open(os.path.join(tmp, _NPZ), "wb") as f:
            np.savez(f, **host)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, _META), "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        final = os.path.join(self.directory, str(step))
        if os.path.exists(final):  # re-saving a step: move the old one aside first
            os.replace(final, tempfile.mkdtemp(prefix=f".tmp-{step}-old-", dir=self.directory))
        os.replace(tmp, final)
        _fsync(self.directory)

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Reads checkpoint ``step`` (default: the latest) into the structure of ``target``.

        Args:
          target: a pytree like the saved one (e.g. the freshly initialised state); only its
            structure, shapes, dtypes and PRNG key implementations are used.
          step: the step to read; the latest by default.

        Returns:
          ``(arrays, meta)``: the saved arrays with ``target``'s tree structure (typed PRNG keys
          where ``target`` has them) and the saved JSON object.

        Raises:
          FileNotFoundError: no checkpoint (at ``step``).
          ValueError: the checkpoint does not match ``target``.
        """
        step = self.latest_step() if step is None else int(step)
        if step is None or step not in self.steps():
            raise FileNotFoundError(
                f"No checkpoint {'' if step is None else step} in {self.directory}."
            )
        npz = self._format(step) == "npz"
        if not npz and not orbax_available():
            raise ValueError(
                f"Checkpoint {step} in {self.directory} is in orbax format; install "
                "orbax-checkpoint (pip install 'mtljax[ckpt]') to read it."
            )
        meta = self._read_meta(step, npz)
        _check_target(meta.pop(_LEAVES), target, f"Checkpoint {step} in {self.directory}")
        treedef = jax.tree.structure(target)
        if npz:
            path = os.path.join(self.directory, str(step), _NPZ)
            with np.load(path, allow_pickle=False) as data:
                leaves = [data[f"leaf_{i}"] for i in range(treedef.num_leaves)]
            leaves = [
                jax.random.wrap_key_data(x, impl=jax.random.key_impl(like))
                if _is_key(like)
                else jax.numpy.asarray(x)
                for x, like in zip(leaves, jax.tree.leaves(target), strict=True)
            ]
            return jax.tree.unflatten(treedef, leaves), meta
        import orbax.checkpoint as ocp

        # Restoring without an abstract target would turn NamedTuples and NNX states into
        # plain dicts and lists.
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self._orbax().restore(
            step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
        )
        if jax.tree.structure(restored.arrays) != treedef:
            raise ValueError(
                f"Checkpoint {step} restored as {jax.tree.structure(restored.arrays)}, not as "
                f"the target {treedef}."
            )
        return restored.arrays, meta

    def _read_meta(self, step: int, npz: bool) -> dict:
        if npz:
            with open(os.path.join(self.directory, str(step), _META), encoding="utf-8") as f:
                return json.load(f)
        import orbax.checkpoint as ocp

        restored = self._orbax().restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)


def _describe(tree: Any) -> list[dict]:
    """Each leaf's path, dtype, shape and PRNG key implementation (keys: of their key data)."""
    described = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        impl = str(jax.random.key_impl(leaf)) if _is_key(leaf) else None
        data = jax.random.key_data(leaf) if impl else leaf
        described.append(
            {
                "path": jax.tree_util.keystr(path),
                "dtype": str(np.dtype(data.dtype)),
                "shape": list(np.shape(data)),
                "key_impl": impl,
            }
        )
    return described


def _check_target(saved: list[dict], target: Any, where: str) -> None:
    wanted = _describe(target)
    if len(saved) != len(wanted):
        raise ValueError(f"{where} has {len(saved)} arrays, the target {len(wanted)}.")
    for got, want in zip(saved, wanted, strict=True):
        if got != want:
            raise ValueError(f"{where} does not match the target: saved {got}, target {want}.")


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Drops the records of a JSON-lines log after ``step``, atomically (``os.replace``).

    A resumed run appends from the checkpoint's step on, so the log then holds each step
    once. A last line cut short by a kill is dropped.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
        if record["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
