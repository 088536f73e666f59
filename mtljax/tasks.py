"""Tasks: names, metrics, losses, and validation of per-task losses.

A multi-task problem is a tuple of named tasks. A user's loss function returns the per-task
losses either as a dict keyed by task name or as a ``[T]`` array in the order of the tasks;
``Tasks.stack_losses`` turns either into a ``[T]`` array and raises a clear error naming the
task at fault when names or shapes do not match.

The built-in task types (:func:`classification`, :func:`multilabel`, :func:`regression`,
:func:`segmentation`, :func:`depth`, :func:`normals`) also carry their loss (a mean over the
labelled elements of a batch), a count of labelled elements (a task with none is absent from
the batch), the size of the head they need, and metrics that accumulate over a split
(:mod:`mtljax.accumulators`, evaluated by :func:`mtljax.metrics.evaluate`). The dense metrics
follow the published NYUv2/Cityscapes protocol of MTAN, CAGrad, Nash-MTL and LibMTL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.accumulators import (
    WITHIN,
    AngleErrors,
    BinaryCounts,
    ConfusionMatrix,
    DepthErrors,
    ErrorSums,
    Hits,
    Ratio,
    Reduction,
    Statistic,
    label_accuracy,
    macro_f1,
    mean_iou,
    median_angle,
    pixel_accuracy,
    root_mean_squared,
    within_key,
)
from mtljax.objectives import (
    BinaryLabels,
    ClassLabels,
    FiniteTargets,
    MaskedLoss,
    NonzeroPixels,
    ValidCount,
    absolute_error_elements,
    binary_cross_entropy_elements,
    cosine_distance,
    cross_entropy_elements,
    pixel_absolute_error,
    squared_error_elements,
)


@dataclasses.dataclass(frozen=True)
class Metric:
    """An evaluation metric of one task, and how to accumulate it over a split.

    ``Metric(name, higher_is_better)`` only names a metric and its direction (what Δm% needs).
    A metric that can be *computed* also carries a ``statistic`` (jittable sums over batches,
    see :mod:`mtljax.accumulators`) and a ``reduce`` function from the accumulated statistics
    to its value. Metrics of one task with equal statistics share one accumulation.

    Attributes:
      name: metric name, e.g. ``"accuracy"``.
      higher_is_better: the sign convention used by Δm%.
      statistic: ``init() -> stats`` and ``update(stats, pred, target, mask) -> stats``, or
        None for a metric computed elsewhere.
      reduce: ``stats -> scalar`` (jittable), or None; given together with ``statistic``.

    Example:
      >>> accuracy = classification("digit", 10).metrics[0]
      >>> stats = accuracy.update(accuracy.init(), jnp.eye(3, 10), jnp.array([0, 1, 5]))
      >>> accuracy.result(stats)
      0.6666666666666666
    """

    name: str
    higher_is_better: bool
    statistic: Statistic | None = None
    reduce: Reduction | None = None

    def __post_init__(self):
        if (self.statistic is None) != (self.reduce is None):
            raise ValueError(
                f"Metric {self.name!r}: give both a statistic and a reduce function, or neither."
            )

    @property
    def accumulates(self) -> bool:
        """Whether this metric can be computed (it carries a statistic)."""
        return self.statistic is not None

    def _require(self) -> Statistic:
        if self.statistic is None:
            raise ValueError(
                f"Metric {self.name!r} declares no statistic: it can only be named (for Δm%), "
                "not computed. Use a built-in task type of mtljax.tasks or pass statistic= "
                "and reduce=."
            )
        return self.statistic

    def init(self):
        """Zero statistics (a pytree of arrays)."""
        return self._require().init()

    def update(self, stats, pred: jax.Array, target: jax.Array, mask: jax.Array | None = None):
        """``stats`` plus one batch; ``mask [B]`` marks the real samples (jittable)."""
        return self._require().update(stats, pred, target, mask)

    def compute(self, stats) -> jax.Array:
        """The metric's value from accumulated statistics (jittable)."""
        self._require()
        return self.reduce(stats)

    def result(self, stats) -> float:
        """The metric's value as a Python float, computed on the host in float64."""
        self._require()
        return float(self.reduce(jax.device_get(stats)))


