"""Evaluation over a split, and the per-task training losses of tasks that carry their loss.

:func:`evaluate` runs a model over a split in fixed-size batches (the last one padded and
masked, :func:`mtljax.data.loader.eval_batches`), adds each batch to every metric's statistics
in one jitted function compiled once, and reduces the statistics to ``{task: {metric: float}}``
on the host. :func:`task_losses` turns the tasks' own losses into the ``fn(outputs, batch) ->
(losses, aux)`` a train step needs, with the per-task presence flags of the step's task mask.

Sample masks: a batch's ``"mask" [B]`` (padding) and, for task ``t``, ``"label_mask"[t] [B]``
(:mod:`mtljax.data.missing`) remove whole samples, on top of each task's own rule for missing
labels (``-1``, ``NaN``, zero pixels; see :mod:`mtljax.tasks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mtljax.accumulators import Statistic
from mtljax.data.loader import MASK, eval_batches
from mtljax.data.missing import LABEL_MASK
from mtljax.tasks import Task, Tasks, as_tasks

Results = dict[str, dict[str, float]]
Predict = Callable[[Any, Any], Mapping[str, jax.Array]]


def _statistics(task: Task) -> tuple[Statistic, ...]:
    """The distinct statistics of a task's metrics, in order (equal ones are kept once)."""
    missing = [m.name for m in task.metrics if not m.accumulates]
    if missing or not task.metrics:
        raise ValueError(
            f"Task {task.name!r} has metrics {missing or 'none'} that cannot be computed; build "
            "it with a task type of mtljax.tasks (classification, segmentation, ...) or give "
            "each Metric a statistic and a reduce function."
        )
    return tuple(dict.fromkeys(m.statistic for m in task.metrics))


def _sample_mask(batch: Mapping[str, Any], name: str) -> jax.Array | None:
    """``mask [B]`` and-ed with ``label_mask[name] [B]``, whichever the batch carries."""
    masks = [batch[MASK]] if MASK in batch else []
    if name in batch.get(LABEL_MASK, {}):
        masks.append(batch[LABEL_MASK][name])
    if not masks:
        return None
    return jnp.logical_and.reduce(jnp.stack([jnp.asarray(m, bool) for m in masks]))


def _task_arrays(tasks: Tasks, arrays: Mapping[str, Any]) -> dict[str, Any]:
    """``{"x", task..., "label_mask"?}`` of a split, checked to hold every task."""
    missing = [n for n in ("x", *tasks.names) if n not in arrays]
    if missing:
        raise KeyError(f"The split lacks arrays {missing}; it has {sorted(arrays)}.")
    split = {n: arrays[n] for n in ("x", *tasks.names)}
    label_masks = {n: m for n, m in arrays.get(LABEL_MASK, {}).items() if n in tasks.names}
    if label_masks:
        split[LABEL_MASK] = label_masks
    return split


def _outputs(outputs: Mapping[str, jax.Array], tasks: Tasks) -> Mapping[str, jax.Array]:
    missing = [n for n in tasks.names if n not in outputs]
    if missing:
        raise KeyError(f"The model gave no output for tasks {missing}; it gave {sorted(outputs)}.")
    return outputs


def make_evaluator(
    tasks: Tasks | Iterable[Task], predict: Predict, batch_size: int
) -> Callable[[Any, Mapping[str, Any]], Results]:
    """``evaluate(params, arrays) -> {task: {metric: float}}``, compiled once for all splits.

    Every metric of every task must carry a statistic (the built-in task types do). The
    per-batch accumulation is one ``jax.jit`` function, compiled on the first call and reused
    for every later split of the same array shapes.

    Args:
      tasks: the tasks to evaluate.
      predict: ``predict(params, x) -> {task: prediction}`` on one batch (jittable).
      batch_size: rows per evaluation batch. The depth metrics of the published protocol
        average per batch, so their value depends (slightly) on it.

    Returns:
      ``evaluate(params, arrays)`` where ``arrays`` is a split ``{"x": [N, ...], task:
      [N, ...]}`` (other entries ignored, except ``"label_mask"``).

    Example:
      >>> tasks = [classification("c", 2)]
      >>> evaluate = make_evaluator(tasks, lambda p, x: {"c": x * p}, batch_size=2)
      >>> arrays = {"x": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), "c": np.array([0, 1, 1])}
      >>> evaluate(1.0, arrays)["c"]["accuracy"]
      0.6666666666666666
    """
    tasks = as_tasks(tasks)
    statistics = {t.name: _statistics(t) for t in tasks}

    @jax.jit
    def accumulate(stats, params, batch):
        outputs = _outputs(predict(params, batch["x"]), tasks)
        return {
            name: tuple(
                s.update(st, outputs[name], batch[name], _sample_mask(batch, name))
                for s, st in zip(group, stats[name], strict=True)
            )
            for name, group in statistics.items()
        }

    def evaluate(params, arrays: Mapping[str, Any]) -> Results:
        stats = {name: tuple(s.init() for s in group) for name, group in statistics.items()}
        for batch in eval_batches(_task_arrays(tasks, arrays), batch_size):
            stats = accumulate(stats, params, batch)
        stats = jax.device_get(stats)
        return {
            t.name: {
                m.name: m.result(stats[t.name][statistics[t.name].index(m.statistic)])
                for m in t.metrics
            }
            for t in tasks
        }

    return evaluate


