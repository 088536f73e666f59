"""CAGrad, IMTL-G/IMTL, Nash-MTL, FairGrad and Aligned-MTL against independent NumPy/SciPy code."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares, minimize

import mtljax
from mtljax.methods import get_method

DTYPES = [jnp.float32, jnp.float64]
RTOL = {jnp.float32: 2e-3, jnp.float64: 1e-6}
NAMES = ["cagrad", "imtl_g", "imtl", "nash_mtl", "fairgrad", "aligned_mtl", "aligned_mtl_ub"]


def jacobian(seed, num_tasks=3, dim=7, spread=3.0):
    """A random full-rank J with row norms spread over about one decade."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_tasks, dim)) * rng.uniform(1.0, spread, size=(num_tasks, 1))


@functools.cache
def compiled(name, num_tasks, hparams):
    """The method and its jitted ``apply``, cached: each (method, hyper-parameters, shape,
    dtype) compiles once in the session (eager calls would recompile every solver loop)."""
    method = get_method(name, num_tasks, **dict(hparams))
    return method, jax.jit(method.apply)


def run(name, jac, dtype=jnp.float64, state=None, losses=None, **hparams):
    method, apply = compiled(name, jac.shape[0], tuple(sorted(hparams.items())))
    state = method.init(None) if state is None else state
    # Only IMTL reads the losses; passing them always keeps one trace per shape and dtype.
    losses = np.ones(jac.shape[0]) if losses is None else losses
    out = apply(jnp.asarray(jac, dtype), state, task_losses=jnp.asarray(losses, dtype))
    return np.asarray(out.weights, np.float64), np.asarray(out.updates, np.float64), out.state


def unit_rows(jac):
    return jac / np.linalg.norm(jac, axis=1, keepdims=True)


# ---------------------------------------------------------------- CAGrad


def cagrad_ref(jac, c, rescale):
    """The official recipe: SLSQP on the dual with the raw Gram matrix, then d = g0 + λ g_w."""
    t = jac.shape[0]
    gram = jac @ jac.T
    g0 = jac.mean(0)
    radius = c * np.linalg.norm(g0)
    b = gram.mean(1)

    def dual(w):
        return w @ b + radius * np.sqrt(w @ gram @ w)

    res = minimize(dual, np.full(t, 1.0 / t), method="SLSQP", bounds=[(0, 1)] * t,
                   constraints={"type": "eq", "fun": lambda w: 1 - w.sum()},
                   options={"ftol": 1e-15, "maxiter": 1000})
    gw = jac.T @ res.x
    d = g0 + radius / np.linalg.norm(gw) * gw
    return d / (1.0, 1.0 + c**2, 1.0 + c)[rescale], dual, res.x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("seed", "c", "rescale"), [(0, 0.4, 1), (1, 0.8, 0), (2, 0.5, 2)])
def test_cagrad_matches_scipy(seed, c, rescale, dtype):
    jac = jacobian(seed, num_tasks=4) + 1.5  # correlated rows: an interior dual solution
    jac[1] = -0.6 * jac[0] + 0.3 * jac[1]  # one conflict
    ref, dual, w_ref = cagrad_ref(jac, c, rescale)
    w, d, _ = run("cagrad", jac, dtype, c=c, rescale=rescale)
    np.testing.assert_allclose(d, ref, rtol=10 * RTOL[dtype], atol=10 * RTOL[dtype])
    # Recover the dual point from the weights: λ = (1/T + k w*) / rescale.
    w_star = w * (1.0, 1.0 + c**2, 1.0 + c)[rescale] - 1.0 / 4
    w_star /= w_star.sum()
    slack = RTOL[dtype] * (dtype == jnp.float32)
    assert dual(w_star) <= dual(w_ref) + 1e-9 * abs(dual(w_ref)) + slack


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_cagrad_c0_is_mean(rescale, dtype):
    jac = jacobian(3)
    w, d, _ = run("cagrad", jac, dtype, c=0.0, rescale=rescale)
    np.testing.assert_array_equal(w, np.full(3, 1.0 / 3, np.dtype(dtype)))
    np.testing.assert_allclose(d, jac.mean(0), rtol=RTOL[dtype])


