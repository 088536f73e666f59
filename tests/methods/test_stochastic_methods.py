"""MoCo, SDMGrad, MoDo, DB-MTL, ExcessMTL and CR-MOGM against NumPy references.

Each reference below is written from the paper's update formulas on a flat ``[T, P]`` matrix,
independently of the library; the tests run several steps on a fixed sequence of hand-made
Jacobians (a two-leaf tree) in float32 and float64 and compare weights and updates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import minimize
from toy import make_problem
from trees import as_tree, flat

import mtljax
from mtljax.methods import MethodOutput, get_method

STEPS = 4
T = 3


def jacobians(seed, steps=STEPS, num_tasks=T, conflict=True):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(num_tasks, 5))
    if conflict:
        base[1] = -0.6 * base[0] + 0.4 * base[1]
    return [base + 0.3 * rng.normal(size=base.shape) for _ in range(steps)]


def noisy_copies(js, seed):
    """Two further mini-batches' Jacobians per step: the same gradients plus noise."""
    rng = np.random.default_rng(seed)
    return [tuple(j + 0.3 * rng.normal(size=j.shape) for _ in range(2)) for j in js]


LOSSES = [np.array([1.5, 0.2, 3.0])[:T] * (0.9**k) for k in range(STEPS)]


def np_project_simplex(v):
    """Euclidean projection onto the simplex by bisection on the threshold."""
    lo, hi = np.min(v) - 1.0, np.max(v)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(v - mid, 0.0).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    return np.maximum(v - 0.5 * (lo + hi), 0.0)


def run_method(name, dtype, js, losses=None, extra=None, **hparams):
    """Runs ``len(js)`` jitted steps; returns the last (weights, flat update)."""
    method = get_method(name, js[0].shape[0], **hparams)
    params = jax.tree.map(lambda x: x[0], as_tree(js[0], dtype))
    state = method.init(params)
    step = jax.jit(lambda j, s, kw: method.apply(j, s, params, **kw))
    for k, j in enumerate(js):
        kw = {}
        if losses is not None:
            kw["task_losses"] = jnp.asarray(losses[k], dtype)
        if extra is not None:
            kw["extra_per_task_grads"] = tuple(as_tree(e, dtype) for e in extra[k])
        out = step(as_tree(j, dtype), state, kw)
        state = out.state
    for leaf in jax.tree.leaves(out.updates):
        assert leaf.dtype == dtype
    return np.asarray(out.weights, np.float64), flat(out.updates)


def tolerance(dtype):
    return {"rtol": 2e-4, "atol": 2e-5} if dtype == jnp.float32 else {"rtol": 1e-9, "atol": 1e-11}


DTYPES = [jnp.float32, jnp.float64]


# --- MoCo ---------------------------------------------------------------------------------


def np_moco(js, losses, ema_rate=0.5, ema_rate_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0,
            normalization="none", simplex_map="projection"):
    num_tasks = js[0].shape[0]
    y = np.zeros_like(js[0])
    lam = np.full(num_tasks, 1.0 / num_tasks)
    for k, j in enumerate(js, start=1):
        if normalization == "loss":
            j = j / (np.linalg.norm(j, axis=1, keepdims=True) + 1e-8) * losses[k - 1][:, None]
        y = y - ema_rate / k**ema_rate_sigma * (y - j)
        v = lam - gamma / k**gamma_sigma * (y @ y.T + rho * np.eye(num_tasks)) @ lam
        lam = np.exp(v) / np.exp(v).sum() if simplex_map == "softmax" else np_project_simplex(v)
    return lam, y.T @ lam


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "hparams",
    [{}, {"gamma": 0.5, "rho": 0.1, "ema_rate_sigma": 0.0}, {"normalization": "loss",
                                                           "simplex_map": "softmax"}],
)
def test_moco_matches_reference(dtype, hparams):
    js = jacobians(0)
    weights, update = run_method("moco", dtype, js, losses=LOSSES, **hparams)
    ref_w, ref_d = np_moco(js, LOSSES, **hparams)
    np.testing.assert_allclose(weights, ref_w, **tolerance(dtype))
    np.testing.assert_allclose(update, ref_d, **tolerance(dtype))
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)


# --- SDMGrad ------------------------------------------------------------------------------


