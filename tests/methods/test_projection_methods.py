"""UPGrad, DualProj, ConFIG and the dual-cone solver against independent NumPy references."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtljax.methods import get_method
from mtljax.solvers import _dual_cone
from mtljax.solvers._dual_cone import regularize_gram

# Jitted once per shape, dtype and hyper-parameters (eager calls recompile the solver's loop).
project_dual_cone = jax.jit(_dual_cone.project_dual_cone,
                            static_argnames=("reg_eps", "norm_eps", "max_iters"))

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-4, np.float64: 1e-9}


# ----------------------------------------------------------------------------- references


def np_regularize(gram, reg_eps=1e-4):
    trace = np.trace(gram)
    scaled = gram / trace if trace > 0 else np.zeros_like(gram)
    return scaled + reg_eps * np.eye(len(gram))


def np_dual_cone(gram, u, reg_eps=1e-4):
    """Exhaustive active set: the best feasible equality-constrained solution over all faces."""
    g = np_regularize(np.asarray(gram, np.float64), reg_eps)
    u = np.asarray(u, np.float64)
    t = len(u)
    best, best_value = None, np.inf
    for free in itertools.product([False, True], repeat=t):
        free = np.array(free)
        w = u.copy()
        if free.any():
            w[free] = np.linalg.solve(g[np.ix_(free, free)], -g[np.ix_(free, ~free)] @ u[~free])
        if np.all(w >= u - 1e-12) and w @ g @ w < best_value:
            best, best_value = w, w @ g @ w
    return best


def np_upgrad(jac, reduction="mean", pref=None, reg_eps=1e-4):
    t = len(jac)
    u = np.ones(t) if pref is None else np.asarray(pref, np.float64)
    u = u / t if reduction == "mean" else u
    gram = jac @ jac.T
    w = sum(np_dual_cone(gram, u[i] * np.eye(t)[i], reg_eps) for i in range(t))
    return w @ jac


def np_dualproj(jac, reduction="mean", reg_eps=1e-4):
    t = len(jac)
    u = np.ones(t) / (t if reduction == "mean" else 1)
    return np_dual_cone(jac @ jac.T, u, reg_eps) @ jac


def np_config(jac, pref=None):
    """ConFIG in parameter space, straight from the paper."""
    norms = np.linalg.norm(jac, axis=1, keepdims=True)
    unit = np.where(norms > 0, jac / np.where(norms > 0, norms, 1.0), 0.0)
    target = np.ones(len(jac)) if pref is None else np.asarray(pref, np.float64)
    x = np.linalg.pinv(unit) @ target
    if np.linalg.norm(x) == 0:
        return np.zeros(jac.shape[1])
    direction = x / np.linalg.norm(x)
    return np.sum(jac @ direction) * direction


# ----------------------------------------------------------------------------- helpers


@functools.cache
def compiled(name, num_tasks, hparams):
    """The method and its jitted ``apply``, cached: each (method, hyper-parameters, shape,
    dtype) compiles once in the session."""
    method = get_method(name, num_tasks, **dict(hparams))
    return method, jax.jit(method.apply)


def update(name, jac, dtype=np.float64, **hparams):
    jac = jnp.asarray(jac, dtype)
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, np.ndarray) else v)
                          for k, v in hparams.items()))
    method, apply = compiled(name, jac.shape[0], frozen)
    out = apply(jac, method.init(None))
    assert out.updates.dtype == dtype
    return np.asarray(out.updates, np.float64), np.asarray(out.weights, np.float64)


WIDTH = 10  # every zoo case is padded with zero columns to this width: shapes differ by T only


def zoo(seed=0):
    """Hand-made and random Jacobians, including the degenerate cases, ``[T, WIDTH]``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(4, 6))
    cases = {
        "random": base,
        "wide": rng.normal(size=(3, 10)),
        "conflicting": np.array([[1.0, 0.0, 0.0], [-0.9, 0.5, 0.0], [-0.2, -1.0, 0.3]]),
        "low_rank": rng.normal(size=(5, 2)) @ rng.normal(size=(2, 7)),
        "zero_row": np.vstack([base[:3], np.zeros((1, 6))]),
        "identical": np.vstack([base[:1]] * 3),
        "opposite": np.vstack([base[:1], -base[:1]]),
        "all_zero": np.zeros((3, 4)),
        "huge": 1e8 * base,
        "tiny": 1e-8 * base,
        "single": base[:1],
    }
    return {k: np.pad(j, ((0, 0), (0, WIDTH - j.shape[1]))) for k, j in cases.items()}


