"""Tasks: names, metrics, and validation of per-task losses.

A multi-task problem is a tuple of named tasks. A user's loss function returns the per-task
losses either as a dict keyed by task name or as a ``[T]`` array in the order of the tasks;
``Tasks.stack_losses`` turns either into a ``[T]`` array and raises a clear error naming the
task at fault when names or shapes do not match.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Metric:
    """An evaluation metric of one task.

    Attributes:
      name: metric name, e.g. ``"accuracy"``.
      higher_is_better: the sign convention used by Δm%.
    """

    name: str
    higher_is_better: bool


@dataclasses.dataclass(frozen=True)
class Task:
    """A named task with the metrics reported for it.

    Attributes:
      name: unique task name.
      metrics: metrics evaluated for this task (the first is the headline metric).
    """

    name: str
    metrics: tuple[Metric, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A task name must be a non-empty string, got {self.name!r}.")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"Task {self.name!r} declares a metric twice: {names}.")


class Tasks(Sequence[Task]):
    """An ordered, immutable collection of uniquely named tasks.

    Example:
      >>> tasks = Tasks(["left", "right"])
      >>> tasks.names
      ('left', 'right')
      >>> tasks.stack_losses({"right": 2.0, "left": 1.0}).tolist()
      [1.0, 2.0]
    """

    def __init__(self, tasks: Iterable[Task | str]):
        items = tuple(t if isinstance(t, Task) else Task(t) for t in tasks)
        if not items:
            raise ValueError("A multi-task problem needs at least one task.")
        names = [t.name for t in items]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"Task names must be unique; repeated: {duplicated}.")
        self._tasks = items

    def __getitem__(self, index):
        return self._tasks[index]

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        return f"Tasks({list(self.names)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Tasks) and self._tasks == other._tasks

    def __hash__(self) -> int:
        return hash(self._tasks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._tasks)

    def index(self, name: str) -> int:  # type: ignore[override]
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"Unknown task {name!r}; tasks are {list(self.names)}.") from None

    def stack_losses(self, losses) -> jnp.ndarray:
        """Validates per-task losses and returns them as a ``[T]`` array in task order.

        Args:
          losses: a mapping ``{task name: scalar loss}`` or an array of shape ``[T]``.

        Returns:
          A ``[T]`` array.

        Raises:
          ValueError: names do not match the tasks, a loss is not a scalar, or an array
            does not have shape ``[T]``.
        """
        if isinstance(losses, Mapping):
            got, want = set(losses), set(self.names)
            if got != want:
                missing, extra = sorted(want - got), sorted(got - want)
                raise ValueError(
                    f"Loss names do not match the tasks {list(self.names)}: "
                    f"missing {missing}, unexpected {extra}."
                )
            values = []
            for name in self.names:
                value = jnp.asarray(losses[name])
                if value.shape != ():
                    raise ValueError(
                        f"The loss of task {name!r} must be a scalar, got shape {value.shape}; "
                        "reduce it over the batch (e.g. with .mean())."
                    )
                values.append(value)
            return jnp.stack(values)
        array = jnp.asarray(losses)
        if array.shape != (len(self),):
            raise ValueError(
                f"Per-task losses must have shape ({len(self)},) for tasks "
                f"{list(self.names)}, got shape {array.shape}."
            )
        return array

    def unstack(self, values) -> dict[str, object]:
        """Maps a ``[T, ...]`` array to ``{task name: values[t]}``."""
        values = np.asarray(values)
        if values.shape[:1] != (len(self),):
            raise ValueError(
                f"Expected a leading task axis of size {len(self)}, got shape {values.shape}."
            )
        return {name: values[i] for i, name in enumerate(self.names)}


def as_tasks(tasks: Tasks | Iterable[Task | str]) -> Tasks:
    """Returns ``tasks`` as a :class:`Tasks` collection."""
    return tasks if isinstance(tasks, Tasks) else Tasks(tasks)
