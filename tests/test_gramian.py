"""The Gramian engine: taps, ``G`` against the exact Jacobian's, and the step against the
Jacobian engine's for every Gram-space method, on 1 and 8 devices and instance-wise.

The references are independent: ``jax.jacrev`` of the losses (rows flattened), ``J Jᵀ`` in
NumPy, and the Jacobian engine's step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtljax
from mtljax import parallel
from mtljax.gramian import engine as gramian
from mtljax.gramian import trace_plan
from mtljax.models import HardSharing, SmallCNN
from mtljax.nnx_bridge import model_loss, split_params

GRAM_METHODS = ["pcgrad", "mgda", "mgda_ub", "gradvac", "cagrad", "imtl_g", "imtl", "nash_mtl",
                "aligned_mtl", "aligned_mtl_ub", "upgrad", "dualproj", "config", "fairgrad",
                "krum"]
# Float32 agreement of the weights and update (relative to the largest entry); float64: 1e-10.
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def mlp_problem(num_tasks=3, batch=12, dtype=jnp.float64, instance=False, seed=0):
    """A plain-function trunk exercising every tap: a kernel on either side of its
    ``dot_general``, 3-D activations, biases, and a leaf used twice (fallback)."""
    rng = np.random.default_rng(seed)

    def arr(*shape, scale=0.5):
        return jnp.asarray(rng.normal(size=shape) * scale, dtype)

    params = {
        "shared": {"w1": arr(5, 7), "b1": arr(7), "w2": arr(7, 6), "b2": arr(6),
                   "wt": arr(4, 6), "tied": arr(4, 4)},
        "heads": {"w": arr(4, num_tasks), "b": arr(num_tasks)},
    }
    data = {"x": arr(batch, 2, 5, scale=1.0), "y": arr(batch, num_tasks, scale=1.0)}

    def encode(p, b):
        s = p["shared"]
        h = jnp.tanh(b["x"] @ s["w1"] + s["b1"])  # [B, 2, 7]: 3-D activations
        h = jax.nn.relu(jnp.einsum("bld,de->ble", h, s["w2"]) + s["b2"]).mean(axis=1)
        h = jnp.tanh(jnp.einsum("od,bd->bo", s["wt"], h))  # the kernel is the left operand
        return jnp.tanh(h @ s["tied"]) @ s["tied"]  # a leaf used twice

    def decode(p, rep, b):
        # Column by column, so that a NaN label stays in its own task's rows.
        err = jnp.stack([(rep @ p["heads"]["w"][:, i] + p["heads"]["b"][i] - b["y"][:, i]) ** 2
                         for i in range(num_tasks)], axis=1)
        if instance:
            return {f"t{i}": err[:, i] for i in range(num_tasks)}, {}
        return {f"t{i}": jnp.mean(err[:, i]) for i in range(num_tasks)}, {}

    tasks = mtljax.Tasks([f"t{i}" for i in range(num_tasks)])
    return tasks, mtljax.MultiTaskLoss(encode, decode), params, data


def cnn_problem(num_tasks=2, batch=6, dtype=jnp.float64, instance=False):
    """An NNX model: convolutions (fallback leaves) then a dense layer."""
    rngs = nnx.Rngs(0)
    model = HardSharing(SmallCNN(1, features=(3,), out_features=5, grid=2, rngs=rngs),
                        {f"t{i}": 1 for i in range(num_tasks)}, rngs=rngs)
    graphdef, params, rest = split_params(model)
    params = jax.tree.map(lambda x: x.astype(dtype), params)
    rng = np.random.default_rng(1)
    data = {"x": jnp.asarray(rng.normal(size=(batch, 6, 6, 1)), dtype),
            "y": jnp.asarray(rng.normal(size=(batch, num_tasks)), dtype)}

    def losses(outputs, b):
        errs = {f"t{i}": (outputs[f"t{i}"][:, 0] - b["y"][:, i]) ** 2 for i in range(num_tasks)}
        return ({k: v for k, v in errs.items()} if instance else
                {k: jnp.mean(v) for k, v in errs.items()}), {}

    tasks = mtljax.Tasks([f"t{i}" for i in range(num_tasks)])
    return tasks, model_loss(graphdef, rest, losses), params, data


def flat_losses(loss, tasks, params, batch, instance=False):
    """The losses as a flat vector (task-major rows) as a function of the shared params."""

    def fn(shared):
        raw, _ = loss.decode({"shared": shared, "heads": params["heads"]},
                             loss.encode({"shared": shared, "heads": params["heads"]}, batch),
                             batch)
        return (tasks.stack_instance_losses(raw) if instance else tasks.stack_losses(raw)).ravel()

    return fn


def exact_gram(loss, tasks, params, batch, instance=False):
    jac = jax.jacrev(flat_losses(loss, tasks, params, batch, instance))(params["shared"])
    rows = np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in jax.tree.leaves(jac)],
                          axis=1)
    return rows @ rows.T, rows


def engine_gram(loss, tasks, params, batch, instance=False):
    def fn(p, b):
        raw, aux = loss.decode(p, loss.encode(p, b), b)
        return (tasks.stack_instance_losses(raw) if instance else tasks.stack_losses(raw)), aux

    @jax.jit
    def run(p, b):
        pulled = gramian.forward(fn, p, b, instance=instance)
        fallback = pulled.fallback_rows
        if instance:
            # Fallback leaves need per-sample rows: the step computes them; here, none exist
            # for the MLP, and the CNN test uses the step.
            assert not fallback
        return gramian.full_gram(pulled, fallback, jnp.float64)

    return np.asarray(run(params, batch))


def test_taps_are_classified_by_use():
    tasks, loss, params, batch = mlp_problem()
    plan, _ = trace_plan(lambda p, b: loss.decode(p, loss.encode(p, b), b), params, batch)
    leaves = jax.tree_util.tree_flatten_with_path(params["shared"])[0]
    name = [jax.tree_util.keystr(path) for path, _ in leaves]
    assert sorted(name[t.leaf] for t in plan.dense) == ["['w1']", "['w2']", "['wt']"]
    assert sorted(name[t.leaf] for t in plan.bias) == ["['b1']", "['b2']"]
    assert [name[i] for i in plan.fallback] == ["['tied']"]
    # A product followed by its bias shares one point.
    assert len(plan.points) == 3


@pytest.mark.parametrize("problem", [mlp_problem, cnn_problem])
def test_gram_equals_the_exact_jacobian_gram(problem):
    tasks, loss, params, batch = problem()
    expected, _ = exact_gram(loss, tasks, params, batch)
    np.testing.assert_allclose(engine_gram(loss, tasks, params, batch), expected, rtol=1e-10,
                               atol=1e-12)


def test_instance_wise_gram_equals_the_per_sample_jacobian_gram():
    tasks, loss, params, batch = mlp_problem(instance=True, batch=5)
    expected, _ = exact_gram(loss, tasks, params, batch, instance=True)
    # The tied leaf is a fallback: the engine's own instance Gram covers only the taps.
    plan, _ = trace_plan(lambda p, b: (tasks.stack_instance_losses(loss.decode(
        p, loss.encode(p, b), b)[0]), {}), params, batch)
    assert plan.fallback  # exercised through the step below
    step_gram = instance_step_gram(loss, tasks, params, batch)
    np.testing.assert_allclose(step_gram, expected, rtol=1e-10, atol=1e-12)


def instance_step_gram(loss, tasks, params, batch):
    """``G`` as the instance-wise step sees it (read back through a recording method)."""
    rows = len(tasks) * batch["x"].shape[0]
    seen = {}

    def weights_fn(gram, state, **_):
        seen["gram"] = gram
        return jnp.ones((gram.shape[0],), gram.dtype), state

    method = mtljax.methods.gram_weighting("record", rows, lambda: (), weights_fn)
    step = mtljax.make_train_step(loss, tasks, method, optax.sgd(0.0), instance_wise=True)

    @jax.jit
    def run(state, batch):
        step(state, batch)
        return seen["gram"]

    return np.asarray(run(mtljax.init_train_state(params, optax.sgd(0.0), method), batch))


@functools.cache
def both_engines(name, dtype_name, problem="mlp"):
    """One step of each engine with SGD(1): the update is params − new params."""
    dtype = jnp.dtype(dtype_name)
    tasks, loss, params, batch = (mlp_problem if problem == "mlp" else cnn_problem)(dtype=dtype)
    method = mtljax.get_method(name, num_tasks=len(tasks))
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    steps = {e: mtljax.make_train_step(loss, tasks, method, opt, engine=e, level="parameters")
             for e in ("jacobian", "gramian")}

    @jax.jit
    def run(state, batch):
        return {e: step(state, batch) for e, step in steps.items()}

    return state, run(state, batch)


def relative_error(a, b):
    a, b = np.concatenate([np.ravel(x) for x in a]), np.concatenate([np.ravel(x) for x in b])
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", [*GRAM_METHODS, "ew", "uw"])
def test_step_equals_the_jacobian_engine(name, dtype):
    state, out = both_engines(name, dtype)
    (exact, m_exact), (gram, m_gram) = out["jacobian"], out["gramian"]
    tol = TOLERANCE[dtype]
    assert relative_error([m_exact["weights"]], [m_gram["weights"]]) < tol
    update = [jax.tree.map(lambda a, b: a - b, state.params, s.params) for s in (exact, gram)]
    assert relative_error(jax.tree.leaves(update[0]), jax.tree.leaves(update[1])) < tol
    for key in ("cosine", "grad_norms", "update_norm"):
        assert relative_error([m_exact[key]], [m_gram[key]]) < tol


def test_step_with_convolutions_equals_the_jacobian_engine():
    state, out = both_engines("upgrad", "float64", problem="cnn")
    (exact, _), (gram, _) = out["jacobian"], out["gramian"]
    assert relative_error(jax.tree.leaves(exact.params), jax.tree.leaves(gram.params)) < 1e-10


def test_methods_needing_rows_are_refused():
    tasks, loss, params, _ = mlp_problem()
    with pytest.raises(ValueError, match="Gram-space method"):
        mtljax.make_train_step(loss, tasks, mtljax.get_method("graddrop", 3), optax.sgd(0.1),
                               engine="gramian")
    with pytest.raises(ValueError, match="engine must be one of"):
        mtljax.make_train_step(loss, tasks, mtljax.get_method("upgrad", 3), optax.sgd(0.1),
                               engine="fast")


def test_drop_task_leaves_an_overflowing_task_out_like_the_jacobian_engine():
    """Task t1's loss ×1e30: finite in float32, but ``‖g‖² = G_tt`` overflows. Both engines
    drop it; the Gramian engine then pulls the tasks back one at a time (``0 · ∞`` otherwise)."""
    tasks, base, params, batch = mlp_problem(dtype=jnp.float32)

    def decode(p, rep, b):
        losses, aux = base.decode(p, rep, b)
        return dict(losses, t1=losses["t1"] * 1e30), aux

    loss = mtljax.MultiTaskLoss(base.encode, decode)
    method = mtljax.get_method("upgrad", 3)
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    new = {}
    for engine in ("jacobian", "gramian"):
        step = mtljax.make_train_step(loss, tasks, method, opt, engine=engine,
                                      nonfinite="drop_task")
        new[engine], metrics = jax.jit(step)(state, batch)
        assert metrics["nonfinite"].tolist() == [False, True, False]
        assert not bool(metrics["skipped"])
        assert float(metrics["weights"][1]) == 0.0
    assert relative_error(jax.tree.leaves(new["jacobian"].params),
                          jax.tree.leaves(new["gramian"].params)) < 1e-5


@pytest.mark.parametrize("reduce", ["loss", "grad"])
def test_eight_devices_give_the_one_device_step(reduce):
    tasks, loss, params, batch = mlp_problem(batch=16)
    method = mtljax.get_method("upgrad", 3)
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    single, single_metrics = jax.jit(mtljax.make_train_step(
        loss, tasks, method, opt, engine="gramian"))(state, batch)
    step = mtljax.make_train_step(loss, tasks, method, opt, engine="gramian", axis_name="data",
                                  reduce=reduce)
    devices = jax.devices()[:8]
    if reduce == "loss":
        new, metrics = parallel.shard_map_step(step, parallel.data_mesh(devices))(state, batch)
    else:
        new, metrics = parallel.pmap_step(step, devices=devices)(
            parallel.replicate(state, 8), parallel.split_batch(batch, 8))
        new, metrics = parallel.unreplicate(new), parallel.unreplicate(metrics)
    assert relative_error(jax.tree.leaves(single.params), jax.tree.leaves(new.params)) < 1e-10
    np.testing.assert_allclose(metrics["cosine"], single_metrics["cosine"], rtol=1e-10)


def test_instance_wise_step_is_the_exact_weighted_step():
    """UPGrad on per-sample rows: its weights from the exact per-sample Gram, and the update
    ``Jᵀw`` of the exact per-sample Jacobian (NumPy)."""
    tasks, loss, params, batch = mlp_problem(num_tasks=2, batch=6, instance=True)
    gram, rows = exact_gram(loss, tasks, params, batch, instance=True)
    method = mtljax.get_method("upgrad", num_tasks=12)
    weights, _ = method.gram_weights(jnp.asarray(gram), method.init(params["shared"]))
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    step = mtljax.make_train_step(loss, tasks, method, opt, instance_wise=True)
    new, metrics = jax.jit(step)(state, batch)
    update = jax.tree.map(lambda a, b: np.ravel(a - b), state.params["shared"],
                          new.params["shared"])
    np.testing.assert_allclose(np.concatenate(jax.tree.leaves(update)),
                               rows.T @ np.asarray(weights), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(metrics["weights"], np.asarray(weights).reshape(2, 6).sum(1),
                               rtol=1e-9)
    assert metrics["losses"].shape == (2,)


def test_instance_wise_errors_name_the_row_count():
    tasks, loss, params, batch = mlp_problem(instance=True, batch=4)
    method = mtljax.get_method("upgrad", num_tasks=9)  # 3 tasks × 4 samples = 12 rows
    step = mtljax.make_train_step(loss, tasks, method, optax.sgd(0.1), instance_wise=True)
    with pytest.raises(ValueError, match="3 tasks × batch 4 = 12 rows"):
        jax.jit(step)(mtljax.init_train_state(params, optax.sgd(0.1), method), batch)
    with pytest.raises(ValueError, match="not a multiple"):
        mtljax.make_train_step(loss, tasks, mtljax.get_method("upgrad", 7), optax.sgd(0.1),
                               instance_wise=True)


def test_loss_only_step_flags_the_task_whose_gradient_overflows():
    """EW, float32: task t1's loss ``L + 1e10 sin(1e30 L)`` is finite, but its gradient
    (about 1e40 × ∇L) overflows. The plain one-backward step finds and flags t1 (and skips)."""
    tasks, base, params, batch = mlp_problem(dtype=jnp.float32)

    def decode(p, rep, b):
        losses, aux = base.decode(p, rep, b)
        return dict(losses, t1=losses["t1"] + 1e10 * jnp.sin(1e30 * losses["t1"])), aux

    loss = mtljax.MultiTaskLoss(base.encode, decode)
    method = mtljax.get_method("ew", 3)
    state = mtljax.init_train_state(params, optax.sgd(0.1), method)
    step = mtljax.make_train_step(loss, tasks, method, optax.sgd(0.1), diagnostics=False)
    assert step.engine == "loss"
    _, metrics = jax.jit(step)(state, batch)
    assert bool(jnp.all(jnp.isfinite(metrics["losses"])))
    assert metrics["nonfinite"].tolist() == [False, True, False]
    assert bool(metrics["skipped"])


def test_loss_only_diagnostics_only_on_every_kth_step():
    tasks, loss, params, batch = mlp_problem()
    method = mtljax.get_method("ew", 3)
    opt = optax.sgd(0.01)
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, diagnostics_every=3))
    state = mtljax.init_train_state(params, opt, method)
    exact = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, engine="jacobian"))
    _, reference = exact(state, batch)
    state, first = step(state, batch)
    _, second = step(state, batch)
    assert bool(first["diagnosed"]) and not bool(second["diagnosed"])
    np.testing.assert_allclose(first["cosine"], reference["cosine"], rtol=1e-10)
    assert bool(jnp.all(jnp.isnan(second["cosine"])))


@pytest.mark.parametrize("devices", [2, 4])
def test_task_sharded_gramian_step_equals_the_one_device_step(devices):
    """T = 3 tasks over 2 or 4 devices (padding rows included)."""
    tasks, loss, params, batch = mlp_problem()
    method = mtljax.get_method("upgrad", 3)
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    single, single_metrics = jax.jit(mtljax.make_train_step(
        loss, tasks, method, opt, engine="gramian"))(state, batch)
    step = mtljax.make_train_step(loss, tasks, method, opt, engine="gramian", task_axis="tasks")
    assert step.engine == "gramian"
    mesh = parallel.data_mesh(jax.devices()[:devices], axis_name="tasks")
    new, metrics = parallel.task_sharded_step(step, mesh, task_axis="tasks")(state, batch)
    assert relative_error(jax.tree.leaves(single.params), jax.tree.leaves(new.params)) < 1e-10
    np.testing.assert_allclose(metrics["cosine"], single_metrics["cosine"], rtol=1e-10)


def test_broadcast_biases_are_tapped():
    """``b[None, :]``-style biases (``broadcast_in_dim``) and scalar offsets."""
    rng = np.random.default_rng(3)
    params = {"shared": {"w": jnp.asarray(rng.normal(size=(4, 5))),
                         "b": jnp.asarray(rng.normal(size=(5,))),
                         "c": jnp.asarray(rng.normal(size=(1,)))},
              "heads": {"w": jnp.asarray(rng.normal(size=(5, 2)))}}
    batch = {"x": jnp.asarray(rng.normal(size=(6, 4)))}

    def encode(p, b):
        s = p["shared"]
        return jnp.tanh(b["x"] @ s["w"] + jnp.broadcast_to(s["b"], (6, 5)) + s["c"])

    def decode(p, rep, b):
        out = rep @ p["heads"]["w"]
        return {"a": jnp.mean(out[:, 0] ** 2), "b": jnp.mean(jnp.sin(out[:, 1]))}, {}

    tasks, loss = mtljax.Tasks(["a", "b"]), mtljax.MultiTaskLoss(encode, decode)
    plan, _ = trace_plan(lambda p, b: loss.decode(p, loss.encode(p, b), b), params, batch)
    assert len(plan.bias) == 2 and not plan.fallback
    expected, _ = exact_gram(loss, tasks, params, batch)
    np.testing.assert_allclose(engine_gram(loss, tasks, params, batch), expected, rtol=1e-10)


def test_instance_wise_heads_get_each_tasks_mean_loss_gradient():
    """Unweighted heads (a gradient method) follow each task's mean per-sample loss, the
    scale of the trunk's UPGrad update, not the sum over the batch."""
    tasks, loss, params, batch = mlp_problem(num_tasks=2, batch=6, instance=True)
    method = mtljax.get_method("upgrad", num_tasks=12)
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    new, _ = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, instance_wise=True))(
        state, batch)

    def mean_losses(heads):
        raw, _ = loss.decode({"shared": params["shared"], "heads": heads},
                             loss.encode(params, batch), batch)
        return sum(jnp.mean(v) for v in raw.values())

    expected = jax.grad(mean_losses)(params["heads"])
    got = jax.tree.map(lambda a, b: a - b, state.params["heads"], new.params["heads"])
    assert relative_error(jax.tree.leaves(expected), jax.tree.leaves(got)) < 1e-10


