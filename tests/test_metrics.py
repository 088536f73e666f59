"""Accumulated metrics, evaluate() and task_losses() against one-shot NumPy references.

Every accumulated metric is fed the split in uneven batches (sizes 2, 4 and 1, the last one
padded to 3 and masked, one batch with no labelled element) and must equal the NumPy value
computed on the whole split at once; the depth errors must equal the published per-batch
protocol computed batch by batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.metrics import evaluate, make_evaluator, task_losses
from mtljax.tasks import (
    Tasks,
    classification,
    depth,
    multilabel,
    normals,
    regression,
    segmentation,
)

RNG = np.random.default_rng(1)
N, H, W = 7, 6, 5
SIZES = (2, 4, 1)


def np_unit(p):
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def random_split(task, num_classes=4):
    """``(pred, target)`` of ``N`` samples for a task type, with missing labels."""
    if task == "classification":
        target = RNG.integers(-1, num_classes, size=N)
        return RNG.normal(size=(N, num_classes)), target
    if task == "multilabel":
        return RNG.normal(size=(N, 6)), RNG.integers(-1, 2, size=(N, 6))
    if task == "regression":
        target = RNG.normal(size=(N, 2))
        target[RNG.random((N, 2)) < 0.2] = np.nan
        return RNG.normal(size=(N, 2)), target
    if task == "segmentation":
        return RNG.normal(size=(N, H, W, num_classes)), RNG.integers(-1, num_classes, (N, H, W))
    if task == "depth":
        target = RNG.uniform(0.5, 4.0, (N, H, W, 1)) * (RNG.random((N, H, W, 1)) > 0.3)
        return RNG.uniform(0.5, 4.0, (N, H, W, 1)), target
    target = np_unit(RNG.normal(size=(N, H, W, 3))) * (RNG.random((N, H, W, 1)) > 0.3)
    return RNG.normal(size=(N, H, W, 3)), target


def without_labels(task, target):
    """``target`` with every label of samples 0 and 1 removed (the first batch has none)."""
    target = target.copy()
    target[:2] = {"classification": -1, "multilabel": -1, "segmentation": -1}.get(task, 0)
    if task == "regression":
        target[:2] = np.nan
    return target


def accumulate(task, pred, target, sizes=SIZES, pad_to=4):
    """``{metric: value}`` of ``task`` fed the split in batches of ``sizes``, each padded to
    ``pad_to`` rows and masked (one batch shape: the jitted update compiles once)."""
    results, start = {}, 0
    batches = []
    for size in sizes:
        pad = pad_to - size
        p, t = pred[start : start + size], target[start : start + size]
        p = np.concatenate([p, np.zeros((pad, *p.shape[1:]))])
        t = np.concatenate([t, np.zeros((pad, *t.shape[1:]), t.dtype)])
        batches.append((jnp.asarray(p), jnp.asarray(t), np.arange(pad_to) < size))
        start += size
    for statistic in dict.fromkeys(m.statistic for m in task.metrics):
        stats, update = statistic.init(), jax.jit(statistic.update)
        for batch in batches:
            stats = update(stats, *batch)
        for metric in task.metrics:
            if metric.statistic == statistic:
                results[metric.name] = metric.result(stats)
    return results


# --- One-shot NumPy references --------------------------------------------------------------


def np_cross_entropy(logits, labels):
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.mean(log_probs[np.arange(len(labels)), labels])


def ref_classification(pred, target):
    keep = target >= 0
    return {"accuracy": np.mean(pred.argmax(-1)[keep] == target[keep])}


def ref_multilabel(pred, target):
    accuracies, f1s = [], []
    for label in range(target.shape[1]):
        keep = target[:, label] >= 0
        guess, truth = pred[keep, label] > 0, target[keep, label] > 0
        accuracies.append(np.mean(guess == truth))
        tp, fp, fn = np.sum(guess & truth), np.sum(guess & ~truth), np.sum(~guess & truth)
        if 2 * tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": np.mean(accuracies), "f1": np.mean(f1s)}


def ref_regression(pred, target):
    keep = ~np.isnan(target)
    error = (pred - target)[keep]
    return {"mae": np.abs(error).mean(), "rmse": np.sqrt(np.square(error).mean())}


def ref_segmentation(pred, target, num_classes=4):
    keep = target >= 0
    confusion = np.bincount(
        target[keep] * num_classes + pred.argmax(-1)[keep], minlength=num_classes**2
    ).reshape(num_classes, num_classes)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return {
        "miou": np.mean(tp[union > 0] / union[union > 0]),
        "pixel_accuracy": tp.sum() / confusion.sum(),
    }


def ref_depth(pred, target, sizes=SIZES):
    """The published protocol: per-batch means over valid pixels, weighted by batch size."""
    records, weights, start = [], [], 0
    for size in sizes:
        p, t = pred[start : start + size, ..., 0], target[start : start + size, ..., 0]
        start += size
        keep = t != 0
        if keep.any():
            error = np.abs(p - t)[keep]
            records.append((error.mean(), (error / t[keep]).mean()))
            weights.append(size)
    records, weights = np.array(records), np.array(weights)
    abs_err, rel_err = (records * weights[:, None]).sum(0) / weights.sum()
    return {"abs_err": abs_err, "rel_err": rel_err}


def ref_depth_pooled(pred, target):
    keep = target[..., 0] != 0
    error = np.abs(pred - target)[..., 0][keep]
    return {"abs_err": error.mean(), "rel_err": (error / target[..., 0][keep]).mean()}


def np_angles(pred, target):
    keep = target.sum(-1) != 0
    cosine = np.clip((np_unit(pred) * target).sum(-1), -1, 1)
    return np.degrees(np.arccos(cosine))[keep]


def ref_normals(pred, target):
    angles = np_angles(pred, target)
    return {
        "mean_angle": angles.mean(),
        "median_angle": np.median(angles),
        "within_11.25": np.mean(angles < 11.25),
        "within_22.5": np.mean(angles < 22.5),
        "within_30": np.mean(angles < 30),
    }


CASES = {
    "classification": (classification("classification", 4), ref_classification),
    "multilabel": (multilabel("multilabel", 6), ref_multilabel),
    "regression": (regression("regression", dim=2), ref_regression),
    "segmentation": (segmentation("segmentation", 4), ref_segmentation),
    "depth": (depth(), ref_depth),
    "normal": (normals(), ref_normals),
}
# The median is read from 0.01° bins: within half a bin of the exact median.
TOLERANCE = {"median_angle": 0.005 + 1e-9}


@pytest.mark.parametrize("name", CASES)
def test_accumulated_metrics_equal_the_one_shot_reference(name):
    task, reference = CASES[name]
    pred, target = random_split(name)
    target = without_labels(name, target)
    want = reference(pred, target)
    for metric, got in accumulate(task, pred, target).items():
        atol = TOLERANCE.get(metric, 0.0)
        np.testing.assert_allclose(got, want[metric], rtol=1e-6, atol=atol, err_msg=metric)


def test_pooled_depth_is_one_mean_over_pixels():
    pred, target = random_split("depth")
    task = depth(average="pixel")
    want = ref_depth_pooled(pred, target)
    for metric, got in accumulate(task, pred, target).items():
        np.testing.assert_allclose(got, want[metric], rtol=1e-6)
    # The two averages differ with uneven batches: the protocol is not a pooled mean.
    assert abs(ref_depth(pred, target)["abs_err"] - want["abs_err"]) > 1e-4


def test_median_angle_resolution_on_many_pixels():
    pred, target = (
        np_unit(RNG.normal(size=(4, 64, 64, 3))),
        np_unit(RNG.normal(size=(4, 64, 64, 3))),
    )
    metric = normals().metrics[1]
    stats = jax.jit(metric.update)(metric.init(), jnp.asarray(pred), jnp.asarray(target))
    assert abs(metric.result(stats) - np.median(np_angles(pred, target))) <= 0.005


def test_miou_leaves_out_classes_absent_from_labels_and_predictions():
    logits = np.eye(4)[[0, 1, 1, 0]].reshape(1, 2, 2, 4)  # predicts classes 0 and 1 only
    labels = np.array([[[0, 1], [0, 0]]])  # classes 2 and 3 never occur
    miou, accuracy = segmentation("s", 4).metrics
    stats = miou.update(miou.init(), jnp.asarray(logits), jnp.asarray(labels))
    # IoU_0 = 2 / 3, IoU_1 = 1 / 2; classes 2 and 3 have TP + FP + FN = 0.
    assert miou.result(stats) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert accuracy.result(stats) == pytest.approx(3 / 4)


def test_metrics_with_no_labelled_element_are_nan():
    for name, (task, _) in CASES.items():
        pred, target = random_split(name)
        target = without_labels(name, target)[:2]
        for metric, got in accumulate(task, pred[:2], target, sizes=(2,)).items():
            assert np.isnan(got), metric


def test_update_is_jittable_and_keeps_stat_dtypes():
    task, _ = CASES["normal"]
    metric = task.metrics[0]
    pred, target = random_split("normal")
    stats = jax.jit(metric.update)(metric.init(), jnp.asarray(pred), jnp.asarray(target), None)
    assert jax.tree.map(lambda a: a.dtype, stats) == jax.tree.map(lambda a: a.dtype, metric.init())
    assert jax.jit(metric.compute)(stats).shape == ()


# --- evaluate() and task_losses() ---------------------------------------------------------


DENSE = ("segmentation", "depth", "normal")


def linear_problem(names=(*DENSE, "classification")):
    """A tiny "model": predictions are fixed linear maps of the input, one per task."""
    x = RNG.normal(size=(N, H, W, 2))
    weights = {
        "segmentation": RNG.normal(size=(2, 4)),
        "depth": RNG.normal(size=(2, 1)),
        "normal": RNG.normal(size=(2, 3)),
        "classification": RNG.normal(size=(2, 4)),
    }

    def predict(params, x):
        dense = {k: x @ params[k] for k in names if k in DENSE}
        return {**dense, "classification": x.mean((1, 2)) @ params["classification"]}

    tasks = Tasks([CASES[k][0] for k in names])
    arrays = {"x": x}
    for task in tasks:
        arrays[task.name] = random_split(task.name)[1]
    return tasks, predict, weights, arrays


def test_evaluate_end_to_end_with_padding():
    tasks, predict, params, arrays = linear_problem()
    calls = []

    def counted(params, x):
        calls.append(1)
        return predict(params, x)

    got = evaluate(tasks, counted, params, arrays, batch_size=3)  # batches 3, 3, 1 (+2 padding)
    outputs = jax.tree.map(np.asarray, predict(params, arrays["x"]))
    for task in tasks:
        _, reference = CASES[task.name]
        extra = {"sizes": (3, 3, 1)} if task.name == "depth" else {}
        want = reference(outputs[task.name], arrays[task.name], **extra)
        assert set(got[task.name]) == set(want)
        for metric, value in want.items():
            atol = TOLERANCE.get(metric, 0.0)
            np.testing.assert_allclose(got[task.name][metric], value, rtol=1e-5, atol=atol)
    assert len(calls) == 1, "the per-batch accumulation must be traced once"


def test_evaluator_compiles_once_across_splits_and_honours_label_masks():
    tasks, predict, params, arrays = linear_problem(("depth", "classification"))
    calls = []

    def counted(params, x):
        calls.append(1)
        return predict(params, x)

    evaluator = make_evaluator(tasks, counted, batch_size=4)
    first = evaluator(params, arrays)
    assert evaluator(params, {k: v[:5] for k, v in arrays.items()}) != first
    assert evaluator(params, arrays) == first
    assert len(calls) == 1
    # Dropping samples through label_mask equals evaluating the kept samples alone (same
    # batch shapes: still 2 batches of 4).
    keep = np.array([True, False, True, True, False, True, True])
    masked = {**arrays, "label_mask": {"classification": keep}}
    subset = {k: v[keep] for k, v in arrays.items()}
    got = evaluator(params, masked)["classification"]["accuracy"]
    assert got == pytest.approx(
        evaluate(tasks, predict, params, subset, 4)["classification"]["accuracy"]
    )
    assert len(calls) == 2  # a label_mask entry is a new batch structure: traced once more


def test_evaluate_names_what_is_missing():
    tasks, predict, params, arrays = linear_problem()
    with pytest.raises(KeyError, match="depth"):
        evaluate(tasks, predict, params, {k: v for k, v in arrays.items() if k != "depth"}, 4)
    with pytest.raises(ValueError, match="cannot be computed"):
        evaluate(["plain"], predict, params, arrays, 4)


def test_task_losses_presence_counts_and_batch_metrics():
    tasks, predict, params, arrays = linear_problem()
    batch = {k: jnp.asarray(v[:2]) for k, v in arrays.items()}
    batch["depth"] = jnp.zeros_like(batch["depth"])  # no depth labelled in this batch
    outputs = predict(params, batch["x"])
    losses, aux = jax.jit(task_losses(tasks))(outputs, batch)
    assert aux["present"].tolist() == [True, False, True, True]
    assert float(losses["depth"]) == 0.0

    @jax.jit
    def one_by_one(outputs, batch):
        return {
            t.name: (t.loss(outputs[t.name], batch[t.name]), t.valid_count(batch[t.name]))
            for t in tasks
        }

    for name, (loss, count) in one_by_one(outputs, batch).items():
        np.testing.assert_allclose(losses[name], loss)
        assert int(aux["count"][name]) == int(count)
    accuracy = np.mean(
        np.asarray(outputs["classification"]).argmax(-1) == arrays["classification"][:2]
    )
    np.testing.assert_allclose(aux["metrics"]["classification"]["accuracy"], accuracy)
    assert set(aux["metrics"]["normal"]) == {m.name for m in tasks[2].metrics}
    lean = jax.eval_shape(task_losses(tasks, with_metrics=False), outputs, batch)[1]
    assert set(lean) == {"present", "count"}


def test_task_losses_masks_samples_and_differentiates():
    tasks = Tasks([classification("c", 3), regression("r")])
    outputs = {"c": jnp.asarray(RNG.normal(size=(4, 3))), "r": jnp.asarray(RNG.normal(size=(4, 1)))}
    batch = {
        "c": jnp.array([0, 2, 1, 1]),
        "r": jnp.array([0.5, jnp.nan, 1.0, 2.0]),
        "mask": jnp.array([True, True, False, False]),
    }
    fn = task_losses(tasks, with_metrics=False)

    def total(outputs):
        losses, aux = fn(outputs, batch)
        return sum(losses.values()), (losses, aux)

    (_, (losses, aux)), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(outputs)
    np.testing.assert_allclose(losses["c"], np_cross_entropy(np.asarray(outputs["c"][:2]), [0, 2]))
    assert int(aux["count"]["r"]) == 1 and int(aux["count"]["c"]) == 2
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    assert np.all(np.asarray(grads["c"][2:]) == 0.0)


def test_task_losses_needs_tasks_with_losses():
    with pytest.raises(ValueError, match="carry no loss"):
        task_losses(["plain"])
