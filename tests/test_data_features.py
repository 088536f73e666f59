"""Multi-task data handling: missing labels, multi-input batches, task sampling, stratified
group splits, host sharding and training-only augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtljax
from mtljax import parallel
from mtljax.data import (
    LABEL_MASK,
    AlternatingIterator,
    BatchIterator,
    MultiInputIterator,
    TaskSampler,
    device_batches,
    eval_batches,
    fill_missing,
    group_split,
    host_slice,
    label_mask,
    masked_task_losses,
    stratified_group_split,
    task_probabilities,
    with_label_masks,
)

# ---------------------------------------------------------------- missing labels


def test_masked_task_losses_match_numpy():
    rng = np.random.default_rng(0)
    per_sample = {t: rng.normal(size=16) ** 2 for t in "abc"}
    masks = {"a": rng.random(16) < 0.5, "b": np.zeros(16, bool)}  # "c": all labels present
    losses, counts = masked_task_losses({t: jnp.asarray(v) for t, v in per_sample.items()}, masks)
    full = {**masks, "c": np.ones(16, bool)}
    for t in "abc":
        m = full[t]
        want = (per_sample[t] * m).sum() / max(m.sum(), 1)
        np.testing.assert_allclose(losses[t], want, rtol=1e-12)
        assert int(counts[t]) == m.sum()
    assert float(losses["b"]) == 0.0 and int(counts["b"]) == 0


def test_masked_samples_give_zero_gradient():
    """Missing labels hold NaN (regression) and -1 (classification): no gradient, no NaN."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3))
    reg = rng.normal(size=12)
    cls = rng.integers(0, 4, 12)
    m_reg, m_cls = rng.random(12) < 0.6, np.zeros(12, bool)
    reg_stored = np.where(m_reg, reg, np.nan)
    cls_stored = np.where(m_cls, cls, -1)
    params = {"w": jnp.asarray(rng.normal(size=3)), "v": jnp.asarray(rng.normal(size=(3, 4)))}

    def total(params, x):
        pred = x @ params["w"]
        per_sample = {
            "reg": (pred - fill_missing(reg_stored, m_reg)) ** 2,
            "cls": optax.softmax_cross_entropy_with_integer_labels(
                x @ params["v"], fill_missing(cls_stored, m_cls)
            ),
        }
        losses, _ = masked_task_losses(per_sample, {"reg": m_reg, "cls": m_cls})
        return losses["reg"] + losses["cls"]

    grad_x = jax.grad(total, argnums=1)(params, jnp.asarray(x))
    assert np.all(np.isfinite(grad_x))
    np.testing.assert_array_equal(grad_x[~m_reg], 0.0)
    grads = jax.grad(total)(params, jnp.asarray(x))
    np.testing.assert_array_equal(grads["v"], 0.0)  # the task without labels
    # NumPy reference: the gradient of the mean over the labelled rows only.
    xs, ys = x[m_reg], reg[m_reg]
    want = 2 * xs.T @ (xs @ np.asarray(params["w"]) - ys) / m_reg.sum()
    np.testing.assert_allclose(grads["w"], want, rtol=1e-10)


def test_label_masks_from_placeholders_and_batches_carry_them():
    labels = {
        "cls": np.array([2, -1, 0, -1]),
        "reg": np.array([0.5, 1.0, np.nan, 2.0]),
        "seg": np.array([[[-1, 1]], [[-1, -1]], [[0, 0]], [[-1, -1]]]),
    }
    assert label_mask(labels["cls"]).tolist() == [True, False, True, False]
    assert label_mask(labels["reg"], None).tolist() == [True, True, False, True]
    assert label_mask(labels["seg"]).tolist() == [True, False, True, False]
    arrays = with_label_masks({"x": np.arange(4.0), **labels}, ["cls", "reg", "seg"])
    batch = next(BatchIterator(arrays, 4, seed=0, shuffle=False))
    assert batch[LABEL_MASK]["reg"].tolist() == [True, True, False, True]
    padded = next(eval_batches(arrays, 6))
    assert padded[LABEL_MASK]["cls"].tolist() == [True, False, True, False, False, False]
    with pytest.raises(KeyError, match="nope"):
        with_label_masks(labels, ["nope"])


