"""Host-side batching with fixed batch shapes and a resumable position.

A jitted train step compiles once per input shape, so every training batch has the same shape
(:class:`BatchIterator` drops each epoch's remainder by default) and evaluation pads its last
batch and marks the padding in a ``"mask"`` entry (:func:`eval_batches`) for the masked
objectives of :mod:`mtljax.objectives`.

The order of epoch ``e`` is a permutation drawn from ``numpy.random.default_rng([seed, e])``,
so the stream of batches is a pure function of ``(seed, epoch, position)``: a checkpoint stores
:meth:`BatchIterator.state` and :meth:`BatchIterator.restore` resumes at the same batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

MASK = "mask"


def _num_samples(arrays: Mapping[str, np.ndarray]) -> int:
    if not arrays:
        raise ValueError("Batching needs at least one array.")
    sizes = {name: len(a) for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"Every array needs the same number of samples, got {sizes}.")
    return next(iter(sizes.values()))


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """An endless iterator over epochs of shuffled mini-batches of numpy arrays.

    Args:
      arrays: ``{name: [N, ...]}``, all with the same ``N``.
      batch_size: samples per batch.
      seed: seeds the per-epoch permutations.
      shuffle: permute each epoch (else the natural order, every epoch).
      drop_remainder: drop the last ``N mod batch_size`` samples of each epoch (a different
        set each epoch when shuffling), so every batch has ``batch_size`` rows. If false the
        epoch ends with one smaller batch, which a jitted step compiles for once more.

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
    ):
        self._arrays = {name: np.asarray(a) for name, a in arrays.items()}
        self._size = _num_samples(self._arrays)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if drop_remainder and batch_size > self._size:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {self._size} samples: with "
                "drop_remainder every epoch would be empty."
            )
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
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
        self._position += 1
        return {name: a[index] for name, a in self._arrays.items()}

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
      arrays: ``{name: [N, ...]}``, all with the same ``N``; no entry may be named ``"mask"``.
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
    return _padded_batches({name: np.asarray(a) for name, a in arrays.items()}, size, batch_size)


def _padded_batches(arrays, size, batch_size):
    for start in range(0, size, batch_size):
        stop = min(start + batch_size, size)
        pad = batch_size - (stop - start)
        batch = {
            name: np.concatenate([a[start:stop], np.zeros((pad, *a.shape[1:]), a.dtype)])
            for name, a in arrays.items()
        }
        batch[MASK] = np.arange(batch_size) < stop - start
        yield batch