# ----------------------------------------------------------------------------- solver


@pytest.mark.parametrize("dtype", DTYPES)
def test_dual_cone_matches_exhaustive_active_set(dtype):
    rng = np.random.default_rng(1)
    solve = jax.jit(jax.vmap(_dual_cone.project_dual_cone, in_axes=(None, 0)))
    for trial in range(12):
        t = 2 + trial % 5
        jac = rng.normal(size=(t, 1 + trial % 4 + t // 2))
        if trial % 3 == 0:
            jac = jac + 4.0 * rng.normal(size=(1, jac.shape[1]))  # nearly collinear rows
        gram = jac @ jac.T
        starts = np.vstack([np.eye(t), np.abs(rng.normal(size=(2, t)))])
        got = np.asarray(solve(jnp.asarray(gram, dtype), jnp.asarray(starts, dtype)))
        want = np.stack([np_dual_cone(gram, u) for u in starts])
        assert np.all(got >= starts - 1e-7)
        np.testing.assert_allclose(got, want, atol=TOL[dtype] * 50, rtol=TOL[dtype] * 50)


def test_dual_cone_matches_scipy_and_kkt():
    from scipy.optimize import minimize

    rng = np.random.default_rng(2)
    jac = rng.normal(size=(8, 5))
    gram = jac @ jac.T
    u = np.abs(rng.normal(size=8))
    g = np_regularize(gram)
    ref = minimize(
        lambda w: w @ g @ w,
        u + 0.1,
        jac=lambda w: 2 * g @ w,
        bounds=[(x, None) for x in u],
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    ).x
    w = np.asarray(project_dual_cone(jnp.asarray(gram), jnp.asarray(u)))
    np.testing.assert_allclose(w, ref, atol=1e-5)
    multipliers = g @ w  # KKT: ≥ 0, and 0 where the bound is not tight
    assert multipliers.min() > -1e-12
    np.testing.assert_allclose(multipliers[w > u + 1e-9], 0.0, atol=1e-12)


def test_dual_cone_hand_made_and_degenerate():
    gram = jnp.array([[1.0, -0.5], [-0.5, 1.0]], jnp.float64)
    np.testing.assert_allclose(project_dual_cone(gram, jnp.array([1.0, 0.0]), reg_eps=0.0),
                               [1.0, 0.5])
    # Already non-conflicting: u itself. Zero Gram: u itself.
    np.testing.assert_allclose(project_dual_cone(jnp.eye(3), jnp.array([1.0, 2.0, 0.0])),
                               [1.0, 2.0, 0.0])
    np.testing.assert_allclose(project_dual_cone(jnp.zeros((3, 3)), jnp.array([1.0, 0.0, 2.0])),
                               [1.0, 0.0, 2.0])
    # Scale invariance of the trace normalisation, norm_eps as an absolute threshold.
    big = jnp.asarray(np.array([[2.0, -1.5], [-1.5, 3.0]]))
    u = jnp.array([1.0, 0.0])
    for scale in (1e-16, 1e16):
        np.testing.assert_allclose(project_dual_cone(scale * big, u), project_dual_cone(big, u),
                                   rtol=1e-12)
    np.testing.assert_allclose(project_dual_cone(1e-6 * big, u, norm_eps=1e-4), u)
    np.testing.assert_allclose(regularize_gram(big, reg_eps=0.5), big / 5.0 + 0.5 * np.eye(2))


# ----------------------------------------------------------------------------- golden values


@pytest.mark.parametrize("dtype", DTYPES)
def test_upgrad_and_dualproj_golden(dtype):
    # Hand-computed with reg_eps = 0: project g1 = (1, 0) and g2 = (-1, 1) onto the dual cone.
    jac = np.array([[1.0, 0.0], [-1.0, 1.0]])
    d, w = update("upgrad", jac, dtype, reg_eps=0.0)
    np.testing.assert_allclose(d, [0.25, 0.75], atol=TOL[dtype])
    np.testing.assert_allclose(w, [1.0, 0.75], atol=TOL[dtype])
    d, _ = update("dualproj", np.array([[1.0, 1.0], [-3.0, 0.0]]), dtype, reg_eps=0.0)
    np.testing.assert_allclose(d, [-0.75, 0.75], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["random", "wide", "conflicting", "low_rank", "zero_row"])
def test_upgrad_dualproj_match_reference(case, dtype):
    jac = zoo()[case]
    scale = np.abs(jac).max()
    d, _ = update("upgrad", jac, dtype)
    np.testing.assert_allclose(d, np_upgrad(jac), atol=TOL[dtype] * 20 * scale)
    d, _ = update("dualproj", jac, dtype)
    np.testing.assert_allclose(d, np_dualproj(jac), atol=TOL[dtype] * 20 * scale)


def test_preference_vector_and_reduction_conventions():
    jac = zoo()["conflicting"]
    pref = np.array([1.0, 2.0, 0.5])
    d_sum, _ = update("upgrad", jac, reduction="sum", pref_vector=pref)
    np.testing.assert_allclose(d_sum, np_upgrad(jac, reduction="sum", pref=pref), atol=1e-9)
    d_mean, _ = update("upgrad", jac)
    d_sum, _ = update("upgrad", jac, reduction="sum")
    np.testing.assert_allclose(d_sum, 3 * d_mean, atol=1e-12)
    d, _ = update("dualproj", jac, reduction="sum")
    np.testing.assert_allclose(d, np_dualproj(jac, reduction="sum"), atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["random", "wide", "conflicting", "low_rank", "zero_row"])
def test_config_matches_reference(case, dtype):
    jac = zoo()[case]
    scale = np.abs(jac).max() * len(jac)
    for least_squares in (True, False):
        d, w = update("config", jac, dtype, use_least_squares=least_squares)
        np.testing.assert_allclose(d, np_config(jac), atol=TOL[dtype] * 10 * scale)
        np.testing.assert_allclose(w @ jac, d, atol=TOL[dtype] * 10 * scale)


def test_config_golden_and_preferences():
    # Orthogonal gradients of norms 1 and 3: ū = (1, 1)/√2, length 4/√2.
    d, _ = update("config", np.array([[1.0, 0.0], [0.0, 3.0]]))
    np.testing.assert_allclose(d, [2.0, 2.0], atol=1e-12)
    jac = zoo()["conflicting"]
    pref = np.array([1.0, 2.0, 3.0])
    d, _ = update("config", jac, pref_vector=pref)
    np.testing.assert_allclose(d, np_config(jac, pref), atol=1e-9)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "config"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_conflicting(name, dtype):
    """J · d ≥ 0 up to round-off for ConFIG on independent gradients. With the default ridge
    the dual-cone methods only guarantee ``g_t · d ≥ −reg_eps · tr(G) · w_t``, tested as such
    (the exact projection, ``reg_eps = 0``, is non-conflicting on the whole property zoo:
    tests/method_table.py)."""
    roundoff = 1e-5 if dtype == np.float32 else 1e-12
    for case in ["random", "wide", "conflicting", "low_rank", "zero_row", "huge", "tiny"]:
        jac = zoo(3)[case]
        sq_scale = np.max(np.sum(jac**2, 1))
        if name == "config":
            if case in ("random", "low_rank", "zero_row"):
                continue  # ConFIG's guarantee needs linearly independent gradients
            d, _ = update(name, jac, dtype)
            assert np.all(jac @ d >= -roundoff * sq_scale), case
            continue
        d, w = update(name, jac, dtype)
        ridge = 1e-4 * np.trace(jac @ jac.T) * w
        assert np.all(jac @ d >= -ridge - roundoff * sq_scale), case


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_ridge_bias_against_a_small_gradient(name):
    """The documented cost of the ridge: a conflicting gradient 100× smaller than the other gets
    a cosine near −0.66 with the default reg_eps, and 0 with the exact projection."""
    jac = np.array([[1.0, 0.0], [-0.01, 0.005]])
    d, _ = update(name, jac)
    assert (jac[1] @ d) / (np.linalg.norm(jac[1]) * np.linalg.norm(d)) < -0.6
    d, _ = update(name, jac, reg_eps=0.0)
    assert jac[1] @ d >= -1e-12 * np.linalg.norm(jac[1]) * np.linalg.norm(d)


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "config"])
def test_permutation_equivariance_and_homogeneity(name):
    jac = zoo()["conflicting"]
    perm = np.array([2, 0, 1])
    d, w = update(name, jac)
    d_perm, w_perm = update(name, jac[perm])
    np.testing.assert_allclose(d_perm, d, atol=1e-10)
    np.testing.assert_allclose(w_perm, w[perm], atol=1e-10)
    for scale in (1e-6, 7.0, 1e6):
        d_scaled, _ = update(name, scale * jac)
        np.testing.assert_allclose(d_scaled, scale * d, rtol=1e-8, atol=1e-300)


