"""Host-side batching with fixed batch shapes and a resumable position.

A jitted train step compiles once per input shape, so every training batch has the same shape
(:class:`BatchIterator` drops each epoch's remainder by default) and evaluation pads its last
batch and marks the padding in a ``"mask"`` entry (:func:`eval_batches`) for the masked
objectives of :mod:`mtljax.objectives`.

The order of epoch ``e`` is a permutation drawn from ``numpy.random.default_rng([seed, e])``,
so the stream of batches is a pure function of ``(seed, epoch, position)``: a checkpoint stores
:meth:`BatchIterator.state` and :meth:`BatchIterator.restore` resumes at the same batch.

Arrays may be nested dicts of ``[N, ...]`` arrays (e.g. the per-task ``"label_mask"`` of
:mod:`mtljax.data.missing`); batches keep the nesting. Augmentation runs on training batches
only: :class:`BatchIterator` takes an ``augment`` hook, :func:`eval_batches` has none. With
``num_shards > 1`` an iterator yields only its shard (host) of each global batch
(:mod:`mtljax.data.sharding`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np

MASK = "mask"

Augment = Callable[[dict, np.random.Generator], dict]


def _num_samples(arrays) -> int:
    leaves = jax.tree_util.tree_leaves_with_path(arrays)
    if not leaves:
        raise ValueError("Batching needs at least one array.")
    sizes = {jax.tree_util.keystr(path): len(a) for path, a in leaves}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"Every array needs the same number of samples, got {sizes}.")
    return next(iter(sizes.values()))


def _as_arrays(arrays):
    return jax.tree.map(np.asarray, dict(arrays))


def _check_augmented(before, after) -> None:
    """An augmentation must keep every array's shape and dtype (else the step recompiles)."""
    if jax.tree.structure(before) != jax.tree.structure(after):
        raise ValueError("augment must return a batch with the same keys as its input.")
    for (path, old), new in zip(
        jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True
    ):
        new = np.asarray(new)
        if (old.shape, old.dtype) != (new.shape, new.dtype):
            raise ValueError(
                f"augment changed {jax.tree_util.keystr(path)} from {old.shape} {old.dtype} to "
                f"{new.shape} {new.dtype}; it must keep shapes and dtypes so the jitted step "
                "does not recompile."
            )


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """An endless iterator over epochs of shuffled mini-batches of numpy arrays.

    Args:
      arrays: ``{name: [N, ...]}`` (possibly nested dicts), all with the same ``N``.
      batch_size: samples per (global) batch.
      seed: seeds the per-epoch permutations and the augmentation.
      shuffle: permute each epoch (else the natural order, every epoch).
      drop_remainder: drop the last ``N mod batch_size`` samples of each epoch (a different
        set each epoch when shuffling), so every batch has ``batch_size`` rows. If false the
        epoch ends with one smaller batch, which a jitted step compiles for once more.
      augment: optional ``augment(batch, rng) -> batch`` applied to each batch (training
        only); ``rng`` is a ``numpy.random.Generator`` seeded by ``(seed, epoch, position,
        shard_index)``, so a restored iterator repeats the same augmentations. It must keep
        every array's shape and dtype (checked).
      num_shards, shard_index: yield only rows ``[i·b, (i+1)·b)`` of each global batch, with
        ``b = batch_size / num_shards`` and ``i = shard_index`` (one shard per host; every
        host builds the same permutation from the same seed, so the shards are disjoint).

    Example:
      >>> it = BatchIterator({"x": np.arange(10)}, 4, seed=0)
      >>> it.steps_per_epoch, next(it)["x"].shape
      (2, (4,))
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = True,
        augment: Augment | None = None,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        self._arrays = _as_arrays(arrays)
        self._size = _num_samples(self._arrays)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if int(num_shards) < 1 or not 0 <= int(shard_index) < int(num_shards):
            raise ValueError(
                f"Need num_shards >= 1 and 0 <= shard_index < num_shards, got "
                f"num_shards={num_shards}, shard_index={shard_index}."
            )
        if int(batch_size) % int(num_shards) or (not drop_remainder and int(num_shards) > 1):
            raise ValueError(
                f"Sharding needs drop_remainder and a batch_size divisible by num_shards, got "
                f"batch_size={batch_size}, num_shards={num_shards}."
            )
        if drop_remainder and batch_size > self._size:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {self._size} samples: with "
                "drop_remainder every epoch would be empty."
            )
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.augment = augment
        self.num_shards = int(num_shards)
        self.shard_index = int(shard_index)
        self._epoch = 0
        self._position = 0
        self._order = self._epoch_order(0)

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch."""
        if self.drop_remainder:
            return self._size // self.batch_size
        return -(-self._size // self.batch_size)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self._size)
        return np.random.default_rng([self.seed, epoch]).permutation(self._size)

    def __next__(self) -> dict[str, np.ndarray]:
        if self._position >= self.steps_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
            self._order = self._epoch_order(self._epoch)
        start = self._position * self.batch_size
        index = self._order[start : start + self.batch_size]
        local = len(index) // self.num_shards
        index = index[self.shard_index * local : (self.shard_index + 1) * local]
        batch = jax.tree.map(lambda a: a[index], self._arrays)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self._epoch, self._position, self.shard_index])
            augmented = self.augment(batch, rng)
            _check_augmented(batch, augmented)
            batch = augmented
        self._position += 1
        return batch

    def state(self) -> dict[str, int]:
        """``{"epoch", "position", "seed"}``: the batches consumed so far (plain ints)."""
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed}

    def restore(self, state: Mapping[str, int]) -> None:
        """Resumes after the batches counted in ``state`` (from :meth:`state`)."""
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"The saved iterator used seed {int(state['seed'])}, this one seed {self.seed}."
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.steps_per_epoch:
            raise ValueError(f"Invalid iterator state {dict(state)}.")
        self._epoch, self._position = epoch, position
        self._order = self._epoch_order(epoch)


def eval_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Every sample once, in order, in batches of exactly ``batch_size`` rows (checked eagerly).

    The last batch is padded with zeros; each batch carries ``"mask"`` (bool ``[batch_size]``),
    false on padding rows, to pass to the masked objectives.

    Args:
      arrays: ``{name: [N, ...]}`` (possibly nested dicts), all with the same ``N``; no entry
        may be named ``"mask"``.
      batch_size: rows per batch.

    Returns:
      An iterator of ``{name: [batch_size, ...], "mask": [batch_size]}``.

    Example:
      >>> [int(b["mask"].sum()) for b in eval_batches({"x": np.arange(5)}, 2)]
      [2, 2, 1]
    """
    size = _num_samples(arrays)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if MASK in arrays:
        raise ValueError(f'eval_batches adds its own "{MASK}" entry; rename the input array.')
    return _padded_batches(_as_arrays(arrays), size, batch_size)


def _pad_rows(rows, pad):
    return np.concatenate([rows, np.zeros((pad, *rows.shape[1:]), rows.dtype)])


def _padded_batches(arrays, size, batch_size):
    for start in range(0, size, batch_size):
        stop = min(start + batch_size, size)
        pad = batch_size - (stop - start)
        batch = jax.tree.map(lambda a, s=start, e=stop, p=pad: _pad_rows(a[s:e], p), arrays)
        batch[MASK] = np.arange(batch_size) < stop - start
        yield batch