def evaluate(
    tasks: Tasks | Iterable[Task],
    predict: Predict,
    params: Any,
    arrays: Mapping[str, Any],
    batch_size: int,
) -> Results:
    """Every metric of every task over one split: ``{task: {metric: float}}``.

    One-shot form of :func:`make_evaluator` (which a training loop should use instead, so the
    accumulation compiles once for all its evaluations).

    Args:
      tasks: the tasks to evaluate; each metric must carry a statistic.
      predict: ``predict(params, x) -> {task: prediction}`` on one batch (jittable).
      params: passed to ``predict``.
      arrays: the split, ``{"x": [N, ...], task: [N, ...]}``.
      batch_size: rows per batch; the last batch is padded and its padding masked.

    Returns:
      ``{task: {metric: value}}``; a value with no labelled element in the split is NaN.
    """
    return make_evaluator(tasks, predict, batch_size)(params, arrays)


def batch_metrics(
    tasks: Tasks | Iterable[Task], outputs: Mapping[str, jax.Array], batch: Mapping[str, Any]
) -> dict[str, dict[str, jax.Array]]:
    """Every computable metric of every task on one batch (jittable; for training logs)."""
    values = {}
    for task in as_tasks(tasks):
        pred = jax.lax.stop_gradient(outputs[task.name])
        mask = _sample_mask(batch, task.name)
        stats = {}
        values[task.name] = {}
        for metric in task.metrics:
            if not metric.accumulates:
                continue
            if metric.statistic not in stats:
                stats[metric.statistic] = metric.update(metric.init(), pred, batch[task.name], mask)
            values[task.name][metric.name] = metric.compute(stats[metric.statistic])
    return values


def task_losses(
    tasks: Tasks | Iterable[Task], *, with_metrics: bool = True
) -> Callable[[Mapping[str, jax.Array], Mapping[str, Any]], tuple[dict, dict]]:
    """The train step's ``fn(outputs, batch) -> (losses, aux)`` from the tasks' own losses.

    For each task ``t``: ``losses[t] = t.loss(outputs[t], batch[t])`` (a mean over the
    labelled elements, 0 when there is none); with a sample mask in the batch (``"mask"``,
    ``"label_mask"[t]``) the loss is called as ``t.loss(pred, target, mask)``. The aux dict
    holds ``"present"``, a ``[T]`` bool array in task order, true where the task has at least
    one labelled element (``t.valid_count > 0``), which the step turns into its task mask;
    ``"count"``, ``{task: int32}`` labelled elements; and, with ``with_metrics``,
    ``"metrics"``, :func:`batch_metrics` of the batch (for the training log).

    Args:
      tasks: tasks that carry ``loss`` and ``valid_count`` (the built-in task types do).
      with_metrics: also compute every metric on each training batch.

    Returns:
      ``fn(outputs, batch) -> ({task: scalar}, aux)``.

    Example:
      >>> fn = task_losses([classification("a", 2), regression("b")], with_metrics=False)
      >>> losses, aux = fn({"a": jnp.zeros((2, 2)), "b": jnp.zeros((2, 1))},
      ...                  {"a": jnp.array([0, -1]), "b": jnp.array([jnp.nan, jnp.nan])})
      >>> round(float(losses["a"]), 4), float(losses["b"]), aux["present"].tolist()
      (0.6931, 0.0, [True, False])
    """
    tasks = as_tasks(tasks)
    lacking = [t.name for t in tasks if t.loss is None or t.valid_count is None]
    if lacking:
        raise ValueError(
            f"Tasks {lacking} carry no loss/valid_count; build them with a task type of "
            "mtljax.tasks (classification, segmentation, ...) or write the loss function."
        )

    def fn(outputs, batch):
        outputs = _outputs(outputs, tasks)
        losses, counts = {}, {}
        for task in tasks:
            pred, target = outputs[task.name], batch[task.name]
            mask = _sample_mask(batch, task.name)
            masked = () if mask is None else (mask,)
            losses[task.name] = task.loss(pred, target, *masked)
            counts[task.name] = task.valid_count(target, *masked)
        aux = {"present": jnp.stack([counts[n] > 0 for n in tasks.names]), "count": counts}
        if with_metrics:
            aux["metrics"] = batch_metrics(tasks, outputs, batch)
        return losses, aux

    return fn
