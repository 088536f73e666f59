"""Multi-input tasks: every task has its own dataset (Office-31, Office-Home, ...).

In the multi-input setting (LibMTL's ``multi_input=True``) task ``t`` has its own inputs and
labels ``{"x": [N_t, ...], "y": [N_t]}``. A joint step sees one batch of every task, a pytree
``{task: {"x": [b_t, ...], "y": [b_t]}}`` whose shapes never change (each task's epoch remainder
is dropped), so a jitted step compiles once. The model encodes each task's inputs with the
shared trunk and scores them with that task's head only.

For alternating training (one task per step) :class:`AlternatingIterator` draws the task with a
:class:`~mtljax.data.sampling.TaskSampler` and advances that task's stream only; a jitted step
then compiles at most once per task (one shape per task).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np

from mtljax.data.loader import Augment, BatchIterator
from mtljax.data.sampling import TaskSampler
from mtljax.tasks import Tasks


@dataclasses.dataclass(frozen=True)
class MultiInputDataset:
    """A multi-input dataset: ``splits[split][task] = {"x": [N_t, ...], "y": [N_t]}``.

    Attributes:
      tasks: the tasks (one per domain for the Office datasets).
      splits: ``{split: {task: {"x": inputs, "y": labels}}}`` for ``"train"``, ``"val"`` and
        ``"test"``.
      num_classes: the number of classes of each task.
      input_shape: the shape of one input, without the batch axis (shared by all tasks).
      source_ids: per split and task, provenance arrays (e.g. image paths) kept away from the
        model.
    """

    tasks: Tasks
    splits: dict[str, dict[str, dict[str, np.ndarray]]]
    num_classes: dict[str, int]
    input_shape: tuple[int, ...]
    source_ids: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    def sizes(self, split: str = "train") -> dict[str, int]:
        """``{task: number of samples}`` of ``split`` (the ``n_t`` of task sampling)."""
        return {t: len(next(iter(a.values()))) for t, a in self.splits[split].items()}

    def task_arrays(self, split: str, task: str) -> dict[str, np.ndarray]:
        """Task ``task``'s part of ``split`` in the single-input layout ``{"x": [N_t, ...],
        task: [N_t]}``, so it is evaluated as a one-task dataset (its own inputs only)."""
        if task not in self.splits[split]:
            raise KeyError(f"Unknown task {task!r}; tasks are {list(self.tasks.names)}.")
        arrays = self.splits[split][task]
        return {"x": arrays["x"], task: arrays["y"]}


def _task_seed(seed: int, index: int) -> int:
    # An independent stream per task: BatchIterator wants one int seed.
    return int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0])


class MultiInputIterator(Iterator[dict[str, dict[str, np.ndarray]]]):
    """One fixed-shape training batch of every task per step, resumable.

    Each task has its own :class:`~mtljax.data.loader.BatchIterator` (own epochs, own seed
    derived from ``(seed, task index)``), so small datasets cycle more often than large ones.

    Args:
      per_task_arrays: ``{task: {name: [N_t, ...]}}`` (a ``MultiInputDataset`` split).
      batch_size: an int for every task, or ``{task: b_t}``.
      seed: seeds every task's stream.
      shuffle, augment, num_shards, shard_index: as for
        :class:`~mtljax.data.loader.BatchIterator`, applied to every task.

    Example:
      >>> it = MultiInputIterator({"a": {"x": np.zeros((5, 2))}, "b": {"x": np.ones((9, 2))}},
      ...                         {"a": 2, "b": 3}, seed=0)
      >>> {t: b["x"].shape for t, b in next(it).items()}
      {'a': (2, 2), 'b': (3, 2)}
    """

    def __init__(
        self,
        per_task_arrays: Mapping[str, Mapping[str, np.ndarray]],
        batch_size: int | Mapping[str, int],
        *,
        seed: int,
        shuffle: bool = True,
        augment: Augment | None = None,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        if not per_task_arrays:
            raise ValueError("MultiInputIterator needs at least one task.")
        names = tuple(per_task_arrays)
        if isinstance(batch_size, Mapping):
            if set(batch_size) != set(names):
                raise ValueError(
                    f"batch_size must name every task {list(names)}, got {sorted(batch_size)}."
                )
            sizes = {t: int(batch_size[t]) for t in names}
        else:
            sizes = dict.fromkeys(names, int(batch_size))
        self.seed = int(seed)
        self.iterators = {
            t: BatchIterator(
                per_task_arrays[t],
                sizes[t],
                seed=_task_seed(seed, i),
                shuffle=shuffle,
                augment=augment,
                num_shards=num_shards,
                shard_index=shard_index,
            )
            for i, t in enumerate(names)
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.iterators)

    def __next__(self) -> dict[str, dict[str, np.ndarray]]:
        return {t: next(it) for t, it in self.iterators.items()}

    def next_task(self, task: str) -> dict[str, np.ndarray]:
        """The next batch of ``task`` alone (the other tasks' streams do not move)."""
        if task not in self.iterators:
            raise KeyError(f"Unknown task {task!r}; tasks are {list(self.names)}.")
        return next(self.iterators[task])

    def state(self) -> dict[str, dict[str, int]]:
        """``{task: BatchIterator state}``."""
        return {t: it.state() for t, it in self.iterators.items()}

    def restore(self, state: Mapping[str, Mapping[str, int]]) -> None:
        """Resumes every task's stream from :meth:`state`."""
        if set(state) != set(self.iterators):
            raise ValueError(
                f"The saved state has tasks {sorted(state)}, this iterator {sorted(self.names)}."
            )
        for t, it in self.iterators.items():
            it.restore(state[t])


class AlternatingIterator(Iterator[tuple[str, dict[str, np.ndarray]]]):
    """Yields ``(task, batch of that task)`` with the task drawn by a :class:`TaskSampler`.

    Args:
      batches: the per-task streams.
      sampler: draws the task of each step; its tasks must be those of ``batches``.
    """

    def __init__(self, batches: MultiInputIterator, sampler: TaskSampler):
        if set(sampler.names) != set(batches.names):
            raise ValueError(
                f"The sampler's tasks {list(sampler.names)} differ from the iterator's "
                f"{list(batches.names)}."
            )
        self.batches, self.sampler = batches, sampler

    def __next__(self) -> tuple[str, dict[str, np.ndarray]]:
        task = next(self.sampler)
        return task, self.batches.next_task(task)

    def state(self) -> dict:
        """``{"sampler": ..., "batches": ...}``."""
        return {"sampler": self.sampler.state(), "batches": self.batches.state()}

    def restore(self, state: Mapping) -> None:
        self.sampler.restore(state["sampler"])
        self.batches.restore(state["batches"])