@dataclasses.dataclass(frozen=True)
class Task:
    """A named task: its metrics and, for the built-in task types, its loss and head size.

    ``Task(name, metrics)`` describes a task whose loss the user writes. The constructors
    :func:`classification`, :func:`multilabel`, :func:`regression`, :func:`segmentation`,
    :func:`depth` and :func:`normals` return tasks that also carry their loss, their label
    count and the size of the head a model needs.

    Attributes:
      name: unique task name.
      metrics: metrics evaluated for this task (the first is the headline metric).
      loss: ``loss(pred, target, mask=None) -> scalar``, the mean over the valid (labelled)
        elements, 0 (not NaN) when there is none; ``mask [B]`` drops whole samples.
      valid_count: ``valid_count(target, mask=None) -> int32 scalar``, the number of labelled
        elements; the task is present in a batch when it is > 0.
      output_dim: channels the model's head produces per sample (or per pixel when ``dense``).
      dense: whether predictions and targets are per-pixel maps ``[B, H, W, ...]``.
      level: the task's priority level, 0 the highest. A task at level 0 is *primary* (the
        model exists for it); any other is *auxiliary* (trained only to help the primary
        tasks). Role-aware methods (``pcd``, ``gradsim``, ``lexicographic``) and the report's
        Δm% read it; every other method ignores it.
    """

    name: str
    metrics: tuple[Metric, ...] = ()
    loss: Callable[..., jax.Array] | None = None
    valid_count: Callable[..., jax.Array] | None = None
    output_dim: int | None = None
    dense: bool = False
    level: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A task name must be a non-empty string, got {self.name!r}.")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"Task {self.name!r} declares a metric twice: {names}.")
        if self.output_dim is not None and (
            not isinstance(self.output_dim, int) or self.output_dim < 1
        ):
            raise ValueError(
                f"Task {self.name!r}: output_dim must be a positive int, got {self.output_dim!r}."
            )
        object.__setattr__(self, "level", _check_size(f"Task {self.name!r}: level", self.level, 0))

    @property
    def role(self) -> str:
        """``"primary"`` (level 0) or ``"auxiliary"`` (any other level)."""
        return "primary" if self.level == 0 else "auxiliary"


class Tasks(Sequence[Task]):
    """An ordered, immutable collection of uniquely named tasks, at least one of them primary.

    Each task has a priority level (:attr:`Task.level`, 0 the highest); the tasks at level 0
    are the primary ones, the others auxiliary. Every task is primary unless
    :meth:`with_primary` or :meth:`with_levels` says otherwise. Two collections are equal when
    their tasks, in order, and their levels are.

    Example:
      >>> tasks = Tasks(["left", "right"])
      >>> tasks.names
      ('left', 'right')
      >>> tasks.stack_losses({"right": 2.0, "left": 1.0}).tolist()
      [1.0, 2.0]
      >>> tasks.with_primary(["right"]).levels
      (1, 0)
    """

    def __init__(self, tasks: Iterable[Task | str]):
        items = tuple(t if isinstance(t, Task) else Task(t) for t in tasks)
        if not items:
            raise ValueError("A multi-task problem needs at least one task.")
        names = [t.name for t in items]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"Task names must be unique; repeated: {duplicated}.")
        if all(t.level > 0 for t in items):
            levels = {t.name: t.level for t in items}
            raise ValueError(
                f"At least one task must be primary (level 0); the levels are {levels}."
            )
        self._tasks = items

    def __getitem__(self, index):
        return self._tasks[index]

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        if all(t.level == 0 for t in self._tasks):
            return f"Tasks({list(self.names)})"
        return f"Tasks({list(self.names)}, levels={list(self.levels)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Tasks) and self._tasks == other._tasks

    def __hash__(self) -> int:
        return hash(self._tasks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._tasks)

    @property
    def levels(self) -> tuple[int, ...]:
        """Each task's priority level, in task order (0 = primary)."""
        return tuple(t.level for t in self._tasks)

    @property
    def primary(self) -> tuple[int, ...]:
        """The indices of the primary (level-0) tasks, in task order."""
        return tuple(i for i, t in enumerate(self._tasks) if t.level == 0)

    def with_levels(self, levels: Mapping[str, int]) -> Tasks:
        """A copy where each task named in ``levels`` gets that priority level.

        Args:
          levels: ``{task name: level}``, levels non-negative ints; unnamed tasks keep theirs.

        Raises:
          ValueError: an unknown task name (listing the tasks), a level that is not an int
            >= 0, or no task left at level 0.
        """
        unknown = sorted(set(levels) - set(self.names))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; the tasks are {list(self.names)}.")
        return Tasks(
            dataclasses.replace(t, level=levels[t.name]) if t.name in levels else t
            for t in self._tasks
        )

    def with_primary(self, names: Iterable[str] | str) -> Tasks:
        """A copy where the tasks ``names`` are primary (level 0) and every other task is
        auxiliary (level 1). A single string names one task.

        Raises:
          ValueError: no name, or a name that is not a task (listing the tasks).
        """
        chosen = {names} if isinstance(names, str) else set(names)
        if not chosen:
            raise ValueError(f"Name at least one primary task of {list(self.names)}.")
        unknown = sorted(chosen - set(self.names))
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; the tasks are {list(self.names)}.")
        return self.with_levels({n: 0 if n in chosen else 1 for n in self.names})

    def with_roles(
        self, primary: Iterable[str] | None = None, levels: Mapping[str, int] | None = None
    ) -> Tasks:
        """The roles of a config: ``primary`` (:meth:`with_primary`, skipped when ``None``),
        then ``levels`` (:meth:`with_levels`, which wins where both name a task).

        Raises:
          ValueError: see :meth:`with_primary` and :meth:`with_levels`.
        """
        tasks = self if primary is None else self.with_primary(primary)
        return tasks.with_levels(levels or {})

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

    def stack_instance_losses(self, losses) -> jnp.ndarray:
        """Per-sample losses ``{task: [B]}`` (or a ``[T, B]`` array) as a ``[T, B]`` array.

        Raises:
          ValueError: names do not match the tasks, or a task's losses are not ``[B]`` with
            the same B for every task.
        """
        if not isinstance(losses, Mapping):
            array = jnp.asarray(losses)
            if array.ndim != 2 or array.shape[0] != len(self):
                raise ValueError(f"Instance-wise losses must have shape ({len(self)}, B) for "
                                 f"tasks {list(self.names)}, got shape {array.shape}.")
            return array
        if set(losses) != set(self.names):
            self.stack_losses(losses)  # raises, naming the missing and unexpected tasks
        rows = [jnp.asarray(losses[name]) for name in self.names]
        for name, row in zip(self.names, rows, strict=True):
            if row.ndim != 1 or row.shape != rows[0].shape:
                want = rows[0].shape if rows[0].ndim == 1 else "(B,)"
                raise ValueError(
                    f"Instance-wise losses: task {name!r} has shape {row.shape}; every task "
                    f"needs one loss per sample, shape {want}."
                )
        return jnp.stack(rows)

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


