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

Integrity: the last act of a save writes ``<step>/checksums.json`` (atomically), the size and
SHA-256 digest of every other file of the step. A restore first checks them; a step whose
files are missing, cut short or changed, or that cannot be read, is *corrupt*. Without an
explicit ``step``, :meth:`Checkpointer.restore` then walks down to the newest intact step and
warns once per corrupt step (:class:`CorruptCheckpointWarning`); with none intact it raises
:class:`CorruptCheckpointError`. A checkpoint that is intact but does not fit the target (or
the caller's ``check``) is a user error, not corruption: it raises
:class:`CheckpointMismatchError` at once. Checkpoints of mtljax < 0.4 have no checksums: they
are read unverified, and count as corrupt only when reading them fails.

``"auto"`` (the default) keeps the format of the checkpoints already in ``directory``, else
uses orbax when it imports and npz otherwise: orbax-checkpoint 0.12.8 on jax 0.10.2 (CPU)
round-trips typed PRNG keys, NNX states and optax states when restored into an abstract
target, and saves a small model in ~30 ms, so it is not flaky enough to demote. Both formats
restore *into a target* (the freshly initialised state), so the restored state has the
target's NamedTuple and NNX types.

A killed save leaves at most a temporary folder (a name that is not an integer), which
:meth:`Checkpointer.steps` ignores and the next save removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

BACKENDS = ("auto", "orbax", "npz")
_NPZ = "arrays.npz"
_META = "meta.json"
_CHECKSUMS = "checksums.json"
_ORBAX_MARKS = ("_CHECKPOINT_METADATA", "arrays", "meta")  # what an orbax step folder holds
_LEAVES = "_leaves"  # the meta key describing the saved arrays
_TMP = ".tmp-"  # prefix of the folders of unfinished saves and of replaced steps


class CorruptCheckpointError(ValueError):
    """A checkpoint step (or every step of a directory) is damaged or unreadable.

    Attributes:
      directory: the checkpoint directory.
      reasons: ``{step: reason}`` for each corrupt step that was tried, newest first.
    """

    def __init__(self, message: str, directory: str, reasons: Mapping[int, str]):
        super().__init__(message)
        self.directory = directory
        self.reasons = dict(reasons)


class CheckpointMismatchError(ValueError):
    """An intact checkpoint that does not fit the restore target (or the caller's check)."""


class CorruptCheckpointWarning(UserWarning):
    """A corrupt checkpoint step was skipped in favour of an older intact one."""


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


def _one_line(error: BaseException) -> str:
    """``"<Type>: <first line of the message>"``, at most 200 characters."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 200 else text[:197] + "..."


def _digests(folder: str) -> dict[str, dict]:
    """``{relative path: {"bytes": size, "sha256": hex digest}}`` of every file in ``folder``
    except the checksum file itself, in sorted order."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel == _CHECKSUMS:
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(chunk)
            found[rel] = {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}
    return dict(sorted(found.items()))


def _write_checksums(folder: str) -> None:
    """Writes ``folder/checksums.json`` atomically (a fsync-ed temporary file, then a rename)."""
    record = {"algorithm": "sha256", "files": _digests(folder)}
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP}{_CHECKSUMS}-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, _CHECKSUMS))
    _fsync(folder)


def _verify(folder: str) -> str | None:
    """Why ``folder``'s files differ from its ``checksums.json``; ``None`` when they match or
    when there is no checksum file (a checkpoint of mtljax < 0.4, read unverified)."""
    if not any(files for _, _, files in os.walk(folder)):
        return "the step folder is empty"
    path = os.path.join(folder, _CHECKSUMS)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            expected = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{_CHECKSUMS} is unreadable: {_one_line(error)}"
    found = _digests(folder)
    for rel, want in expected.items():
        got = found.get(rel)
        if got is None:
            return f"{rel} is missing"
        if got["bytes"] != want["bytes"]:
            return f"{rel} has {got['bytes']} bytes, {want['bytes']} were saved"
        if got["sha256"] != want["sha256"]:
            return f"{rel} does not match its SHA-256 checksum"
    return None