def test_train_step_with_a_task_missing_from_the_batch():
    """A task with no label in the batch: loss 0, no NaN flag, its head does not move."""
    rng = np.random.default_rng(2)
    tasks = mtljax.Tasks(["a", "b"])
    batch = {
        "x": rng.normal(size=(8, 3)),
        "a": rng.normal(size=8),
        "b": np.full(8, np.nan),
        LABEL_MASK: {"a": np.ones(8, bool), "b": np.zeros(8, bool)},
    }

    def fn(params, batch):
        rep = batch["x"] @ params["shared"]
        per_sample = {
            t: (rep @ params["heads"][t] - fill_missing(batch[t], batch[LABEL_MASK][t])) ** 2
            for t in tasks.names
        }
        losses, counts = masked_task_losses(per_sample, batch[LABEL_MASK])
        return losses, {"label_count": counts}

    params = {"shared": jnp.eye(3), "heads": {"a": jnp.ones(3), "b": jnp.ones(3)}}
    method = mtljax.get_method("pcgrad", 2)
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(mtljax.MultiTaskLoss.from_fn(fn), tasks, method, opt))
    new, metrics = step(state, batch)
    assert float(metrics["losses"][1]) == 0.0 and not bool(metrics["skipped"])
    assert not np.any(metrics["nonfinite"])
    assert int(metrics["aux"]["label_count"]["b"]) == 0
    np.testing.assert_array_equal(new.params["heads"]["b"], params["heads"]["b"])
    assert not np.allclose(new.params["heads"]["a"], params["heads"]["a"])


# ---------------------------------------------------------------- multi-input tasks


def _multi_input_arrays():
    return {
        t: {
            "x": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
            "y": np.arange(n) % 5,
        }
        for t, n in {"amazon": 37, "dslr": 11, "webcam": 20}.items()
    }


def test_multi_input_step_compiles_once():
    it = MultiInputIterator(_multi_input_arrays(), {"amazon": 8, "dslr": 4, "webcam": 6}, seed=0)
    traces = []

    def loss(w, batch):
        return sum(jnp.mean((b["x"] @ w - b["y"]) ** 2) for b in batch.values())

    @jax.jit
    def step(w, batch):
        traces.append(1)  # runs only while tracing
        value, grad = jax.value_and_grad(loss)(w, batch)
        return w - 0.01 * grad, value

    w = jnp.zeros(3)
    for _ in range(40):  # 10 epochs of dslr, 1 of amazon
        batch = next(it)
        assert {t: b["x"].shape[0] for t, b in batch.items()} == {
            "amazon": 8,
            "dslr": 4,
            "webcam": 6,
        }
        w, _ = step(w, batch)
    assert len(traces) == 1  # one trace: the jit cache holds a single entry