def test_non_conflicting_gradients_give_the_mean():
    jac = np.array([[1.0, 0.2, 0.0], [0.3, 1.0, 0.1], [0.1, 0.1, 1.0]])
    for name in ("upgrad", "dualproj"):
        d, _ = update(name, jac)
        np.testing.assert_allclose(d, jac.mean(0), atol=1e-12)


@pytest.mark.parametrize("name", ["upgrad", "dualproj", "config"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_inputs_finite(name, dtype):
    # float32 runs at the shapes the other tests compile; the property zoo of
    # tests/test_method_properties.py covers the same degeneracies in float32 at T = 2 and 5.
    for case, jac in zoo().items():
        if dtype == np.float32 and jac.shape[0] not in (3, 4, 5):
            continue
        d, w = update(name, jac, dtype)
        assert np.all(np.isfinite(d)) and np.all(np.isfinite(w)), case
    d, _ = update(name, zoo()["all_zero"], dtype)
    np.testing.assert_array_equal(d, 0.0)
    if dtype == np.float64:
        single = zoo()["single"]
        np.testing.assert_allclose(update(name, single, dtype)[0], single[0], rtol=TOL[dtype])


def test_pytree_jit_no_recompile():
    rng = np.random.default_rng(4)
    tree = {"a": jnp.asarray(rng.normal(size=(3, 2, 2))), "b": jnp.asarray(rng.normal(size=(3, 5)))}
    flat = np.concatenate([np.asarray(tree["a"]).reshape(3, -1), np.asarray(tree["b"])], 1)
    method = get_method("upgrad", 3)
    apply = jax.jit(method.apply)
    out = apply(tree, method.init(None))
    apply(jax.tree.map(lambda x: 2 * x, tree), out.state)
    assert apply._cache_size() == 1
    got = np.concatenate([np.asarray(out.updates["a"]).reshape(-1), np.asarray(out.updates["b"])])
    np.testing.assert_allclose(got, np_upgrad(flat), atol=1e-9)


def test_validation():
    with pytest.raises(ValueError, match="reduction"):
        get_method("upgrad", 3, reduction="max")
    with pytest.raises(ValueError, match="pref_vector"):
        get_method("dualproj", 3, pref_vector=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="pref_vector"):
        get_method("upgrad", 3, pref_vector=[1.0, 1.0])
    with pytest.raises(ValueError, match="reg_eps"):
        get_method("upgrad", 3, reg_eps=-1.0)
    with pytest.raises(ValueError, match="pref_vector"):
        get_method("config", 2, pref_vector=[1.0, 0.0])