def np_sdmgrad(js, extras, lamda=0.3, max_iters=20, lr=5.0, momentum=0.0):
    num_tasks = js[0].shape[0]
    w = np.full(num_tasks, 1.0 / num_tasks)
    for xi, xi_prime in extras:
        c = xi @ xi_prime.T
        c = c / np.mean(np.sqrt(np.clip(np.diag(c), 0.0, None))) ** 2
        v = np.zeros(num_tasks)
        for _ in range(max_iters):
            v = momentum * v + c @ (w + lamda / num_tasks)
            w = np_project_simplex(w - lr * v)
        weights = (w + lamda / num_tasks) / (1.0 + lamda)
    return weights, js[-1].T @ weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "hparams", [{}, {"lamda": 0.0, "momentum": 0.5, "lr": 1.0, "max_iters": 7}]
)
def test_sdmgrad_matches_reference(dtype, hparams):
    js = jacobians(1)
    extras = noisy_copies(js, seed=10)
    weights, update = run_method("sdmgrad", dtype, js, extra=extras, **hparams)
    ref_w, ref_d = np_sdmgrad(js, extras, **hparams)
    np.testing.assert_allclose(weights, ref_w, **tolerance(dtype))
    np.testing.assert_allclose(update, ref_d, **tolerance(dtype))
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)


def test_sdmgrad_zero_lamda_is_mgda_on_exact_gradients():
    # With ξ = ξ' = ζ the inner problem is MGDA's dual: enough iterations reach its solution,
    # the (unique) min-norm point of the convex hull of the gradients.
    j = jacobians(2, steps=1)[0]
    _, update = run_method("sdmgrad", jnp.float64, [j], extra=[(j, j)], lamda=0.0, max_iters=3000,
                           lr=0.2)
    gram = j @ j.T
    ref = minimize(lambda w: w @ gram @ w, np.full(T, 1.0 / T), jac=lambda w: 2 * gram @ w,
                   bounds=[(0.0, 1.0)] * T, tol=1e-14,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}])
    np.testing.assert_allclose(update, j.T @ ref.x, atol=1e-6)


# --- MoDo ---------------------------------------------------------------------------------


def np_modo(js, extras, gamma=1e-3, rho=0.1):
    num_tasks = js[0].shape[0]
    lam = np.full(num_tasks, 1.0 / num_tasks)
    for z1, z2 in extras:
        lam = np_project_simplex(lam - gamma * (z1 @ z2.T @ lam + rho * lam))
    return lam, js[-1].T @ lam


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hparams", [{}, {"gamma": 0.2, "rho": 0.0}])
def test_modo_matches_reference(dtype, hparams):
    js = jacobians(3)
    extras = noisy_copies(js, seed=30)
    weights, update = run_method("modo", dtype, js, extra=extras, **hparams)
    ref_w, ref_d = np_modo(js, extras, **hparams)
    np.testing.assert_allclose(weights, ref_w, **tolerance(dtype))
    np.testing.assert_allclose(update, ref_d, **tolerance(dtype))


# --- DB-MTL -------------------------------------------------------------------------------


def np_db_mtl(js, losses, beta=0.9, beta_sigma=0.5):
    ema = np.zeros_like(js[0])
    for k, (j, loss) in enumerate(zip(js, losses, strict=True), start=1):
        log_grads = j / (loss[:, None] + 1e-8)
        beta_k = beta / k**beta_sigma
        ema = beta_k * ema + (1.0 - beta_k) * log_grads
    norms = np.linalg.norm(ema, axis=1)
    alpha = norms.max() / norms  # the paper's α (no zero rows here)
    return alpha, ema.T @ alpha


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hparams", [{}, {"beta": 0.5, "beta_sigma": 0.0}])
def test_db_mtl_matches_reference(dtype, hparams):
    js = jacobians(4)
    weights, update = run_method("db_mtl", dtype, js, losses=LOSSES, **hparams)
    ref_w, ref_d = np_db_mtl(js, LOSSES, **hparams)
    np.testing.assert_allclose(weights, ref_w, **tolerance(dtype))
    np.testing.assert_allclose(update, ref_d, **tolerance(dtype))


def test_db_mtl_balances_magnitudes():
    # Every averaged log-loss gradient enters the update with the largest one's norm.
    js = [np.diag([1.0, 10.0, 0.1]) @ jacobians(5, steps=1)[0]]
    alpha, _ = run_method("db_mtl", jnp.float64, js, losses=[np.ones(T)], beta=0.0)
    scaled = np.linalg.norm(js[0], axis=1) * alpha
    np.testing.assert_allclose(scaled, scaled.max(), rtol=1e-6)