# --- Built-in task types ------------------------------------------------------------------


def _check_size(what: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def classification(name: str, num_classes: int) -> Task:
    """Single-label classification: logits ``[B, K]``, integer labels ``[B]``.

    Loss: softmax cross-entropy, mean over the labelled samples; a label outside ``[0, K)``
    (e.g. -1) is missing. Metric: ``accuracy`` ↑, the fraction of the split's labelled samples
    whose ``argmax`` is the label.

    Example:
      >>> task = classification("digit", 10)
      >>> task.output_dim, [m.name for m in task.metrics]
      (10, ['accuracy'])
    """
    valid = ClassLabels(_check_size("num_classes", num_classes, 2))
    accuracy = Metric("accuracy", True, Hits(valid), Ratio("correct", "count"))
    return Task(
        name,
        (accuracy,),
        loss=MaskedLoss(cross_entropy_elements, valid),
        valid_count=ValidCount(valid),
        output_dim=valid.num_classes,
    )


def multilabel(name: str, num_labels: int) -> Task:
    """Multi-label binary classification: logits ``[B, L]``, labels ``[B, L]`` in ``{0, 1}``.

    A negative label is missing (so ``{-1, 1}`` attribute files must be mapped to ``{0, 1}``
    first). Loss: sigmoid binary cross-entropy, mean over the labelled entries. Metrics,
    predicting positive where the logit is > 0: ``accuracy`` ↑, per label then averaged over
    labels; ``f1`` ↑, macro F1 (per label ``2tp / (2tp + fp + fn)``, then averaged over labels;
    a label never positive nor predicted positive in the split is left out of the mean).

    Example:
      >>> [m.name for m in multilabel("attributes", 40).metrics]
      ['accuracy', 'f1']
    """
    counts = BinaryCounts(_check_size("num_labels", num_labels, 1))
    valid = BinaryLabels()
    return Task(
        name,
        (Metric("accuracy", True, counts, label_accuracy), Metric("f1", True, counts, macro_f1)),
        loss=MaskedLoss(binary_cross_entropy_elements, valid),
        valid_count=ValidCount(valid),
        output_dim=counts.num_labels,
    )


REGRESSION_LOSSES = {"mse": squared_error_elements, "l1": absolute_error_elements}


def regression(name: str, dim: int = 1, loss: str = "mse") -> Task:
    """Real-valued regression: predictions ``[B, dim]``, targets ``[B, dim]`` (or ``[B]``).

    A ``NaN`` (or infinite) target entry is missing. Loss: ``"mse"`` (squared error) or
    ``"l1"`` (absolute error), mean over the labelled entries. Metrics over every labelled
    entry of the split: ``mae`` ↓ and ``rmse`` ↓.

    Example:
      >>> regression("age", loss="l1").output_dim
      1
    """
    if loss not in REGRESSION_LOSSES:
        raise ValueError(f"Unknown regression loss {loss!r}; known: {sorted(REGRESSION_LOSSES)}.")
    errors = ErrorSums()
    valid = FiniteTargets()
    return Task(
        name,
        (
            Metric("mae", False, errors, Ratio("absolute", "count")),
            Metric("rmse", False, errors, root_mean_squared),
        ),
        loss=MaskedLoss(REGRESSION_LOSSES[loss], valid),
        valid_count=ValidCount(valid),
        output_dim=_check_size("dim", dim, 1),
    )


def segmentation(name: str, num_classes: int, ignore: int = -1) -> Task:
    """Semantic segmentation: logits ``[B, H, W, C]``, integer labels ``[B, H, W]``.

    A pixel counts when its label is in ``[0, C)`` and differs from ``ignore``. Loss: pixel
    cross-entropy, mean over the valid pixels of the batch. Metrics from one confusion matrix
    accumulated over every valid pixel of the split: ``miou`` ↑ (classes with
    ``TP + FP + FN = 0`` left out of the mean) and ``pixel_accuracy`` ↑, both in ``[0, 1]``.

    Example:
      >>> task = segmentation("segmentation", 13)
      >>> task.dense, task.output_dim, [m.name for m in task.metrics]
      (True, 13, ['miou', 'pixel_accuracy'])
    """
    valid = ClassLabels(_check_size("num_classes", num_classes, 2), int(ignore))
    confusion = ConfusionMatrix(valid)
    return Task(
        name,
        (
            Metric("miou", True, confusion, mean_iou),
            Metric("pixel_accuracy", True, confusion, pixel_accuracy),
        ),
        loss=MaskedLoss(cross_entropy_elements, valid),
        valid_count=ValidCount(valid),
        output_dim=valid.num_classes,
        dense=True,
    )


DEPTH_AVERAGES = {
    "batch": (Ratio("batch_abs", "samples"), Ratio("batch_rel", "samples")),
    "pixel": (Ratio("abs", "pixels"), Ratio("rel", "pixels")),
}


def depth(name: str = "depth", average: str = "batch") -> Task:
    """Depth estimation: predictions and targets ``[B, H, W, 1]``, 0 where depth is missing.

    Loss: L1 over the valid pixels, ``Σ_valid |p − t| / #valid``. Metrics ``abs_err`` ↓
    (``|p − t|``) and ``rel_err`` ↓ (``|p − t| / t``), averaged by ``average``:

    * ``"batch"`` (default), the published protocol (MTAN, CAGrad, Nash-MTL, LibMTL): the mean
      over the valid pixels of each evaluation batch, then the batch figures averaged with
      weights equal to the batch sizes (so the value depends slightly on the batch size);
    * ``"pixel"``: one mean over every valid pixel of the split.

    Example:
      >>> [(m.name, m.higher_is_better) for m in depth().metrics]
      [('abs_err', False), ('rel_err', False)]
    """
    if average not in DEPTH_AVERAGES:
        raise ValueError(f"Unknown depth average {average!r}; known: {sorted(DEPTH_AVERAGES)}.")
    errors = DepthErrors()
    abs_err, rel_err = DEPTH_AVERAGES[average]
    valid = NonzeroPixels()
    return Task(
        name,
        (Metric("abs_err", False, errors, abs_err), Metric("rel_err", False, errors, rel_err)),
        loss=MaskedLoss(pixel_absolute_error, valid),
        valid_count=ValidCount(valid),
        output_dim=1,
        dense=True,
    )


def normals(name: str = "normal", bins_per_degree: int = 100) -> Task:
    """Surface normals: predictions ``[B, H, W, 3]``, unit targets (0 where missing).

    The prediction is normalised to unit length per pixel. Loss: ``1 − Σ_valid ⟨p̂, t⟩ / #valid``
    (0 when no pixel is valid). Metrics over the angles ``degrees(arccos ⟨p̂, t⟩)`` of every
    valid pixel of the split: ``mean_angle`` ↓, ``median_angle`` ↓ (from a histogram with
    ``bins_per_degree`` bins per degree: within ``0.5 / bins_per_degree`` degrees, 0.005° by
    default), and the fractions ``within_11.25``, ``within_22.5``, ``within_30`` ↑ in ``[0, 1]``.

    Example:
      >>> [m.name for m in normals().metrics]
      ['mean_angle', 'median_angle', 'within_11.25', 'within_22.5', 'within_30']
    """
    angles = AngleErrors(_check_size("bins_per_degree", bins_per_degree, 1))
    valid = NonzeroPixels()
    within = tuple(
        Metric(within_key(x), True, angles, Ratio(within_key(x), "count")) for x in WITHIN
    )
    return Task(
        name,
        (
            Metric("mean_angle", False, angles, Ratio("sum", "count")),
            Metric("median_angle", False, angles, median_angle),
            *within,
        ),
        loss=MaskedLoss(cosine_distance, valid),
        valid_count=ValidCount(valid),
        output_dim=3,
        dense=True,
    )
