"""Multi-task summary scores: Δm% (Nash-MTL, FAMO) and Δp (LibMTL).

Both compare a multi-task model ``m`` with a baseline ``b`` (usually one single-task model per
task) through the relative change of every metric, signed so that the metric's direction
counts. They differ in sign convention and in how metrics are averaged:

* ``Δm% = (100 / K) Σ_k (−1)^{δ_k} (M_m,k − M_b,k) / M_b,k`` with ``δ_k = 1`` when higher is
  better, a flat mean over all ``K`` metrics of all tasks. **Lower is better**; a model that
  matches the baseline scores 0.
* ``Δp = (100 / T) Σ_t (1 / N_t) Σ_i (−1)^{s_t,i} (M_m,t,i − M_b,t,i) / M_b,t,i`` with
  ``s_t,i = 0`` when higher is better and ``1`` otherwise: a mean within each task first, then
  over the ``T`` tasks. **Higher is better** (LibMTL's "Δp↑").

Metrics are given as nested ``{task: {metric: value}}`` mappings. Which metrics count and their
directions come from the task metadata: a :class:`~mtljax.Tasks` (or iterable of
:class:`~mtljax.Task`) with :class:`~mtljax.Metric` entries, or a nested
``{task: {metric: higher_is_better}}`` mapping.

References:
  Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, arXiv:2202.01017 (Δm%).
  Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023, arXiv:2306.03792.
  Lin & Zhang, "LibMTL: A Python Library for Multi-Task Learning", JMLR 2023,
  arXiv:2203.14338 (Δp).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from mtljax.tasks import Task

Nested = Mapping[str, Mapping[str, float]]
Directions = Iterable[Task] | Mapping[str, Mapping[str, bool]]


def _directions(higher_is_better: Directions) -> dict[str, dict[str, bool]]:
    """``{task: {metric: higher_is_better}}`` from task metadata or a nested mapping."""
    if isinstance(higher_is_better, Mapping):
        out = {t: {m: bool(h) for m, h in ms.items()} for t, ms in higher_is_better.items()}
    else:
        out = {t.name: {m.name: m.higher_is_better for m in t.metrics} for t in higher_is_better}
    empty = sorted(t for t, ms in out.items() if not ms)
    if not out or empty:
        raise ValueError(f"Every task needs at least one metric; none declared for {empty}.")
    return out


def _relative_changes(method: Nested, baseline: Nested, directions) -> dict[str, list[float]]:
    """Per task, ``(M_m − M_b) / M_b`` signed so that positive means *better*."""
    changes = {}
    for task, metrics in directions.items():
        changes[task] = []
        for metric, higher in metrics.items():
            values = []
            for label, source in (("method", method), ("baseline", baseline)):
                try:
                    values.append(float(source[task][metric]))
                except KeyError:
                    raise KeyError(
                        f"The {label} metrics lack {task}/{metric}; "
                        f"they have {_flat_names(source)}."
                    ) from None
            m, b = values
            if b == 0 or not math.isfinite(b):
                raise ValueError(f"Baseline {task}/{metric} = {b}: relative change undefined.")
            change = (m - b) / b
            changes[task].append(change if higher else -change)
    return changes


def _flat_names(nested: Nested) -> list[str]:
    return [f"{t}/{m}" for t, ms in nested.items() for m in ms]


def delta_m(
    method_metrics: Nested, baseline_metrics: Nested, higher_is_better: Directions
) -> float:
    """Δm%: the mean relative *degradation* over all metrics, in percent (lower is better).

    ``Δm% = (100 / K) Σ_k (−1)^{δ_k} (M_m,k − M_b,k) / M_b,k`` with ``δ_k = 1`` if a higher
    value of metric ``k`` is better and ``0`` otherwise; ``K`` counts every metric of every
    task (a task with more metrics weighs more).

    Args:
      method_metrics: ``{task: {metric: value}}`` of the multi-task model.
      baseline_metrics: the same for the baseline (single-task models).
      higher_is_better: the tasks with their metrics (:class:`~mtljax.Tasks`) or a nested
        ``{task: {metric: bool}}``; only these metrics count.

    Returns:
      Δm% as a float; negative means better than the baseline on average.

    Example:
      >>> delta_m({"a": {"acc": 0.75}}, {"a": {"acc": 0.5}}, {"a": {"acc": True}})
      -50.0

    References:
      Navon et al., ICML 2022, arXiv:2202.01017; Liu et al., NeurIPS 2023, arXiv:2306.03792.
    """
    changes = _relative_changes(method_metrics, baseline_metrics, _directions(higher_is_better))
    flat = [c for values in changes.values() for c in values]
    return -100.0 * sum(flat) / len(flat)


def delta_p(
    method_metrics: Nested, baseline_metrics: Nested, higher_is_better: Directions
) -> float:
    """Δp: LibMTL's mean relative *improvement*, averaged per task first (higher is better).

    ``Δp = (100 / T) Σ_t (1 / N_t) Σ_i (−1)^{s_t,i} (M_m,t,i − M_b,t,i) / M_b,t,i`` with
    ``s_t,i = 0`` if a higher value of metric ``i`` of task ``t`` is better and ``1``
    otherwise; ``N_t`` is the number of metrics of task ``t``, so every task weighs the same.
    With one metric per task, ``Δp = −Δm%``.

    Args:
      method_metrics: ``{task: {metric: value}}`` of the multi-task model.
      baseline_metrics: the same for the baseline (single-task models).
      higher_is_better: the tasks with their metrics (:class:`~mtljax.Tasks`) or a nested
        ``{task: {metric: bool}}``; only these metrics count.

    Returns:
      Δp in percent; positive means better than the baseline on average.

    Example:
      >>> delta_p({"a": {"acc": 0.75}}, {"a": {"acc": 0.5}}, {"a": {"acc": True}})
      50.0

    References:
      Lin & Zhang, "LibMTL: A Python Library for Multi-Task Learning", JMLR 2023,
      arXiv:2203.14338.
    """
    changes = _relative_changes(method_metrics, baseline_metrics, _directions(higher_is_better))
    per_task = [sum(values) / len(values) for values in changes.values()]
    return 100.0 * sum(per_task) / len(per_task)
