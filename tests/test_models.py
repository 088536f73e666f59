"""NNX models and the NNX ↔ functional bridge: shapes, the parameter split, training steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtljax
from mtljax import nnx_bridge, objectives
from mtljax.models import MLP, HardSharing, SmallCNN
from mtljax.models.cnn import _adaptive_average_pool

TASKS = ("left", "right")


def make_model(trunk="mlp", seed=0):
    rngs = nnx.Rngs(seed)
    if trunk == "mlp":
        body = MLP(144, (16, 8), rngs=rngs)
    else:
        body = SmallCNN(1, features=(4, 8), out_features=16, rngs=rngs)
    return HardSharing(body, {"left": 10, "right": 3}, rngs=rngs)


def make_batch(batch=16, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": jnp.asarray(rng.random((batch, 12, 12, 1)), jnp.float32),
        "left": jnp.asarray(rng.integers(0, 10, batch), jnp.int32),
        "right": jnp.asarray(rng.integers(0, 3, batch), jnp.int32),
    }


@pytest.fixture(scope="module")
def models():
    # Built once: eager parameter initialisation compiles per shape, which dominates test time.
    return {"mlp": make_model("mlp"), "cnn": make_model("cnn")}


def paths(state):
    return [path for path, _ in nnx.to_flat_state(state)]


@pytest.mark.parametrize("shape", [(5, 144), (5, 12, 12, 1), (5, 6, 24)])
def test_mlp_flattens_and_has_out_features(shape):
    mlp = MLP(144, (16, 8), rngs=nnx.Rngs(0))
    out = mlp(jnp.ones(shape))
    assert out.shape == (5, mlp.out_features) == (5, 8)
    assert bool(jnp.all(out >= 0))
    with pytest.raises(ValueError, match="144 features"):
        mlp(jnp.ones((5, 10)))


@pytest.mark.parametrize("size", [8, 12, 15])
def test_cnn_is_size_agnostic_and_position_aware(models, size):
    cnn = models["cnn"].shared
    assert isinstance(cnn, SmallCNN)
    x = np.zeros((2, size, size, 1), np.float32)
    x[0, :3, :3] = 1.0  # a blob top-left
    x[1, -3:, -3:] = 1.0  # the same blob bottom-right
    out = cnn(jnp.asarray(x))
    assert out.shape == (2, cnn.out_features) == (2, 16)
    assert not np.allclose(out[0], out[1])  # the adaptive grid keeps where features fire
    with pytest.raises(ValueError, match="NHWC"):
        cnn(jnp.ones((2, size, size, 3)))


def test_adaptive_pool_matches_numpy():
    x = np.random.default_rng(0).random((2, 7, 5, 3))
    want = np.empty((2, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            # Cell (i, j) spans rows ⌊7i/3⌋..⌈7(i+1)/3⌉ and columns ⌊5j/3⌋..⌈5(j+1)/3⌉.
            r0, r1 = (7 * i) // 3, -(-7 * (i + 1) // 3)
            c0, c1 = (5 * j) // 3, -(-5 * (j + 1) // 3)
            want[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    got = _adaptive_average_pool(jnp.asarray(x), 3)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("trunk", ["mlp", "cnn"])
def test_hard_sharing_outputs(models, trunk):
    model = models[trunk]
    x = make_batch()["x"]
    out = model(x)
    assert list(model.heads.keys()) == list(TASKS)
    assert {k: v.shape for k, v in out.items()} == {"left": (16, 10), "right": (16, 3)}
    rep = model.encode(x)
    assert rep.shape == (16, model.shared.out_features)
    for name in TASKS:
        np.testing.assert_allclose(model.decode(rep)[name], out[name], rtol=1e-6)


def test_hard_sharing_validates(models):
    trunk, rngs = models["mlp"].shared, nnx.Rngs(0)
    with pytest.raises(ValueError, match='"shared"'):
        HardSharing(trunk, {"shared": 2}, rngs=rngs)
    with pytest.raises(ValueError, match="at least one"):
        HardSharing(trunk, {}, rngs=rngs)


@pytest.mark.parametrize("trunk", ["mlp", "cnn"])
def test_split_params_separates_trunk_and_heads(models, trunk):
    model = models[trunk]
    graphdef, params, rest = nnx_bridge.split_params(model)
    assert set(params) == {"shared", "heads"}
    shared_paths, head_paths = paths(params["shared"]), paths(params["heads"])
    assert shared_paths and all(p[0] == "shared" for p in shared_paths)
    assert head_paths and all(p[0] == "heads" for p in head_paths)
    assert {p[1] for p in head_paths} == set(TASKS)
    everything = paths(nnx.state(model, nnx.Param))
    assert sorted(shared_paths + head_paths) == sorted(everything)
    assert jax.tree.leaves(rest) == []


def test_split_params_needs_a_shared_trunk(models):
    class NoTrunk(nnx.Module):
        def __init__(self, body):
            self.body = body

    with pytest.raises(ValueError, match="shared"):
        nnx_bridge.split_params(NoTrunk(models["mlp"].shared))


def test_merge_round_trip_and_predict(models):
    model = models["cnn"]
    x = make_batch()["x"]
    graphdef, params, rest = nnx_bridge.split_params(model)
    merged = nnx_bridge.merge_params(graphdef, params, rest)
    _, params_again, _ = nnx_bridge.split_params(merged)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_again), strict=True):
        np.testing.assert_array_equal(a, b)
    predict = jax.jit(nnx_bridge.model_predict(graphdef, rest))
    expected, got = model(x), predict(params, x)
    for name in TASKS:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_params_work_with_optax(models):
    _, params, _ = nnx_bridge.split_params(models["mlp"])
    opt = optax.adam(1e-2)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    assert jax.tree.structure(new) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b - 1e-2, rtol=1e-4, atol=1e-6)


def task_losses(traces):
    def fn(predictions, batch):
        traces.append(1)  # runs at trace time only
        losses = {k: objectives.softmax_cross_entropy(predictions[k], batch[k]) for k in TASKS}
        return losses, {k: objectives.accuracy(predictions[k], batch[k]) for k in TASKS}

    return fn


@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("method_name", ["ew", "pcgrad"])
def test_train_steps_reduce_losses_without_retracing(models, method_name, level):
    graphdef, params, rest = nnx_bridge.split_params(models["mlp"])
    traces = []
    loss = nnx_bridge.model_loss(graphdef, rest, task_losses(traces))
    method = mtljax.get_method(method_name, len(TASKS))
    opt = optax.adam(3e-2)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss, TASKS, method, opt, level=level))
    losses = []
    for _ in range(12):
        # The same batch, so the losses must fall; fresh arrays, so a retrace would show.
        state, metrics = step(state, make_batch())
        losses.append(np.asarray(metrics["losses"]))
    traced_once = len(traces)
    step(state, make_batch(seed=1))
    assert len(traces) == traced_once  # one trace, reused for every later batch
    assert np.all(losses[-1] < 0.8 * losses[0])
    assert not np.any(np.asarray(metrics["skipped"]))
    assert jax.tree.structure(state.params) == jax.tree.structure(params)