# --- ExcessMTL ----------------------------------------------------------------------------


def np_excess_mtl(js, robust_step_size=1.0, reduction="mean"):
    num_tasks = js[0].shape[0]
    acc = np.zeros_like(js[0])
    w = np.full(num_tasks, 1.0 / num_tasks)
    baseline = None
    for j in js:
        acc = acc + j**2
        risk = np.sum(j**2 / np.sqrt(acc + 1e-7), axis=1)
        if baseline is None:
            baseline = risk
        else:
            w = w * np.exp(robust_step_size * risk / baseline)
            w = w / w.sum()
    w = w * (num_tasks if reduction == "sum" else 1.0)
    return w, js[-1].T @ w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hparams", [{}, {"robust_step_size": 0.3, "reduction": "sum"}])
def test_excess_mtl_matches_reference(dtype, hparams):
    rng = np.random.default_rng(6)
    # Task 0 converges (shrinking gradients), task 2 does not: its weight must grow.
    js = [np.diag([0.5**k, 1.0, 1.5]) @ rng.normal(size=(T, 5)) for k in range(STEPS + 2)]
    weights, update = run_method("excess_mtl", dtype, js, **hparams)
    ref_w, ref_d = np_excess_mtl(js, **hparams)
    np.testing.assert_allclose(weights, ref_w, **tolerance(dtype))
    np.testing.assert_allclose(update, ref_d, **tolerance(dtype))
    assert weights[0] < weights[2]


def test_excess_mtl_first_step_is_uniform():
    weights, _ = run_method("excess_mtl", jnp.float64, jacobians(7, steps=1))
    np.testing.assert_allclose(weights, np.full(T, 1.0 / T))


# --- CR-MOGM ------------------------------------------------------------------------------


def np_mgda_two(j):
    """Closed-form MGDA weights for two tasks (Sener & Koltun, Algorithm 1)."""
    g1, g2 = j
    diff = g1 - g2
    gamma = np.clip((g2 - g1) @ g2 / (diff @ diff), 0.0, 1.0)
    return np.array([gamma, 1.0 - gamma])


def np_cr_mogm(js, beta):
    lam = None
    for j in js:
        fresh = np_mgda_two(j)
        lam = fresh if lam is None else beta * lam + (1.0 - beta) * fresh
    return lam, js[-1].T @ lam


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_cr_mogm_matches_reference(dtype, beta):
    js = jacobians(8, num_tasks=2)
    weights, update = run_method("cr_mogm", dtype, js, beta=beta, max_iters=1000, tol=1e-12)
    ref_w, ref_d = np_cr_mogm(js, beta)
    tol = {"rtol": 2e-4, "atol": 2e-5} if dtype == jnp.float32 else {"rtol": 1e-6, "atol": 1e-7}
    np.testing.assert_allclose(weights, ref_w, **tol)
    np.testing.assert_allclose(update, ref_d, **tol)


def test_cr_mogm_keeps_base_state_and_batches():
    method = get_method("cr_mogm", T, base="sdmgrad", beta=0.5)
    assert method.num_batches == 3
    js = jacobians(9)
    extras = [(j, j) for j in js]
    weights, _ = run_method("cr_mogm", jnp.float64, js, extra=extras, base="sdmgrad", beta=0.5)
    np.testing.assert_allclose(weights.sum(), 1.0)


def test_cr_mogm_rejects_bases_without_weights(monkeypatch):
    from mtljax.methods import _cr_mogm

    inner = get_method("ew", T)

    def no_weights(j, s, p=None, **kw):
        return MethodOutput(inner.apply(j, s, p, **kw).updates, s, None)

    fake = mtljax.methods.gradient_transform("fake", T, inner.init, no_weights)
    monkeypatch.setattr(_cr_mogm, "get_method", lambda *a, **k: fake)
    method = _cr_mogm.cr_mogm(T, base="fake")
    j = as_tree(jacobians(0)[0], jnp.float32)
    with pytest.raises(ValueError, match="returns weights=None"):
        method.apply(j, method.init(jax.tree.map(lambda x: x[0], j)))


# --- Contract: degenerate inputs, jit, errors ---------------------------------------------