def test_cagrad_improves_worst_task():
    """The conflict-averse update does at least as well as the mean on the worst task."""
    jac = np.array([[1.0, 0.2], [-0.8, 0.5], [0.1, 1.0]])
    _, d, _ = run("cagrad", jac, c=0.5, rescale=0)
    mean = jac.mean(0)
    assert (jac @ d).min() >= (jac @ mean).min() - 1e-12


# ---------------------------------------------------------------- IMTL


def imtl_g_ref(jac):
    """The paper's closed form α_{2:T} = g_1 Uᵀ (D Uᵀ)^{-1}, α_1 = 1 − Σ α_{2:T}."""
    u = unit_rows(jac)
    d_rows = jac[0] - jac[1:]
    u_rows = u[0] - u[1:]
    rest = jac[0] @ u_rows.T @ np.linalg.inv(d_rows @ u_rows.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_imtl_g_matches_paper_formula(seed, dtype):
    jac = jacobian(seed, num_tasks=4)
    w, d, _ = run("imtl_g", jac, dtype)
    np.testing.assert_allclose(w, imtl_g_ref(jac), rtol=RTOL[dtype], atol=RTOL[dtype])
    projections = unit_rows(jac) @ d
    np.testing.assert_allclose(projections, projections[0], rtol=RTOL[dtype])
    np.testing.assert_allclose(w.sum(), 1.0, rtol=RTOL[dtype])


def test_imtl_g_single_task_and_rank_deficient():
    assert run("imtl_g", np.array([[3.0, 4.0]]))[0].tolist() == [1.0]
    # Equal projections mean G α = c n (n_t = ‖g_t‖). A duplicated gradient (rank 2 of 3) keeps
    # n in the range of G: the pseudo-inverse gives equal projections, and splits the weight
    # of the duplicate evenly (the minimum-norm α).
    jac = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    w, d, _ = run("imtl_g", jac)
    projections = unit_rows(jac) @ d
    np.testing.assert_allclose(projections, projections[0], rtol=1e-9)
    np.testing.assert_allclose(w.sum(), 1.0)
    np.testing.assert_allclose(w[0], w[2], rtol=1e-9)
    # Three gradients in a plane with n outside the range of G: only d = 0 has equal
    # projections (u_1·d = u_2·d forces d ∝ (1, 1), then u_3·d = √2 u_1·d), which is what the
    # paper's closed form returns here (α = (2, 1, −2)). The pseudo-inverse generalisation
    # (Quinton & Rey; torchjd's IMTLG) instead returns the least-squares α ∝ G⁺ n: finite,
    # summing to 1, with G α the projection of n on the range of G, up to the factor 1/1ᵀG⁺n.
    jac = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    w, d, _ = run("imtl_g", jac)
    gram, norms = jac @ jac.T, np.linalg.norm(jac, axis=1)
    ref = np.linalg.pinv(gram) @ norms
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-9)
    assert np.all(np.isfinite(d))


def test_imtl_hybrid_scales_and_learns():
    jac = jacobian(4)
    losses = np.array([2.0, 0.5, 1.0])
    lr = 0.1
    w0, _, state = run("imtl", jac, losses=losses, lr=lr)
    np.testing.assert_allclose(w0, imtl_g_ref(jac), rtol=1e-9)  # s = 0: plain IMTL-G
    s = -lr * (losses - 1.0)
    np.testing.assert_allclose(state.log_scales, s, rtol=1e-12)
    w1, _, _ = run("imtl", jac, state=state, losses=losses, lr=lr)
    scaled = np.exp(s)[:, None] * jac
    np.testing.assert_allclose(w1, np.exp(s) * imtl_g_ref(scaled), rtol=1e-9)
    with pytest.raises(ValueError, match="task_losses"):
        get_method("imtl", 3).apply(jnp.asarray(jac), get_method("imtl", 3).init(None))


# ---------------------------------------------------------------- Nash-MTL and FairGrad


