"""Bad inputs fail loudly, naming the task, shape or value at fault; NaN policies hold."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy import make_problem

import mtljax
from mtljax import MultiTaskLoss, Tasks
from mtljax.jacobian import per_task_gradients
from mtljax.methods import REGISTRY
from mtljax.step import NONFINITE_POLICIES, nonfinite_policy


def step_for(loss_fn, names=("t0", "t1", "t2"), method="ew", **kw):
    tasks, _, params, batch = make_problem()
    method = mtljax.get_method(method, len(names))
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    step = mtljax.make_train_step(MultiTaskLoss.from_fn(loss_fn), Tasks(names), method, opt, **kw)
    return step, state, batch


def mse(params, batch, i):
    rep = jnp.tanh(batch["x"] @ params["shared"]["w1"])
    return jnp.mean((rep @ params["heads"][f"t{i}"]["w"] - batch["y"][:, i]) ** 2)


def test_mismatched_task_names_are_listed():
    step, state, batch = step_for(lambda p, b: {"t0": mse(p, b, 0), "t1": mse(p, b, 1),
                                                "oops": mse(p, b, 2)})
    with pytest.raises(ValueError, match=r"missing \['t2'\], unexpected \['oops'\]"):
        step(state, batch)


def test_non_scalar_loss_names_the_task():
    step, state, batch = step_for(lambda p, b: {"t0": mse(p, b, 0), "t1": mse(p, b, 1),
                                                "t2": b["y"][:, 2]})
    with pytest.raises(ValueError, match=r"task 't2' must be a scalar, got shape \(32,\)"):
        step(state, batch)


def test_loss_vector_of_wrong_length():
    step, state, batch = step_for(lambda p, b: jnp.stack([mse(p, b, 0), mse(p, b, 1)]))
    with pytest.raises(ValueError, match=r"shape \(3,\).*got shape \(2,\)"):
        step(state, batch)


def test_task_losses_of_wrong_shape_name_the_method():
    method = mtljax.get_method("mgda", 3, normalization="loss")
    jac = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"'mgda' needs task_losses of shape \(3,\), got \(2,\)"):
        method.apply(jac, method.init(jac[0]), task_losses=jnp.ones(2))
    with pytest.raises(ValueError, match="'mgda' needs the per-task losses"):
        method.apply(jac, method.init(jac[0]))


def test_per_task_gradients_need_a_loss_vector():
    with pytest.raises(ValueError, match=r"\[T\] vector of losses, got \(2, 2\)"):
        per_task_gradients(lambda w: jnp.outer(w, w), jnp.ones(2))


@pytest.mark.parametrize("strategy, chunk_size", [("fast", None), ("map", 0)])
def test_bad_jacobian_strategy(strategy, chunk_size):
    with pytest.raises(ValueError, match="strategy must be one of|chunk_size must be positive"):
        per_task_gradients(lambda w: w * 2, jnp.ones(2), strategy=strategy,
                           chunk_size=chunk_size)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="Unknown method 'pcgard'") as err:
        mtljax.get_method("pcgard", 2)
    for name in REGISTRY:
        assert name in str(err.value)


def test_preset_cannot_be_overridden():
    with pytest.raises(ValueError, match=r"'mean' fixes \['reduction'\]"):
        mtljax.get_method("mean", 2, reduction="sum")


@pytest.mark.parametrize("num_tasks", [0, -1, 2.0])
def test_bad_num_tasks(num_tasks):
    with pytest.raises(ValueError, match="num_tasks must be a positive integer"):
        mtljax.get_method("mgda", num_tasks)


def test_method_built_for_wrong_number_of_tasks():
    tasks, loss, params, _ = make_problem(num_tasks=3)
    method = mtljax.get_method("pcgrad", 2)
    with pytest.raises(ValueError, match=r"'pcgrad' was built for 2 tasks, but there are 3"):
        mtljax.make_train_step(loss, tasks, method, optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"built for 2 tasks but received .* task axis of 3"):
        method.apply(jnp.ones((3, 4)), method.init(jnp.ones(4)))


def test_bad_train_step_options():
    tasks, loss, _, _ = make_problem()
    method = mtljax.get_method("ew", 3)
    for kw, msg in [({"nonfinite": "ignore"}, "nonfinite must be one of"),
                    ({"level": "heads"}, "level must be"),
                    ({"reduce": "sum"}, "reduce must be one of")]:
        with pytest.raises(ValueError, match=msg):
            mtljax.make_train_step(loss, tasks, method, optax.sgd(0.1), **kw)


def test_params_need_shared_and_heads():
    with pytest.raises(ValueError, match=r'keys "shared" and "heads", got \[\'w\'\]'):
        mtljax.init_train_state({"w": jnp.ones(2)}, optax.sgd(0.1),
                                mtljax.get_method("ew", 2))


# ---------------------------------------------------------------------------------------------
# Non-finite policies: task t1's loss is NaN.


def test_nonfinite_aliases():
    assert [nonfinite_policy(name) for name in NONFINITE_POLICIES] == [
        "skip_step", "drop_task", "skip_step", "skip_step", "drop_task"]


def nan_in_t1(p, b):
    # `where` keeps the other tasks' rows finite: its pullback selects, so the zero cotangent
    # of rows t0 and t2 never meets the NaN (a product would give 0 · NaN = NaN in every row).
    return {"t0": mse(p, b, 0), "t1": jnp.where(True, jnp.nan, mse(p, b, 1)), "t2": mse(p, b, 2)}


def nan_forward_in_t1(p, b):
    return {"t0": mse(p, b, 0), "t1": jnp.nan * mse(p, b, 1), "t2": mse(p, b, 2)}


def clean_reference(params, batch, lr=0.1):
    """EW on the two good tasks: the step ``drop_task`` must take."""
    grads = jax.grad(lambda p: mse(p, batch, 0) + mse(p, batch, 2))(params)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


@pytest.mark.parametrize("method", ["ew", "mgda"])
@pytest.mark.parametrize("policy", ["skip_step", "raise", "skip"])
def test_nonfinite_task_skips_the_update(policy, method):
    step, state, batch = step_for(nan_in_t1, method=method, nonfinite=policy)
    new_state, metrics = jax.jit(step)(state, batch)
    np.testing.assert_array_equal(metrics["nonfinite"], [False, True, False])
    assert bool(metrics["skipped"])
    assert int(new_state.step) == 1
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@jax.custom_vjp
def exploding(x):
    """The identity, whose pullback sends a non-zero cotangent to infinity (and 0 to 0)."""
    return x


exploding.defvjp(lambda x: (x, None),
                 lambda _, ct: (jnp.where(ct == 0, 0.0, ct * jnp.inf),))


def inf_gradient_in_t1(p, b):
    # Finite losses; only row t1 of the shared Jacobian is infinite.
    rep = jnp.tanh(b["x"] @ exploding(p["shared"]["w1"]))
    t1 = jnp.mean((rep @ p["heads"]["t1"]["w"] - b["y"][:, 1]) ** 2)
    return {"t0": mse(p, b, 0), "t1": t1, "t2": mse(p, b, 2)}


# MGDA and UPGrad run from the Gram matrix (finiteness read from its diagonal); trimmed_mean
# sees the Jacobian itself.
@pytest.mark.parametrize("method", ["mgda", "upgrad", "trimmed_mean"])
def test_infinite_gradient_with_finite_loss_is_flagged(method):
    step, state, batch = step_for(inf_gradient_in_t1, method=method, nonfinite="raise")
    new_state, metrics = jax.jit(step)(state, batch)
    assert np.all(np.isfinite(metrics["losses"]))
    np.testing.assert_array_equal(metrics["nonfinite"], [False, True, False])
    assert bool(metrics["skipped"])
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("policy", "diagnostics"),
                         [("drop_task", False), ("drop_task", True), ("zero", False)])
def test_nonfinite_drop_task_drops_the_task(policy, diagnostics):
    """``drop_task`` (alias ``zero``): the NaN task is dropped; the others update as if it
    were absent (EW, both the one-backward-pass shortcut and the Jacobian path)."""
    step, state, batch = step_for(nan_in_t1, nonfinite=policy, diagnostics=diagnostics)
    new_state, metrics = jax.jit(step)(state, batch)
    np.testing.assert_array_equal(metrics["nonfinite"], [False, True, False])
    assert not bool(metrics["skipped"])
    expected = clean_reference(state.params, batch)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_nonfinite_drop_task_runs_the_method_on_the_other_tasks():
    """MGDA with a dropped task: the shared update is MGDA's on the two good tasks alone (the
    dropped row does not exist for the method), the good heads descend their own losses and
    the bad head stays."""
    step, state, batch = step_for(nan_in_t1, method="mgda", nonfinite="drop_task")
    new_state, metrics = jax.jit(step)(state, batch)
    assert not bool(metrics["skipped"])
    assert float(metrics["weights"][1]) == 0.0
    params = state.params
    rows = jax.jacrev(lambda p: jnp.stack([mse(p, batch, 0), mse(p, batch, 2)]))(params)
    mgda = mtljax.get_method("mgda", 2)
    direction = mgda.apply(rows["shared"], mgda.init(params["shared"])).updates
    for new, old, d in zip(jax.tree.leaves(new_state.params["shared"]),
                           jax.tree.leaves(params["shared"]), jax.tree.leaves(direction),
                           strict=True):
        np.testing.assert_allclose(new, old - 0.1 * d, rtol=1e-4, atol=1e-6)
    heads = new_state.params["heads"]
    expected = clean_reference(params, batch)["heads"]
    for name in ("t0", "t2"):
        np.testing.assert_allclose(heads[name]["w"], expected[name]["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(heads["t1"]["w"], params["heads"]["t1"]["w"])


@pytest.mark.parametrize("method", ["ew", "mgda"])
def test_nonfinite_drop_task_keeps_params_finite_when_nan_reaches_every_row(method):
    """A NaN in one task's forward pass reaches every row of the Jacobian through the shared
    pullback (0 · NaN); ``drop_task`` then drops what is non-finite and never writes a NaN."""
    step, state, batch = step_for(nan_forward_in_t1, method=method, nonfinite="drop_task")
    new_state, metrics = jax.jit(step)(state, batch)
    assert bool(metrics["nonfinite"][1])
    for a in jax.tree.leaves(new_state.params):
        assert np.all(np.isfinite(a))


def test_decode_returning_a_bare_losses_dict_says_to_return_a_pair():
    """A two-task dict would otherwise unpack into its keys ('y1' is not a valid JAX type)."""
    _, _, params, batch = make_problem()
    names = ("t0", "t1")

    def decode(params, rep, batch):
        return {f"t{i}": mse(params, batch, i) for i in range(2)}

    method, opt = mtljax.get_method("ew", 2), optax.sgd(0.1)
    step = mtljax.make_train_step(MultiTaskLoss(lambda p, b: None, decode), Tasks(names),
                                  method, opt)
    expected = r"pair \(losses, aux\).*dict alone \(keys \['t0', 't1'\]\)"
    with pytest.raises(TypeError, match=expected):
        step(mtljax.init_train_state(params, opt, method), batch)


def test_from_fn_accepts_bare_losses_and_refuses_a_tuple_of_scalars():
    step, state, batch = step_for(lambda p, b: {f"t{i}": mse(p, b, i) for i in range(3)})
    assert step(state, batch)[1]["losses"].shape == (3,)
    step, state, batch = step_for(lambda p, b: tuple(mse(p, b, i) for i in range(3)))
    expected = r"tuple of \(array \(\), array \(\), array \(\)\).*jnp.stack"
    with pytest.raises(TypeError, match=expected):
        step(state, batch)
