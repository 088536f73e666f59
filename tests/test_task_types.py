"""Built-in task types: losses and label counts against NumPy, missing labels, metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax import Metric, Task, Tasks
from mtljax.tasks import classification, depth, multilabel, normals, regression, segmentation

RNG = np.random.default_rng(0)
B, H, W = 3, 4, 5


# --- Independent NumPy references ----------------------------------------------------------


def np_masked_mean(values, keep):
    return values[keep].mean() if keep.any() else 0.0


def np_cross_entropy(logits, labels, keep):
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    safe = np.where(keep, labels, 0)
    nll = -np.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
    return np_masked_mean(nll, keep)


def np_bce(logits, labels, keep):
    y = (labels > 0).astype(float)
    values = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    return np_masked_mean(values, keep)


def np_unit(p):
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def dense_valid(target):
    return target.sum(-1) != 0


def random_normals(shape, missing=0.3):
    target = np_unit(RNG.normal(size=(*shape, 3)))
    target[RNG.random(shape) < missing] = 0.0
    return target


def sample_mask(keep, mask):
    return keep & mask.reshape(mask.shape + (1,) * (keep.ndim - 1))


MASKS = [None, np.array([True, False, True])]


# --- Losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", MASKS)
def test_classification_loss_ignores_missing_labels(mask):
    logits = RNG.normal(size=(B, 4))
    labels = np.array([2, -1, 0])
    keep = labels >= 0 if mask is None else sample_mask(labels >= 0, mask)
    task = classification("c", 4)
    got = task.loss(jnp.asarray(logits), jnp.asarray(labels), mask)
    np.testing.assert_allclose(got, np_cross_entropy(logits, labels, keep), rtol=1e-6)
    assert int(task.valid_count(jnp.asarray(labels), mask)) == keep.sum()


def test_classification_label_outside_range_is_missing():
    task = classification("c", 3)
    assert int(task.valid_count(jnp.array([0, 2, 3, -1, -5]))) == 2


@pytest.mark.parametrize("mask", MASKS)
def test_multilabel_loss_is_bce_over_labelled_entries(mask):
    logits = RNG.normal(size=(B, 5))
    labels = RNG.integers(-1, 2, size=(B, 5))
    keep = labels >= 0 if mask is None else sample_mask(labels >= 0, mask)
    got = multilabel("m", 5).loss(jnp.asarray(logits), jnp.asarray(labels), mask)
    np.testing.assert_allclose(got, np_bce(logits, labels, keep), rtol=1e-6)


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_regression_loss_skips_nan_targets(kind):
    pred = RNG.normal(size=(B, 2))
    target = RNG.normal(size=(B, 2))
    target[0, 1] = target[2, 0] = np.nan
    keep = ~np.isnan(target)
    error = np.abs(pred - np.nan_to_num(target))
    want = np_masked_mean(error**2 if kind == "mse" else error, keep)
    task = regression("r", dim=2, loss=kind)
    np.testing.assert_allclose(task.loss(jnp.asarray(pred), jnp.asarray(target)), want)
    assert int(task.valid_count(jnp.asarray(target))) == 4


def test_regression_scalar_targets_fit_a_one_column_head():
    pred, target = RNG.normal(size=(B, 1)), RNG.normal(size=(B,))
    got = regression("r").loss(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(got, np.mean((pred[:, 0] - target) ** 2))


@pytest.mark.parametrize("mask", MASKS)
def test_segmentation_loss_is_pixel_cross_entropy_over_valid_pixels(mask):
    logits = RNG.normal(size=(B, H, W, 3))
    labels = RNG.integers(-1, 3, size=(B, H, W))
    keep = labels >= 0 if mask is None else sample_mask(labels >= 0, mask)
    task = segmentation("s", 3)
    got = task.loss(jnp.asarray(logits), jnp.asarray(labels), mask)
    np.testing.assert_allclose(got, np_cross_entropy(logits, labels, keep), rtol=1e-6)
    assert int(task.valid_count(jnp.asarray(labels), mask)) == keep.sum()


def test_segmentation_ignore_label_inside_the_class_range():
    task = segmentation("s", 4, ignore=0)
    assert int(task.valid_count(jnp.array([[0, 1, 3, -1]]))) == 2


@pytest.mark.parametrize("mask", MASKS)
def test_depth_loss_is_l1_over_nonzero_pixels(mask):
    pred = RNG.normal(size=(B, H, W, 1))
    target = RNG.uniform(0.5, 3.0, size=(B, H, W, 1)) * (RNG.random((B, H, W, 1)) > 0.3)
    keep = dense_valid(target) if mask is None else sample_mask(dense_valid(target), mask)
    got = depth().loss(jnp.asarray(pred), jnp.asarray(target), mask)
    np.testing.assert_allclose(got, np_masked_mean(np.abs(pred - target)[..., 0], keep))


@pytest.mark.parametrize("mask", MASKS)
def test_normals_loss_is_one_minus_mean_cosine(mask):
    pred = RNG.normal(size=(B, H, W, 3))
    target = random_normals((B, H, W))
    keep = dense_valid(target) if mask is None else sample_mask(dense_valid(target), mask)
    cosine = (np_unit(pred) * target).sum(-1)
    got = normals().loss(jnp.asarray(pred), jnp.asarray(target), mask)
    np.testing.assert_allclose(got, 1.0 - cosine[keep].mean(), rtol=1e-6)


ALL_MISSING = [
    (classification("t", 3), (B, 3), np.full((B,), -1)),
    (multilabel("t", 2), (B, 2), np.full((B, 2), -1)),
    (regression("t", dim=2), (B, 2), np.full((B, 2), np.nan)),
    (segmentation("t", 3), (B, H, W, 3), np.full((B, H, W), -1)),
    (depth("t"), (B, H, W, 1), np.zeros((B, H, W, 1))),
    (normals("t"), (B, H, W, 3), np.zeros((B, H, W, 3))),
]


@pytest.mark.parametrize("task, shape, target", ALL_MISSING, ids=lambda v: getattr(v, "name", ""))
def test_no_labelled_element_gives_zero_loss_and_finite_zero_gradient(task, shape, target):
    pred = jnp.asarray(RNG.normal(size=shape))
    loss, grad = jax.value_and_grad(task.loss)(pred, jnp.asarray(target))
    assert float(loss) == 0.0 and int(task.valid_count(jnp.asarray(target))) == 0
    assert np.all(np.asarray(grad) == 0.0)


def test_missing_placeholders_do_not_poison_gradients():
    """A NaN target or a -1 label next to valid ones: the gradient stays finite."""
    target = jnp.array([[1.0, jnp.nan], [2.0, 3.0]])
    grad = jax.grad(regression("r", dim=2).loss)(jnp.ones((2, 2)), target)
    assert np.all(np.isfinite(grad)) and float(grad[0, 1]) == 0.0
    normal_grad = jax.grad(normals().loss)(jnp.zeros((1, 1, 2, 3)), jnp.zeros((1, 1, 2, 3)))
    assert np.all(np.isfinite(normal_grad))


# --- Metadata -------------------------------------------------------------------------------

# Directions of shared/DENSE_METRICS.md (NYUv2: 9 metrics) and the brief for the others.
DIRECTIONS = {
    "classification": [("accuracy", True)],
    "multilabel": [("accuracy", True), ("f1", True)],
    "regression": [("mae", False), ("rmse", False)],
    "segmentation": [("miou", True), ("pixel_accuracy", True)],
    "depth": [("abs_err", False), ("rel_err", False)],
    "normal": [
        ("mean_angle", False),
        ("median_angle", False),
        ("within_11.25", True),
        ("within_22.5", True),
        ("within_30", True),
    ],
}


def test_metric_names_directions_and_heads():
    tasks = [
        classification("classification", 7),
        multilabel("multilabel", 5),
        regression("regression", dim=3),
        segmentation("segmentation", 13),
        depth(),
        normals(),
    ]
    got = {t.name: [(m.name, m.higher_is_better) for m in t.metrics] for t in tasks}
    assert got == DIRECTIONS
    assert [(t.output_dim, t.dense) for t in tasks] == [
        (7, False),
        (5, False),
        (3, False),
        (13, True),
        (1, True),
        (3, True),
    ]
    assert all(m.accumulates for t in tasks for m in t.metrics)


def test_built_in_tasks_are_values():
    assert segmentation("s", 13) == segmentation("s", 13)
    assert hash(normals()) == hash(normals())
    assert Tasks([depth()]) == Tasks([depth()])
    assert depth(average="pixel") != depth()


def test_plain_tasks_and_metrics_keep_working():
    task = Task("a", (Metric("acc", True),))
    assert task.loss is None and task.output_dim is None and not task.dense
    assert Tasks(["a", "b"]).names == ("a", "b")
    with pytest.raises(ValueError, match="no statistic"):
        task.metrics[0].init()


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: classification("c", 1), "num_classes"),
        (lambda: multilabel("m", 0), "num_labels"),
        (lambda: regression("r", loss="huber"), "huber"),
        (lambda: regression("r", dim=0), "dim"),
        (lambda: depth(average="image"), "image"),
        (lambda: normals(bins_per_degree=0), "bins_per_degree"),
        (lambda: Task("t", output_dim=0), "output_dim"),
        (lambda: Metric("m", True, statistic=object()), "both"),
    ],
)
def test_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
