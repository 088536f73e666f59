"""Δm% and Δp: published values, sign conventions, and their averaging rules."""

import numpy as np
import pytest

from mtljax import Metric, Task, Tasks
from mtljax.evaluation import delta_m, delta_p
from mtljax.tasks import depth, normals, segmentation

# NYUv2 (SegNet/MTAN), as published by Navon et al. 2022 (Table 2): STL and LS rows.
NYU_TASKS = Tasks(
    [
        Task("segmentation", (Metric("miou", True), Metric("pix_acc", True))),
        Task("depth", (Metric("abs_err", False), Metric("rel_err", False))),
        Task(
            "normal",
            (
                Metric("mean", False),
                Metric("median", False),
                Metric("within_11.25", True),
                Metric("within_22.5", True),
                Metric("within_30", True),
            ),
        ),
    ]
)
STL = [38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15]
LS = [39.29, 65.33, 0.5493, 0.2263, 28.15, 23.96, 22.09, 47.50, 61.08]


def nested(values, tasks=NYU_TASKS):
    it = iter(values)
    return {t.name: {m.name: next(it) for m in t.metrics} for t in tasks}


def reference(method, baseline, higher, groups, per_task):
    """Independent NumPy reference: signed relative changes, flat or per-task means."""
    method, baseline, higher = map(np.asarray, (method, baseline, higher))
    better = np.where(higher, 1.0, -1.0) * (method - baseline) / baseline
    if not per_task:
        return -100.0 * better.mean()
    bounds = np.cumsum([0, *groups])
    return 100.0 * np.mean(
        [better[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    )


def test_delta_m_ls_nyuv2_published():
    assert round(delta_m(nested(LS), nested(STL), NYU_TASKS), 2) == 5.59


def test_delta_p_is_per_task_mean_with_improvement_sign():
    higher = [m.higher_is_better for t in NYU_TASKS for m in t.metrics]
    want = reference(LS, STL, higher, [2, 2, 5], per_task=True)
    np.testing.assert_allclose(delta_p(nested(LS), nested(STL), NYU_TASKS), want, rtol=1e-12)
    # Per-task averaging differs from the flat mean when tasks have unequal metric counts.
    assert (
        abs(
            delta_p(nested(LS), nested(STL), NYU_TASKS)
            + delta_m(nested(LS), nested(STL), NYU_TASKS)
        )
        > 0.1
    )


def test_nested_bool_directions_equal_task_metadata():
    directions = {t.name: {m.name: m.higher_is_better for m in t.metrics} for t in NYU_TASKS}
    assert delta_m(nested(LS), nested(STL), directions) == delta_m(
        nested(LS), nested(STL), NYU_TASKS
    )


@pytest.mark.parametrize("higher", [True, False])
def test_sign_conventions(higher):
    tasks = {"a": {"m": higher}, "b": {"m": higher}}
    base = {"a": {"m": 2.0}, "b": {"m": 4.0}}
    up = {"a": {"m": 3.0}, "b": {"m": 5.0}}  # +50% and +25%
    sign = 1.0 if higher else -1.0
    assert delta_m(up, base, tasks) == pytest.approx(-sign * 37.5)
    assert delta_p(up, base, tasks) == pytest.approx(sign * 37.5)
    assert delta_m(base, base, tasks) == 0.0 and delta_p(base, base, tasks) == 0.0


def test_one_metric_per_task_delta_p_is_minus_delta_m():
    rng = np.random.default_rng(0)
    tasks = {f"t{i}": {"acc": bool(i % 2)} for i in range(5)}
    base = {t: {"acc": float(v)} for t, v in zip(tasks, rng.uniform(0.5, 1.0, 5), strict=True)}
    meth = {t: {"acc": float(v)} for t, v in zip(tasks, rng.uniform(0.5, 1.0, 5), strict=True)}
    assert delta_p(meth, base, tasks) == pytest.approx(-delta_m(meth, base, tasks))


def test_extra_metrics_are_ignored_and_missing_ones_raise():
    tasks = {"a": {"acc": True}}
    assert delta_m({"a": {"acc": 1.0, "loss": 9.0}}, {"a": {"acc": 1.0}}, tasks) == 0.0
    with pytest.raises(KeyError, match="a/acc"):
        delta_m({"a": {"loss": 1.0}}, {"a": {"acc": 1.0}}, tasks)
    with pytest.raises(ValueError, match="undefined"):
        delta_m({"a": {"acc": 1.0}}, {"a": {"acc": 0.0}}, tasks)
    with pytest.raises(ValueError, match="at least one metric"):
        delta_m({"a": {}}, {"a": {}}, Tasks(["a"]))


# The built-in dense task types carry the directions of shared/DENSE_METRICS.md.
BUILT_IN_NYU = Tasks([segmentation("segmentation", 13), depth(), normals()])


def test_built_in_nyuv2_tasks_reproduce_the_published_delta_m():
    assert (
        round(delta_m(nested(LS, BUILT_IN_NYU), nested(STL, BUILT_IN_NYU), BUILT_IN_NYU), 2) == 5.59
    )


def test_delta_m_by_hand_on_the_nine_nyuv2_metrics():
    """Signed relative improvements, by hand: miou +10%, pixel acc 0, abs err −10% (better,
    +10), rel err +10% (worse, −10), mean angle 0, median angle +20% (worse, −20), within 11.25°
    +10%, within 22.5° 0, within 30° −10%. Sum −10 over 9 metrics: Δm% = +10/9. Per task:
    segmentation +5, depth 0, normals −4: Δp = 1/3."""
    baseline = [0.40, 0.60, 0.50, 0.20, 20.0, 15.0, 0.30, 0.50, 0.60]
    method = [0.44, 0.60, 0.45, 0.22, 20.0, 18.0, 0.33, 0.50, 0.54]
    got = delta_m(nested(method, BUILT_IN_NYU), nested(baseline, BUILT_IN_NYU), BUILT_IN_NYU)
    assert got == pytest.approx(10 / 9)
    got = delta_p(nested(method, BUILT_IN_NYU), nested(baseline, BUILT_IN_NYU), BUILT_IN_NYU)
    assert got == pytest.approx(1 / 3)