class _Corrupt(Exception):
    """Internal: the step being read is damaged; the message is the one-line reason."""


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
        existing = {self._format(s) for s in self.steps()} - {None}
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
                "The orbax format needs orbax-checkpoint (pip install -e '.[ckpt]' in the "
                'repository); use backend="npz" otherwise.'
            )
        self.backend = backend
        self._manager = None

    def steps(self) -> list[int]:
        """The steps that have a step folder, ascending (a corrupt step included)."""
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

    def _folder(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _format(self, step: int) -> str | None:
        """``"npz"``, ``"orbax"``, or ``None`` for a folder that holds neither."""
        folder = self._folder(step)
        if any(os.path.exists(os.path.join(folder, name)) for name in (_NPZ, _META)):
            return "npz"
        if any(os.path.exists(os.path.join(folder, name)) for name in _ORBAX_MARKS):
            return "orbax"
        return None

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

        The call returns once the checkpoint and its checksums are complete on disk. ``meta``
        may hold NaN and ±Inf floats (written as JSON's ``NaN``/``Infinity`` extension, read
        back by Python). An existing folder of ``step`` (e.g. a corrupt step that a resumed run
        reaches again) is replaced.
        """
        step = int(step)
        if _LEAVES in meta:
            raise ValueError(f"meta may not use the key {_LEAVES!r} (reserved).")
        meta = {**meta, _LEAVES: _describe(arrays)}
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.startswith(_TMP):  # left behind by a killed save, or a replaced step
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        if self.backend == "orbax":
            self._save_orbax(step, arrays, meta)
            return
        self._save_npz(step, arrays, meta)
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(self._folder(old))

    def _save_orbax(self, step: int, arrays: Any, meta: dict) -> None:
        import orbax.checkpoint as ocp

        if os.path.exists(self._folder(step)):  # orbax refuses to overwrite a step
            self._move_aside(step)
            self._orbax().reload()
        manager = self._orbax()
        args = ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
        )
        manager.save(step, args=args, force=True)
        manager.wait_until_finished()
        if jax.process_index() == 0:  # orbax's primary host writes the step's metadata too
            _write_checksums(self._folder(step))

    def _save_npz(self, step: int, arrays: Any, meta: dict) -> None:
        host = {
            f"leaf_{i}": np.asarray(jax.device_get(jax.random.key_data(x) if _is_key(x) else x))
            for i, x in enumerate(jax.tree.leaves(arrays))
        }
        tmp = tempfile.mkdtemp(prefix=f"{_TMP}{step}-", dir=self.directory)
        with open(os.path.join(tmp, _NPZ), "wb") as f:
            np.savez(f, **host)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, _META), "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        _write_checksums(tmp)
        if os.path.exists(self._folder(step)):
            self._move_aside(step)
        os.replace(tmp, self._folder(step))
        _fsync(self.directory)

    def _move_aside(self, step: int) -> None:
        """Renames the folder of ``step`` to a temporary name, removed by the next save."""
        aside = tempfile.mkdtemp(prefix=f"{_TMP}{step}-old-", dir=self.directory)
        os.replace(self._folder(step), aside)

    def restore(
        self,
        target: Any,
        step: int | None = None,
        *,
        check: Callable[[dict], None] | None = None,
    ) -> tuple[Any, dict]:
        """Reads checkpoint ``step`` (default: the newest intact one) into ``target``'s structure.

        A step is corrupt when its files differ from its checksums or cannot be read (see the
        module docstring). Without ``step``, a corrupt step is skipped for the next older one,
        with one :class:`CorruptCheckpointWarning` per skipped step::

          checkpoint step 40 in runs/md/checkpoints is corrupt (arrays.npz has 812 bytes,
          2348 were saved); resuming from step 30

        Args:
          target: a pytree like the saved one (e.g. the freshly initialised state); only its
            structure, shapes, dtypes and PRNG key implementations are used.
          step: the step to read; by default the newest intact one.
          check: called with the saved JSON object before any array is read, to refuse a
            checkpoint that is intact but unsuitable (e.g. saved with another config) by
            raising; its exception propagates, there is no fallback.

        Returns:
          ``(arrays, meta)``: the saved arrays with ``target``'s tree structure (typed PRNG keys
          where ``target`` has them) and the saved JSON object.

        Raises:
          FileNotFoundError: no checkpoint (at ``step``).
          CorruptCheckpointError: the given ``step``, or every step, is corrupt (a
            ``ValueError``).
          CheckpointMismatchError: the checkpoint read does not fit ``target`` (a
            ``ValueError``).
        """
        steps = self.steps()
        if step is not None and int(step) not in steps or not steps:
            raise FileNotFoundError(
                f"No checkpoint {'' if step is None else step} in {self.directory}."
            )
        reasons = {}
        for candidate in reversed(steps) if step is None else [int(step)]:
            try:
                restored = self._restore_step(candidate, target, check)
            except _Corrupt as error:
                reasons[candidate] = str(error)
                continue
            for bad, reason in reasons.items():
                warnings.warn(
                    f"checkpoint step {bad} in {self.directory} is corrupt ({reason}); "
                    f"resuming from step {candidate}",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
            return restored
        listed = "; ".join(f"step {s}: {reason}" for s, reason in reasons.items())
        what = f"Checkpoint step {step} is corrupt" if step is not None else "No intact checkpoint"
        raise CorruptCheckpointError(
            f"{what} in {self.directory} ({listed}). Move the folder away to start afresh.",
            self.directory,
            reasons,
        )

    def _restore_step(self, step: int, target: Any, check) -> tuple[Any, dict]:
        """Reads one step; a damaged one raises :class:`_Corrupt` with the reason."""
        reason = _verify(self._folder(step))
        if reason is not None:
            raise _Corrupt(reason)
        fmt = self._format(step)
        if fmt is None:
            raise _Corrupt("the step folder holds neither an npz nor an orbax checkpoint")
        if fmt == "orbax" and not orbax_available():
            raise ValueError(
                f"Checkpoint step {step} in {self.directory} is in orbax format; install "
                "orbax-checkpoint (pip install -e '.[ckpt]' in the repository) to read it."
            )
        where = f"Checkpoint step {step} in {self.directory}"
        # Reading damaged files raises whatever the format's reader raises (JSONDecodeError,
        # zipfile.BadZipFile, orbax and tensorstore errors, ...): all of them mean damage.
        try:
            meta = self._read_meta(step, fmt)
            saved = meta.pop(_LEAVES)
        except Exception as error:  # noqa: BLE001
            name = _META if fmt == "npz" else "meta/metadata"
            raise _Corrupt(f"{name} is unreadable: {_one_line(error)}") from error
        if check is not None:
            check(meta)
        _check_target(saved, target, where)
        try:
            arrays = self._read_arrays(step, fmt, target)
        except Exception as error:  # noqa: BLE001
            name = _NPZ if fmt == "npz" else "arrays/"
            raise _Corrupt(f"{name} is unreadable: {_one_line(error)}") from error
        return arrays, meta

    def _read_meta(self, step: int, fmt: str) -> dict:
        if fmt == "npz":
            with open(os.path.join(self._folder(step), _META), encoding="utf-8") as f:
                return dict(json.load(f))
        import orbax.checkpoint as ocp

        restored = self._orbax().restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def _read_arrays(self, step: int, fmt: str, target: Any) -> Any:
        treedef = jax.tree.structure(target)
        if fmt == "npz":
            # np.load on a path leaks the file when the archive is damaged; a handle does not.
            with (
                open(os.path.join(self._folder(step), _NPZ), "rb") as f,
                np.load(f, allow_pickle=False) as data,
            ):
                leaves = [data[f"leaf_{i}"] for i in range(treedef.num_leaves)]
            leaves = [
                jax.random.wrap_key_data(x, impl=jax.random.key_impl(like))
                if _is_key(like)
                else jax.numpy.asarray(x)
                for x, like in zip(leaves, jax.tree.leaves(target), strict=True)
            ]
            return jax.tree.unflatten(treedef, leaves)
        import orbax.checkpoint as ocp

        # Restoring without an abstract target would turn NamedTuples and NNX states into
        # plain dicts and lists.
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self._orbax().restore(
            step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
        )
        if jax.tree.structure(restored.arrays) != treedef:
            raise ValueError(f"restored as {jax.tree.structure(restored.arrays)}, not {treedef}")
        return restored.arrays


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


def _some(paths: list[str], shown: int = 3) -> str:
    """Up to ``shown`` of ``paths``, and how many more."""
    if not paths:
        return "none"
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return ", ".join(paths[:shown]) + more


def _check_target(saved: list[dict], target: Any, where: str) -> None:
    """Raises :class:`CheckpointMismatchError` naming the arrays where ``saved`` (the
    checkpoint's ``_leaves``) and ``target`` differ."""
    wanted = _describe(target)
    saved_paths, wanted_paths = [d["path"] for d in saved], [d["path"] for d in wanted]
    if saved_paths != wanted_paths:
        only_saved = [p for p in saved_paths if p not in set(wanted_paths)]
        only_target = [p for p in wanted_paths if p not in set(saved_paths)]
        raise CheckpointMismatchError(
            f"{where} does not fit the target: it has {len(saved)} arrays, the target "
            f"{len(wanted)}; only in the checkpoint: {_some(only_saved)}; only in the target: "
            f"{_some(only_target)}."
        )
    for got, want in zip(saved, wanted, strict=True):
        if got != want:
            raise CheckpointMismatchError(
                f"{where} does not fit the target at {want['path']}: saved {_leaf_text(got)}, "
                f"target {_leaf_text(want)}."
            )


def _leaf_text(leaf: dict) -> str:
    key = f" ({leaf['key_impl']} key)" if leaf["key_impl"] else ""
    return f"{leaf['dtype']}{leaf['shape']}{key}"


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