NAMES = ["moco", "sdmgrad", "modo", "db_mtl", "excess_mtl", "cr_mogm"]


def degenerate_zoo():
    rng = np.random.default_rng(11)
    g = rng.normal(size=5)
    return {
        "zero_rows": np.stack([np.zeros(5), g, np.zeros(5)]),
        "identical": np.stack([g, g, g]),
        "opposite": np.stack([g, -g, 0.5 * g]),
        "rank_one": np.outer([1.0, -2.0, 3.0], g),
        "huge": 1e8 * rng.normal(size=(3, 5)),
        "tiny": 1e-8 * rng.normal(size=(3, 5)),
        "all_zero": np.zeros((3, 5)),
        "one_task": g[None],
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs_stay_finite(name, dtype):
    steppers = {}
    for case, j in degenerate_zoo().items():
        num_tasks = j.shape[0]
        if num_tasks not in steppers:
            method = get_method(name, num_tasks)
            params = jax.tree.map(lambda x: x[0], as_tree(j, dtype))
            steppers[num_tasks] = (
                method, params, jax.jit(lambda j, s, kw, m=method, p=params: m.apply(j, s, p, **kw))
            )
        method, params, step = steppers[num_tasks]
        tree = as_tree(j, dtype)
        kw = {"task_losses": jnp.linspace(0.0, 2.0, num_tasks, dtype=dtype)}  # a zero loss
        if method.num_batches == 3:
            kw["extra_per_task_grads"] = (tree, tree)
        state = method.init(params)
        for _ in range(3):
            out = step(tree, state, kw)
            state = out.state
        assert out.weights.shape == (num_tasks,), case
        assert np.all(np.isfinite(out.weights)), case
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out.updates)), case


@pytest.mark.parametrize("name", NAMES)
def test_jit_traces_once(name):
    method = get_method(name, T)
    j = as_tree(jacobians(0)[0], jnp.float32)
    params = jax.tree.map(lambda x: x[0], j)
    traces = []

    def step(j, s):
        traces.append(None)
        return method.update(
            j, s, params, task_losses=jnp.ones(T, jnp.float32), extra_per_task_grads=(j, j)
        )

    jitted = jax.jit(step)
    _, state = jitted(j, method.init(params))
    _, state = jitted(j, state)
    _, state = jitted(j, state)
    assert len(traces) == 1


@pytest.mark.parametrize("name", ["sdmgrad", "modo"])
def test_double_sampling_needs_extra_batches(name):
    method = get_method(name, T)
    j = as_tree(jacobians(0)[0], jnp.float32)
    with pytest.raises(ValueError, match="extra_per_task_grads"):
        method.apply(j, method.init(jax.tree.map(lambda x: x[0], j)))


def test_db_mtl_needs_losses():
    method = get_method("db_mtl", T)
    j = as_tree(jacobians(0)[0], jnp.float32)
    with pytest.raises(ValueError, match="task_losses"):
        method.apply(j, method.init(jax.tree.map(lambda x: x[0], j)))


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("moco", {"ema_rate": 0.0}),
        ("moco", {"simplex_map": "exp"}),
        ("sdmgrad", {"lamda": -1.0}),
        ("sdmgrad", {"max_iters": 2.5}),
        ("modo", {"gamma": 0.0}),
        ("db_mtl", {"beta": 1.0}),
        ("excess_mtl", {"robust_step_size": -1.0}),
        ("excess_mtl", {"reduction": "max"}),
        ("cr_mogm", {"beta": 1.0}),
    ],
)
def test_invalid_hparams_raise(name, hparams):
    with pytest.raises(ValueError):
        get_method(name, T, **hparams)


# --- End to end through the train step ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("sdmgrad", {}),
        ("modo", {"gamma": 0.1}),
        ("moco", {}),
        ("db_mtl", {}),
        ("excess_mtl", {}),
        ("cr_mogm", {}),
    ],
)
def test_losses_decrease_in_train_step(name, hparams):
    tasks, loss, params, batch = make_problem()
    method = get_method(name, len(tasks), **hparams)
    if method.num_batches > 1:
        batch = (batch,) + tuple(make_problem(seed=s)[3] for s in (1, 2))
    opt = optax.sgd(0.1)
    state = mtljax.init_train_state(params, opt, method)
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt))
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(np.asarray(metrics["losses"]))
    assert np.all(losses[-1] < losses[0])
