"""The Jacobian engine, the train step's levels and head weighting, and golden method values.

References here are independent of the library: per-task gradients from T separate
``jax.grad`` calls, the representation-level step from ``jax.grad`` of ``Σ w_t L_t`` with the
weights solved in NumPy, and NumPy implementations of EW, MGDA (exact, by enumerating the
faces of the simplex) and PCGrad (in parameter space, with explicit projection orders).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy import make_problem

import mtljax
from mtljax import linalg
from mtljax.jacobian import per_task_gradients

DTYPES = (jnp.float32, jnp.float64)
RTOL = {jnp.float32: 2e-5, jnp.float64: 1e-12}


def tree_allclose(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def toy_losses(dtype, num_tasks=3):
    tasks, loss, params, batch = make_problem(num_tasks=num_tasks, dtype=dtype)

    def losses(p):
        raw, _ = loss.decode(p, loss.encode(p, batch), batch)
        return tasks.stack_losses(raw)

    return losses, params


# ---------------------------------------------------------------------------------------------
# Per-task gradients.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "strategy, chunk_size",
    [("vmap", None), ("unroll", None), ("map", None), ("auto", None), ("map", 1), ("vmap", 2),
     ("auto", 7)],
)
def test_per_task_gradients_equal_separate_grads(dtype, strategy, chunk_size):
    """Row t of the Jacobian is ``jax.grad`` of loss t, for every strategy and chunk size
    (chunk 2 does not divide T = 3; chunk 7 exceeds it)."""
    losses_fn, params = toy_losses(dtype)
    losses, jac = jax.jit(
        lambda p: per_task_gradients(losses_fn, p, strategy=strategy, chunk_size=chunk_size)
    )(params)
    np.testing.assert_allclose(losses, losses_fn(params), rtol=RTOL[dtype])
    for t in range(3):
        grad_t = jax.grad(lambda p, t=t: losses_fn(p)[t])(params)
        tree_allclose(jax.tree.map(lambda x, t=t: x[t], jac), grad_t, RTOL[dtype], 1e-7)
        for leaf in jax.tree.leaves(jac):
            assert leaf.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_task_last_gram_and_combination_match_task_first(dtype):
    """``gram_of_columns``/``combine_columns`` on a task-last tree equal ``gram``/``combine``
    on the same Jacobian stored task-first, and a NumPy reference."""
    rng = np.random.default_rng(0)
    rows = {"a": rng.normal(size=(5, 3, 4)), "b": rng.normal(size=(5, 7))}
    weights = rng.normal(size=5)
    task_first = jax.tree.map(lambda x: jnp.asarray(x, dtype), rows)
    task_last = jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), task_first)
    flat = np.concatenate([rows["a"].reshape(5, -1), rows["b"]], axis=1)
    np.testing.assert_allclose(linalg.gram_of_columns(task_last), flat @ flat.T,
                               rtol=RTOL[dtype])
    np.testing.assert_allclose(linalg.gram_of_columns(task_last), linalg.gram(task_first),
                               rtol=RTOL[dtype])
    for last, first in zip(jax.tree.leaves(linalg.combine_columns(task_last, weights)),
                           jax.tree.leaves(linalg.combine(task_first, weights)), strict=True):
        np.testing.assert_allclose(last, first, rtol=RTOL[dtype], atol=1e-6)
    np.testing.assert_allclose(linalg.combine_columns(task_last, weights)["b"],
                               weights @ rows["b"], rtol=RTOL[dtype], atol=1e-6)


def test_per_task_gradients_has_aux():
    losses_fn, params = toy_losses(jnp.float64)
    losses, jac, aux = per_task_gradients(lambda p: (losses_fn(p), {"n": 3}), params,
                                          has_aux=True)
    assert aux == {"n": 3}
    _, ref = per_task_gradients(losses_fn, params)
    tree_allclose(jac, ref, 1e-12)


# ---------------------------------------------------------------------------------------------
# Reference MGDA and PCGrad in NumPy.


def numpy_min_norm_weights(gram):
    """``argmin_{w ∈ Δ} wᵀ G w`` exactly: the best KKT point over every face of the simplex.

    On a face S the minimiser of the affine hull solves ``G_S w = μ 1, 1ᵀ w = 1``; it is the
    answer when ``w ≥ 0`` and no other vertex descends, ``(G w)_t ≥ wᵀ G w`` for all t.
    """
    t = gram.shape[0]
    best, best_val = None, np.inf
    for size in range(1, t + 1):
        for face in itertools.combinations(range(t), size):
            idx = list(face)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = gram[np.ix_(idx, idx)]
            kkt[:size, size] = -1.0
            kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
            if np.any(sol < -1e-12):
                continue
            w = np.zeros(t)
            w[idx] = sol
            val = w @ gram @ w
            if np.all(gram @ w >= val - 1e-10) and val < best_val - 1e-14:
                best, best_val = w, val
    return best


def numpy_pcgrad(jac, orders):
    """PCGrad in parameter space: task i is projected off the tasks it conflicts with, in
    ``orders[i]``; returns the sum of the projected gradients."""
    out = np.zeros(jac.shape[1])
    for i, order in enumerate(orders):
        g = jac[i].copy()
        for j in order:
            if j != i and g @ jac[j] < 0:
                g -= (g @ jac[j]) / (jac[j] @ jac[j]) * jac[j]
        out += g
    return out


def pcgrad_orders(seed, num_tasks):
    """The projection orders the PCGrad state's first key draws (its documented use of the
    key: split once, then one permutation per task)."""
    _, sub = jax.random.split(jax.random.key(seed))
    keys = jax.random.split(sub, num_tasks)
    return [np.asarray(jax.random.permutation(k, num_tasks)) for k in keys]


HAND_J = {
    "conflict2": np.array([[1.0, 0.0, 2.0], [-1.0, 1.0, -0.5]]),
    "conflict3": np.array([[1.0, 0.0, 0.0, 2.0], [-2.0, 1.0, 0.0, -0.5], [0.5, -3.0, 1.0, 0.0]]),
    "aligned3": np.array([[1.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]),
    "hull_contains_zero": np.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]]),
}


def apply(name, jac, dtype, **hparams):
    method = mtljax.get_method(name, jac.shape[0], **hparams)
    jac = jnp.asarray(jac, dtype)
    state = method.init(jac[0])
    return method.apply(jac, state, task_losses=jnp.ones(jac.shape[0], dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(HAND_J))
def test_golden_ew(case, dtype):
    jac = HAND_J[case]
    np.testing.assert_allclose(apply("ew", jac, dtype).updates, jac.sum(0), rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["aligned3", "conflict3"])
def test_golden_mean(case, dtype):
    jac = HAND_J[case]
    np.testing.assert_allclose(apply("mean", jac, dtype).updates, jac.mean(0), rtol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(HAND_J))
def test_golden_mgda(case, dtype):
    jac = HAND_J[case]
    w_ref = numpy_min_norm_weights(jac @ jac.T)
    out = apply("mgda", jac, dtype, tol=1e-12 if dtype == jnp.float64 else 1e-7,
                max_iters=5000)
    scale = np.max(np.linalg.norm(jac, axis=1))
    # Frank-Wolfe's gap bounds ‖d − d*‖² ≤ gap · ‖J‖²: compare d, not w (w may not be unique).
    tol = 1e-5 if dtype == jnp.float64 else 1e-3
    np.testing.assert_allclose(out.updates, jac.T @ w_ref, atol=tol * scale)
    np.testing.assert_allclose(np.sum(out.weights), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(HAND_J))
def test_golden_pcgrad(case, dtype):
    jac = HAND_J[case]
    num_tasks = jac.shape[0]
    expected = numpy_pcgrad(jac, pcgrad_orders(0, num_tasks))
    np.testing.assert_allclose(apply("pcgrad", jac, dtype, key=0).updates, expected,
                               rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_golden_pcgrad_two_tasks_is_order_free(seed):
    """At T = 2 each gradient is projected off the other only: the closed form
    ``g1 + g2 − (c/‖g2‖²) g2 − (c/‖g1‖²) g1`` with ``c = min(g1·g2, 0)``."""
    jac = np.random.default_rng(seed).normal(size=(2, 5))
    g1, g2 = jac
    c = min(g1 @ g2, 0.0)
    expected = g1 + g2 - c / (g2 @ g2) * g2 - c / (g1 @ g1) * g1
    np.testing.assert_allclose(apply("pcgrad", jac, jnp.float64, key=seed).updates, expected,
                               rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The train step: representation level and head weighting.


def one_step(name, *, level, weight_heads=None, dtype=jnp.float64, lr=0.1):
    tasks, loss, params, batch = make_problem(dtype=dtype)
    method = mtljax.get_method(name, len(tasks))
    opt = optax.sgd(lr)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, level=level,
                                          weight_heads=weight_heads))
    new_state, metrics = step(state, batch)
    return params, new_state.params, metrics, (tasks, loss, batch)


def reference_step(params, problem, rep_weights, head_weights, lr=0.1):
    """``shared ← shared − lr ∇_shared Σ w_t L_t`` and ``heads ← heads − lr ∇_heads Σ c_t L_t``
    with the weights held fixed (the chain rule of the representation-level step)."""
    tasks, loss, batch = problem

    def losses(p):
        raw, _ = loss.decode(p, loss.encode(p, batch), batch)
        return tasks.stack_losses(raw)

    shared = jax.grad(lambda p: losses(p) @ rep_weights)(params)["shared"]
    heads = jax.grad(lambda p: losses(p) @ head_weights)(params)["heads"]
    return jax.tree.map(lambda p, g: p - lr * g, params, {"shared": shared, "heads": heads})


def rep_gradients(params, problem):
    """``∂L_t/∂rep`` for every task, by ``jax.jacrev``: ``[T, B·H]``."""
    tasks, loss, batch = problem
    rep = loss.encode(params, batch)

    def losses(r):
        raw, _ = loss.decode(params, r, batch)
        return tasks.stack_losses(raw)

    return np.asarray(jax.jacrev(losses)(rep)).reshape(len(tasks), -1)


def test_representation_level_mgda_matches_hand_computation():
    params, new_params, metrics, problem = one_step("mgda", level="representation")
    rows = rep_gradients(params, problem)
    w = numpy_min_norm_weights(rows @ rows.T)
    np.testing.assert_allclose(metrics["weights"], w, atol=1e-4)
    # Gradient methods leave the heads unweighted by default: each head descends its own loss.
    expected = reference_step(params, problem, jnp.asarray(metrics["weights"]), jnp.ones(3))
    tree_allclose(new_params, expected, 1e-10, 1e-12)


@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_ew_level_free(level):
    """EW's update is the gradient of Σ L_t at either level (chain rule)."""
    params, new_params, _, problem = one_step("ew", level=level)
    expected = reference_step(params, problem, jnp.ones(3), jnp.ones(3))
    tree_allclose(new_params, expected, 1e-10, 1e-12)


@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("name, default_weighted", [("mean", True), ("mgda", False)])
@pytest.mark.parametrize("weight_heads", [None, True, False])
def test_head_weighting_convention(name, default_weighted, weight_heads, level):
    """Heads get ``Σ c_t ∇L_t`` with ``c = w`` when weighted, ``c = 1`` otherwise; the default
    weights heads for loss-only methods (Mean) and not for gradient methods (MGDA)."""
    params, new_params, metrics, problem = one_step(name, level=level, weight_heads=weight_heads)
    w = jnp.asarray(metrics["weights"])
    weighted = default_weighted if weight_heads is None else weight_heads
    expected = reference_step(params, problem, w, w if weighted else jnp.ones(3))
    tree_allclose(new_params["heads"], expected["heads"], 1e-10, 1e-12)
    tree_allclose(new_params["shared"], expected["shared"], 1e-10, 1e-12)