def test_instance_wise_loss_only_method_skips_the_gram_matrix():
    tasks, loss, params, batch = mlp_problem(num_tasks=2, batch=6, instance=True)
    method = mtljax.get_method("mean", num_tasks=12)
    opt = optax.sgd(1.0)
    state = mtljax.init_train_state(params, opt, method)
    step = mtljax.make_train_step(loss, tasks, method, opt, instance_wise=True,
                                  diagnostics_every=2)
    new, metrics = jax.jit(step)(state, batch)

    def mean_loss(p):
        raw, _ = loss.decode(p, loss.encode(p, batch), batch)
        return sum(jnp.sum(v) for v in raw.values()) / 12

    expected = jax.grad(mean_loss)(params)
    got = jax.tree.map(lambda a, b: a - b, state.params, new.params)
    assert relative_error(jax.tree.leaves(expected), jax.tree.leaves(got)) < 1e-10
    assert bool(metrics["diagnosed"]) and metrics["cosine"].shape == (2, 2)


def test_auto_engine_takes_the_gramian_engine_for_a_large_dense_jacobian():
    """Below ``AUTO_GRAMIAN_MIN_ENTRIES`` "auto" is the Jacobian engine; a 1024×1024 layer
    with T = 4 (2²² entries) takes the Gramian engine. Bitwise equal results tell which ran."""
    from mtljax.step.engines import AUTO_GRAMIAN_MIN_ENTRIES

    rng = np.random.default_rng(0)
    width = 1024
    params = {"shared": {"w": jnp.asarray(rng.normal(size=(width, width)) / 32, jnp.float32)},
              "heads": {"w": jnp.asarray(rng.normal(size=(width, 4)) / 32, jnp.float32)}}
    batch = {"x": jnp.asarray(rng.normal(size=(4, width)), jnp.float32)}

    def decode(p, rep, b):
        out = rep @ p["heads"]["w"]
        return {f"t{i}": jnp.mean(jnp.sin(out[:, i])) for i in range(4)}, {}

    loss = mtljax.MultiTaskLoss(lambda p, b: jnp.tanh(b["x"] @ p["shared"]["w"]), decode)
    tasks, method, opt = mtljax.Tasks([f"t{i}" for i in range(4)]), mtljax.get_method(
        "upgrad", 4), optax.sgd(1.0)
    assert 4 * width * width == AUTO_GRAMIAN_MIN_ENTRIES
    state = mtljax.init_train_state(params, opt, method)
    out = {e: jax.jit(mtljax.make_train_step(loss, tasks, method, opt, engine=e))(state, batch)[0]
           for e in ("auto", "gramian", "jacobian")}
    for x, y in zip(jax.tree.leaves(out["auto"].params), jax.tree.leaves(out["gramian"].params),
                    strict=True):
        np.testing.assert_array_equal(x, y)
    small = both_engines("upgrad", "float64")[1]["jacobian"][0]
    tasks, loss, params, batch = mlp_problem()
    auto = mtljax.make_train_step(loss, tasks, mtljax.get_method("upgrad", 3), optax.sgd(1.0),
                                  level="parameters")
    new, _ = jax.jit(auto)(mtljax.init_train_state(params, optax.sgd(1.0), auto.context.method),
                           batch)
    for x, y in zip(jax.tree.leaves(new.params), jax.tree.leaves(small.params), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["resnet", "mtan", "mmoe", "cascade"])
def test_gram_equals_the_exact_jacobian_gram_on_the_project_architectures(name):
    from mtljax.models.registry import build_architecture

    model = build_architecture(name, (6, 6, 1), {"a": 3, "b": 2}, hidden=(8,),
                               cnn_features=(3,), cnn_out=5, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_params(model)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    rng = np.random.default_rng(2)
    batch = {"x": jnp.asarray(rng.normal(size=(4, 6, 6, 1))),
             "a": jnp.asarray(rng.integers(0, 3, 4)), "b": jnp.asarray(rng.integers(0, 2, 4))}

    def losses(outputs, b):
        return {t: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs[t], b[t]))
                for t in ("a", "b")}, {}

    tasks, loss = mtljax.Tasks(["a", "b"]), model_loss(graphdef, rest, losses)
    expected, _ = exact_gram(loss, tasks, params, batch)
    np.testing.assert_allclose(engine_gram(loss, tasks, params, batch), expected, rtol=1e-9,
                               atol=1e-12)