def test_multi_input_epochs_and_resume():
    arrays = _multi_input_arrays()
    it = MultiInputIterator(arrays, 4, seed=3)
    seen = [it.next_task("dslr")["x"][:, 0] for _ in range(it.iterators["dslr"].steps_per_epoch)]
    seen = np.concatenate(seen)
    assert len(np.unique(seen)) == len(seen) == 8  # 11 samples, remainder 3 dropped
    for _ in range(5):
        next(it)
    saved = it.state()
    want = [next(it) for _ in range(7)]
    fresh = MultiInputIterator(arrays, 4, seed=3)
    fresh.restore(saved)
    for a, b in zip(want, [next(fresh) for _ in range(7)], strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    # Each task has its own stream: dslr's batches do not depend on how often amazon moved.
    ahead = MultiInputIterator(arrays, 4, seed=3)
    for _ in range(3):
        ahead.next_task("amazon")
    np.testing.assert_array_equal(
        ahead.next_task("dslr")["x"], MultiInputIterator(arrays, 4, seed=3).next_task("dslr")["x"]
    )


def test_alternating_iterator_follows_the_sampler_and_resumes():
    arrays = _multi_input_arrays()
    sizes = {t: len(a["y"]) for t, a in arrays.items()}

    def make():
        return AlternatingIterator(
            MultiInputIterator(arrays, 2, seed=0), TaskSampler(sizes, "proportional", seed=5)
        )

    alt, ref = make(), TaskSampler(sizes, "proportional", seed=5)
    drawn = [next(alt) for _ in range(50)]
    assert [t for t, _ in drawn] == [next(ref) for _ in range(50)]
    assert all(b["x"].shape == (2, 3) for _, b in drawn)
    saved, want = alt.state(), [next(alt) for _ in range(20)]
    again = make()
    again.restore(saved)
    for (ta, a), (tb, b) in zip(want, [next(again) for _ in range(20)], strict=True):
        assert ta == tb
        np.testing.assert_array_equal(a["x"], b["x"])


# ---------------------------------------------------------------- task sampling

SIZES = {"a": 4000, "b": 1000, "c": 250}


@pytest.mark.parametrize(
    "scheme, temperature, want",
    [
        ("proportional", 1.0, np.array([4000, 1000, 250]) / 5250),
        ("temperature", 2.0, np.sqrt([4000, 1000, 250]) / np.sqrt([4000, 1000, 250]).sum()),
        (
            "temperature",
            5.0,
            np.power([4000, 1000, 250], 0.2) / np.power([4000, 1000, 250], 0.2).sum(),
        ),
        ("uniform", 1.0, np.full(3, 1 / 3)),
    ],
)
def test_sampling_frequencies_match_the_formula(scheme, temperature, want):
    p = task_probabilities(SIZES, scheme, temperature=temperature)
    np.testing.assert_allclose([p[t] for t in SIZES], want, rtol=1e-12)
    sampler = TaskSampler(SIZES, scheme, seed=0, temperature=temperature)
    n = 30_000
    draws = [next(sampler) for _ in range(n)]
    freq = np.array([draws.count(t) for t in SIZES]) / n
    # 4.5 binomial standard deviations: the draws are seeded, so this is a fixed check.
    assert np.all(np.abs(freq - want) < 4.5 * np.sqrt(want * (1 - want) / n))


def test_temperature_limits_and_round_robin():
    one = task_probabilities(SIZES, "temperature", temperature=1.0)
    assert one == pytest.approx(task_probabilities(SIZES, "proportional"))
    hot = task_probabilities(SIZES, "temperature", temperature=1e6)
    assert hot == pytest.approx(dict.fromkeys(SIZES, 1 / 3), abs=1e-5)
    rr = TaskSampler(SIZES, "round_robin", seed=0)
    assert [next(rr) for _ in range(7)] == list("abcabca")
    huge = task_probabilities({"a": 10**12, "b": 1}, "temperature", temperature=0.01)
    assert np.isfinite(huge["a"]) and huge["a"] == 1.0


def test_sampler_is_deterministic_and_resumes_mid_block():
    s1 = TaskSampler(SIZES, "temperature", seed=7, temperature=2.0)
    s2 = TaskSampler(SIZES, "temperature", seed=7, temperature=2.0)
    s3 = TaskSampler(SIZES, "temperature", seed=8, temperature=2.0)
    a = [next(s1) for _ in range(3000)]
    assert a == [next(s2) for _ in range(3000)]
    assert a != [next(s3) for _ in range(3000)]
    resumed = TaskSampler(SIZES, "temperature", seed=7, temperature=2.0)
    resumed.restore({"step": 1500, "seed": 7})
    assert [next(resumed) for _ in range(1500)] == a[1500:]
    with pytest.raises(ValueError, match="seed"):
        resumed.restore({"step": 0, "seed": 8})


@pytest.mark.parametrize(
    "sizes, scheme, kw, match",
    [
        (SIZES, "zipf", {}, "Unknown sampling scheme"),
        ({"a": 0, "b": 3}, "proportional", {}, "positive"),
        (SIZES, "temperature", {"temperature": 0.0}, "temperature"),
    ],
)
def test_sampling_rejects_bad_input(sizes, scheme, kw, match):
    with pytest.raises(ValueError, match=match):
        task_probabilities(sizes, scheme, **kw)


# ---------------------------------------------------------------- stratified group splits


def _grouped_data(seed=0):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 400, 6000)
    labels = (rng.integers(0, 3, 6000) + (groups % 2)) % 4  # groups mix labels
    return groups, labels


def test_stratified_group_split_keeps_groups_and_label_shares():
    groups, labels = _grouped_data()
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    parts = stratified_group_split(groups, labels, fractions, seed=0)
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(len(groups)))
    owners = [set(groups[idx]) for idx in parts.values()]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1 :])
    largest_group = np.bincount(groups).max()
    totals = np.bincount(labels)
    for name, idx in parts.items():
        counts = np.bincount(labels[idx], minlength=4)
        assert np.all(np.abs(counts - fractions[name] * totals) <= largest_group), name


def test_stratified_group_split_is_deterministic_from_the_seed():
    groups, labels = _grouped_data(1)
    f = {"a": 0.5, "b": 0.5}
    one = stratified_group_split(groups, labels, f, seed=3)
    two = stratified_group_split(groups, labels, f, seed=3)
    other = stratified_group_split(groups, labels, f, seed=4)
    assert all(np.array_equal(one[k], two[k]) for k in f)
    assert not all(np.array_equal(one[k], other[k]) for k in f)