def fair_ref(jac, alpha):
    """Independent solve of G w = w^(−1/α), w > 0, by SciPy least squares from w = 1/T."""
    gram = jac @ jac.T
    t = jac.shape[0]
    res = least_squares(lambda w: gram @ w - w ** (-1.0 / alpha), np.full(t, 1.0 / t),
                        bounds=(0, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return res.x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_nash_mtl_solves_bargaining_system(seed, dtype):
    jac = jacobian(seed, num_tasks=4)
    ref = fair_ref(jac, 1.0)
    w, d, state = run("nash_mtl", jac, dtype, max_norm=0.0)
    np.testing.assert_allclose(w, ref, rtol=RTOL[dtype])
    np.testing.assert_allclose(np.linalg.norm(d), 2.0, rtol=RTOL[dtype])  # ‖d‖² = T
    np.testing.assert_allclose(state.alpha, ref, rtol=RTOL[dtype])
    # Default clip: the same direction with unit norm.
    w1, d1, _ = run("nash_mtl", jac, dtype)
    np.testing.assert_allclose(d1, d / 2.0, rtol=RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nash_mtl_two_tasks_is_normalised_unit_sum(dtype):
    jac = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    _, d, _ = run("nash_mtl", jac, dtype)
    u = unit_rows(jac).sum(0)
    np.testing.assert_allclose(d, u / np.linalg.norm(u), rtol=RTOL[dtype])
    np.testing.assert_allclose(d, [0.0542, 0.7061, 0.7061], atol=1e-4)  # torchjd's docstring


def test_nash_mtl_update_every_reuses_alpha():
    method = get_method("nash_mtl", 3, max_norm=0.0, update_weights_every=2)
    state = method.init(None)
    j1, j2 = jacobian(0), jacobian(1)
    out1 = method.apply(jnp.asarray(j1), state)
    out2 = method.apply(jnp.asarray(j2), out1.state)
    out3 = method.apply(jnp.asarray(j2), out2.state)
    np.testing.assert_allclose(out2.weights, out1.weights)
    np.testing.assert_allclose(out3.weights, fair_ref(j2, 1.0), rtol=1e-8)
    assert int(out3.state.step) == 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_satisfies_its_equation(alpha, dtype):
    jac = jacobian(5, num_tasks=4)
    w, d, _ = run("fairgrad", jac, dtype, alpha=alpha)
    np.testing.assert_allclose(w, fair_ref(jac, alpha), rtol=5 * RTOL[dtype])
    np.testing.assert_allclose(jac @ d, w ** (-1.0 / alpha), rtol=5 * RTOL[dtype])


def test_fairgrad_alpha1_is_unclipped_nash():
    jac = jacobian(6)
    np.testing.assert_allclose(run("fairgrad", jac)[0], run("nash_mtl", jac, max_norm=0.0)[0],
                               rtol=1e-10)


def test_fair_solver_is_scale_equivariant():
    jac = jacobian(7)
    for alpha in (0.5, 3.0):
        w = run("fairgrad", jac, alpha=alpha)[0]
        w_scaled = run("fairgrad", 1e3 * jac, alpha=alpha)[0]
        np.testing.assert_allclose(w_scaled, w * 1e6 ** (-alpha / (1 + alpha)), rtol=1e-9)


# ---------------------------------------------------------------- Aligned-MTL


def aligned_ref(jac, scale="min"):
    gram = jac @ jac.T
    lam, vec = np.linalg.eigh(gram)
    keep = lam > lam.max() * len(lam) * np.finfo(np.float64).eps
    lam, vec = lam[keep], vec[:, keep]
    sigma = {"min": lam.min(), "median": np.sort(lam)[(len(lam) - 1) // 2],
             "rmse": lam.mean()}[scale]
    return np.sqrt(sigma) * vec @ np.diag(lam**-0.5) @ vec.T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["min", "median", "rmse"])
def test_aligned_mtl_matches_reference(scale, dtype):
    jac = jacobian(8, num_tasks=4)
    balance = aligned_ref(jac, scale)
    w, d, _ = run("aligned_mtl", jac, dtype, scale=scale)
    np.testing.assert_allclose(w, balance.sum(1), rtol=RTOL[dtype])
    w_mean, _, _ = run("aligned_mtl", jac, dtype, scale=scale, reduction="mean")
    np.testing.assert_allclose(w_mean, w / 4, rtol=RTOL[dtype])


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_aligned_mtl_equalises_singular_values(rank_deficient):
    jac = jacobian(9, num_tasks=4)
    if rank_deficient:
        jac[3] = jac[0] + jac[1]
    balance = aligned_ref(jac)
    singular = np.linalg.svd(balance @ jac, compute_uv=False)
    rank = 3 if rank_deficient else 4
    np.testing.assert_allclose(singular[:rank], singular[0], rtol=1e-8)
    np.testing.assert_allclose(singular[rank:], 0.0, atol=1e-8)
    w, _, _ = run("aligned_mtl", jac)
    np.testing.assert_allclose(w, balance.sum(1), rtol=1e-8)


def test_aligned_mtl_ub_is_representation_level():
    assert get_method("aligned_mtl_ub", 2).level == "representation"
    assert get_method("aligned_mtl", 2).level == "parameters"


# ---------------------------------------------------------------- contract


def widen(jac, dim=7):
    """``J`` padded with zero columns to ``dim`` (the same Gram matrix, and the shape of
    :func:`jacobian`, so the cases share compilations)."""
    return np.pad(jac, ((0, 0), (0, dim - jac.shape[1])))


DEGENERATE = {
    "zero_row": widen(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])),
    "identical": widen(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])),
    "opposite": widen(np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0], [0.0, 1.0, 0.0]])),
    "low_rank": widen(np.outer([1.0, 2.0, -0.5], [1.0, -1.0, 2.0, 0.5])),
    "all_zero": np.zeros((3, 7)),
    "huge": 1e8 * jacobian(10),
    "tiny": 1e-8 * jacobian(10),
    "single": widen(np.array([[1.0, -2.0, 0.5]])),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_inputs_stay_finite(case):
    """Finite weights, update and state (float64 here; the property zoo of
    tests/test_method_properties.py runs the same degeneracies in float32 too)."""
    jac = DEGENERATE[case]
    for name in NAMES:
        w, d, state = run(name, jac)
        assert np.all(np.isfinite(w)) and np.all(np.isfinite(d)), (name, w, d)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_degenerate_documented_values():
    opposite = DEGENERATE["opposite"][:2]
    for name in ("imtl_g", "aligned_mtl"):
        np.testing.assert_allclose(run(name, opposite)[1], 0.0, atol=1e-12)
    assert np.linalg.norm(run("nash_mtl", opposite)[1]) <= 1.0 + 1e-12
    zero = DEGENERATE["zero_row"]
    for name in ("imtl_g", "nash_mtl", "fairgrad"):
        assert run(name, zero)[0][0] == 0.0
    assert run("aligned_mtl", DEGENERATE["all_zero"])[0].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(run("cagrad", DEGENERATE["all_zero"], rescale=0)[0], 1.0 / 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_jit_keeps_dtype_and_matches_eager(name, dtype):
    jac = jnp.asarray(jacobian(11), dtype)
    method = get_method(name, 3)
    state = method.init(None)
    losses = jnp.asarray([1.0, 2.0, 0.5], dtype)
    eager = method.apply(jac, state, task_losses=losses)
    _, jitted = compiled(name, 3, ())  # shared with the other tests: may hold other shapes
    out = jitted(jac, state, task_losses=losses)
    size = jitted._cache_size()
    out = jitted(jac, out.state, task_losses=losses)  # same shapes and dtypes: no retrace
    assert jitted._cache_size() == size
    assert out.updates.dtype == dtype
    first = jitted(jac, state, task_losses=losses)
    np.testing.assert_allclose(first.updates, eager.updates, rtol=RTOL[dtype], atol=1e-6)


@pytest.mark.parametrize(
    ("name", "hparams"),
    [("cagrad", {"c": -1.0}), ("cagrad", {"rescale": 3}), ("nash_mtl", {"max_iters": 0}),
     ("nash_mtl", {"update_weights_every": 0}), ("fairgrad", {"alpha": 0.0}),
     ("aligned_mtl", {"scale": "max"}), ("aligned_mtl", {"reduction": "prod"}),
     ("imtl", {"lr": 0.0})],
)
def test_invalid_hparams_raise(name, hparams):
    with pytest.raises(ValueError):
        get_method(name, 3, **hparams)


def test_aggregate_examples():
    j = np.array([[2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(mtljax.aggregate("nash_mtl", j), [2**-0.5, 2**-0.5])
    np.testing.assert_allclose(mtljax.aggregate("aligned_mtl", j), [1.0, 1.0])
    np.testing.assert_allclose(mtljax.aggregate("fairgrad", j), [1.0, 1.0])
