"""Dense architectures: SegNet pooling against NumPy, per-pixel outputs, the shared split,
training on a tiny NYUv2 with the tasks' own losses."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from fixtures.datasets import write_nyuv2
from flax import nnx

import mtljax
from mtljax import nnx_bridge
from mtljax.data import load_dataset
from mtljax.metrics import task_losses
from mtljax.models import DenseMTAN, SegNet
from mtljax.models.registry import DENSE_ARCHITECTURES, build_architecture, check_dense
from mtljax.models.segnet import SEGNET_CONVS, SEGNET_FEATURES, max_pool_with_indices, max_unpool
from mtljax.tasks import classification, depth, segmentation

# Learning, not speed, is under test: XLA's cheapest CPU pipeline halves the compile times.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
SIZES = {"hidden": (8,), "cnn_features": (4,), "cnn_out": 8}


def forward(model, x):
    """``model(x)`` compiled once (eager NNX calls compile every operation separately)."""
    graphdef, params, rest = nnx_bridge.split_params(model)
    predict = nnx_bridge.model_predict(graphdef, rest)
    return compiled(predict, params, x)(params, x)


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


@pytest.fixture(scope="module")
def nyuv2(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyuv2")
    write_nyuv2(root, n_train=3, n_test=2, size=(8, 12))
    return load_dataset("nyuv2", root=str(root), val_fraction=0)


@pytest.fixture(scope="module")
def models(nyuv2):
    heads = {t.name: t.output_dim for t in nyuv2.tasks}
    return {
        name: build_architecture(name, nyuv2.input_shape, heads, rngs=nnx.Rngs(0), **SIZES)
        for name in sorted(DENSE_ARCHITECTURES)
    }


@pytest.mark.parametrize("size", [(4, 6), (5, 7)])
def test_max_pool_and_unpool_match_numpy(size):
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    pooled, index = max_pool_with_indices(jnp.asarray(x))
    rows, cols = -(-size[0] // 2), -(-size[1] // 2)
    want = np.zeros((2, rows, cols, 3), np.float32)
    back = np.zeros_like(x)
    for b, i, j, c in itertools.product(range(2), range(rows), range(cols), range(3)):
        window = x[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c]
        r, s = np.unravel_index(np.argmax(window), window.shape)
        want[b, i, j, c] = window[r, s]
        back[b, 2 * i + r, 2 * j + s, c] = window[r, s]
    np.testing.assert_array_equal(pooled, want)
    np.testing.assert_array_equal(max_unpool(pooled, index, size), back)


@pytest.mark.parametrize("name", sorted(DENSE_ARCHITECTURES))
def test_dense_outputs_are_per_pixel(models, nyuv2, name):
    x = jnp.asarray(nyuv2.splits["train"]["x"][:2])
    out = forward(models[name], x)
    assert {t: v.shape for t, v in out.items()} == {
        "segmentation": (2, 8, 12, 13),
        "depth": (2, 8, 12, 1),
        "normal": (2, 8, 12, 3),
    }
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
    # Any size, odd ones included: pooling pads, unpooling crops.
    odd = forward(models[name], jnp.ones((1, 7, 9, 3)))
    assert odd["segmentation"].shape == (1, 7, 9, 13)


@pytest.mark.parametrize("name", sorted(DENSE_ARCHITECTURES))
def test_dense_shared_and_task_specific_split(models, nyuv2, name):
    graphdef, params, rest = nnx_bridge.split_params(models[name])
    loss = nnx_bridge.model_loss(graphdef, rest, task_losses(nyuv2.tasks, with_metrics=False))
    batch = {k: jnp.asarray(v[:2]) for k, v in nyuv2.splits["train"].items()}
    names = nyuv2.tasks.names

    def grads(p):
        def one(task):
            return jax.grad(lambda q: loss.decode(q, loss.encode(q, batch), batch)[0][task])(p)

        return {t: one(t) for t in names}

    per_task = compiled(grads, params)(params)
    flat = {t: dict(nnx.to_flat_state(g["heads"])) for t, g in per_task.items()}
    for task, other in itertools.permutations(names, 2):
        owned = [p for p in flat[task] if other in p]
        assert owned and all(np.all(flat[task][p][...] == 0) for p in owned)
        assert any(np.any(flat[task][p][...] != 0) for p in flat[task] if task in p)
        shared = jax.tree.leaves(per_task[task]["shared"])
        assert any(np.any(g != 0) for g in shared)


@pytest.mark.parametrize(
    ("name", "level"), [("dense_mtan", "parameters"), ("dense_hps", "representation")]
)
def test_dense_models_train_with_the_tasks_losses(models, nyuv2, name, level):
    graphdef, params, rest = nnx_bridge.split_params(models[name])
    loss = nnx_bridge.model_loss(graphdef, rest, task_losses(nyuv2.tasks, with_metrics=False))
    method = mtljax.get_method("ew" if level == "parameters" else "mgda_ub", len(nyuv2.tasks))
    opt = optax.adam(1e-2)
    state = mtljax.init_train_state(params, opt, method)
    batch = {k: jnp.asarray(v) for k, v in nyuv2.splits["train"].items()}
    step = compiled(
        mtljax.make_train_step(loss, nyuv2.tasks, method, opt, diagnostics=False), state, batch
    )
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch)
        losses.append(np.asarray(metrics["losses"]))
    assert np.all(np.isfinite(losses)) and np.all(metrics["present"])
    assert losses[-1].sum() < losses[0].sum(), losses


def test_dense_options_and_checks(nyuv2):
    rngs = nnx.Rngs(0)
    net = nnx.eval_shape(
        lambda: SegNet(3, features=(4, 8), convs=(1, 3), norm="group", rngs=nnx.Rngs(0))
    )
    assert [len(b.convs) for b in net.encoder] == [1, 3]
    assert [len(b.convs) for b in net.decoder] == [3, 1]  # mirrored
    assert [len(b.norms) for b in net.encoder] == [1, 3]
    with pytest.raises(ValueError, match="convs must be"):
        SegNet(3, features=(4, 8), convs=(2,), rngs=rngs)
    with pytest.raises(ValueError, match="norm must be"):
        SegNet(3, norm="batch", rngs=rngs)
    with pytest.raises(ValueError, match="unknown option"):
        build_architecture("dense_hps", (8, 12, 3), {"a": 2}, rngs=rngs, grid=3, **SIZES)
    # The published size (MTAN's SegNet): shapes only, nothing allocated.
    big = nnx.eval_shape(
        lambda: DenseMTAN(
            3,
            {"segmentation": 13, "depth": 1, "normal": 3},
            features=SEGNET_FEATURES,
            convs=SEGNET_CONVS,
            rngs=nnx.Rngs(0),
        )
    )
    _, params, _ = nnx_bridge.split_params(big)
    sizes = [sum(p.size for p in jax.tree.leaves(params[k])) for k in ("shared", "heads")]
    assert 4.3e7 < sum(sizes) < 4.5e7  # the paper's 44.2M on NYUv2
    # Dense models need dense tasks, the others per-sample tasks.
    # MTAN's carrying convolutions are shared and run per task: no single representation.
    assert not nnx_bridge.has_representation(big)
    check_dense("dense_mtan", nyuv2.tasks)
    check_dense("mlp", [classification("a", 2)])
    with pytest.raises(ValueError, match=r"per-pixel: use a dense model, one of \['dense_hps'"):
        check_dense("resnet", [segmentation("s", 3), classification("a", 2)])
    with pytest.raises(ValueError, match=r"the tasks \['a'\] need one output per sample"):
        check_dense("dense_hps", [depth(), classification("a", 2)])