def test_group_split_points_mixed_groups_to_the_stratified_split():
    with pytest.raises(ValueError, match="stratified_group_split"):
        group_split(np.array([0, 0, 1]), {"a": 0.5, "b": 0.5}, seed=0, stratify=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_group_split(np.arange(3), np.arange(3), {"a": 0.5}, seed=0)


# ---------------------------------------------------------------- host and device sharding


@pytest.mark.parametrize("hosts", [2, 4])
def test_host_shards_partition_the_global_batch(hosts):
    arrays = {"x": np.arange(50), "y": {"t": np.arange(50) * 10}}
    whole = BatchIterator(arrays, 8, seed=1)
    shards = [
        BatchIterator(arrays, 8, seed=1, num_shards=hosts, shard_index=i) for i in range(hosts)
    ]
    for _ in range(13):  # crosses two epoch boundaries (6 batches per epoch)
        full = next(whole)
        parts = [next(s) for s in shards]
        assert all(p["x"].shape == (8 // hosts,) for p in parts)
        jax.tree.map(
            lambda f, *ps: np.testing.assert_array_equal(f, np.concatenate(ps)), full, *parts
        )
        for i, p in enumerate(parts):
            jax.tree.map(np.testing.assert_array_equal, p, host_slice(full, i, hosts))
    with pytest.raises(ValueError, match="divisible"):
        BatchIterator(arrays, 6, seed=0, num_shards=4)
    with pytest.raises(ValueError, match="not divisible by 4 hosts"):
        host_slice({"x": np.arange(6)}, 0, 4)


def test_multi_input_batches_shard_per_task():
    arrays = _multi_input_arrays()
    full = next(MultiInputIterator(arrays, 8, seed=2))
    parts = [
        next(MultiInputIterator(arrays, 8, seed=2, num_shards=2, shard_index=i)) for i in range(2)
    ]
    for t in arrays:
        np.testing.assert_array_equal(
            full[t]["x"], np.concatenate([parts[0][t]["x"], parts[1][t]["x"]])
        )


def test_device_batches_place_rows_on_the_mesh():
    mesh = parallel.data_mesh()
    assert host_slice({"x": np.arange(4)})["x"].tolist() == [0, 1, 2, 3]  # one process
    local = iter([{"x": np.arange(32.0).reshape(16, 2), "y": np.arange(16)}])
    (batch,) = list(device_batches(local, mesh))
    np.testing.assert_array_equal(batch["x"], np.arange(32.0).reshape(16, 2))
    for shard in batch["y"].addressable_shards:
        device = mesh.devices.tolist().index(shard.device)
        np.testing.assert_array_equal(shard.data, [2 * device, 2 * device + 1])
    with pytest.raises(ValueError, match="8 devices"):
        list(device_batches(iter([{"x": np.arange(12)}]), mesh))


# ---------------------------------------------------------------- augmentation


def _flip(batch, rng):
    flip = rng.random(len(batch["x"])) < 0.5
    batch["x"][flip] = batch["x"][flip, ::-1]  # in place on the batch's own copy
    return batch


def test_augmentation_changes_training_batches_only():
    x = np.arange(40.0).reshape(10, 4)
    arrays = {"x": x, "y": np.arange(10)}
    original = x.copy()
    train = BatchIterator(arrays, 10, seed=0, shuffle=False, augment=_flip)
    augmented = next(train)["x"]
    assert not np.array_equal(augmented, original)
    assert all(
        np.array_equal(r, o) or np.array_equal(r, o[::-1])
        for r, o in zip(augmented, original, strict=True)
    )
    np.testing.assert_array_equal(x, original)  # the dataset itself is untouched
    for batch in eval_batches(arrays, 4):
        keep = batch["mask"]
        np.testing.assert_array_equal(batch["x"][keep], original[batch["y"][keep]])


def test_augmentation_is_reproducible_and_shape_checked():
    arrays = {"x": np.arange(60.0).reshape(15, 4)}
    it = BatchIterator(arrays, 5, seed=2, augment=_flip)
    for _ in range(4):
        next(it)
    saved, want = it.state(), next(it)
    again = BatchIterator(arrays, 5, seed=2, augment=_flip)
    again.restore(saved)
    np.testing.assert_array_equal(next(again)["x"], want["x"])
    bad = BatchIterator(arrays, 5, seed=2, augment=lambda b, rng: {"x": b["x"][:, :2]})
    with pytest.raises(ValueError, match="keep shapes"):
        next(bad)
