"""Solver-based methods meet their optimality conditions, on adversarial Gram matrices up to T = 40.

Each Gram-space method whose weights solve an optimisation problem is run through its public
``gram_weights`` on a batch of Gram matrices (``jax.vmap``: one compilation per method, T and
dtype) and checked two ways:

* against the optimality (KKT) conditions of its problem, evaluated in float64 NumPy on the
  Gram matrix the method was given (after its cast to the tested dtype);
* against an independent float64 reference solver (``scipy.optimize``: Lawson-Hanson NNLS,
  MINPACK Levenberg-Marquardt, SLSQP), compared on the *update* ``d = Jᵀw``, which is unique
  even where ``w`` is not (duplicated rows, T > P).

Problems (``w`` the weights, ``G = JJᵀ``, ``Δ`` the simplex, ``s = max_t G_tt``, ``Ĝ = G / s``):

* MGDA: ``min_{w∈Δ} wᵀGw``. KKT: ``w ∈ Δ`` and ``(Ĝw)_t ≥ wᵀĜw − τ ‖ĝ_t‖`` for every t (the
  solver's documented stopping test, ``τ = 10 T eps``), with equality on the support.
* DualProj: ``min_{w ≥ u} wᵀG̃w``, ``G̃ = G / tr G + reg_eps I``. KKT: ``w ≥ u``,
  ``(G̃w)_t ≥ 0``, ``= 0`` where ``w_t > u_t``. UPGrad is the sum of these projections over
  ``u = e_t / T``.
* Nash-MTL (no clip) and FairGrad: ``G w = w^(−1/α)``, ``w > 0`` on the non-zero rows, i.e.
  ``w_t^(1/α) (Gw)_t = 1``.
* CAGrad: its dual ``min_{w∈Δ} F(w) = wᵀG1/T + c‖g0‖ ‖Jᵀw‖``. Its duality gap with the primal
  ``max_{‖d − g0‖ ≤ c‖g0‖} min_t g_t·d`` at ``d(w) = g0 + c‖g0‖ Jᵀw / ‖Jᵀw‖`` is
  ``Σ_t w_t (Jd)_t − min_t (Jd)_t`` (the Frank-Wolfe gap of F, since ``∇F(w) = J d(w)``).

The zoo of Jacobians (:func:`zoo`) has T ≤ P and T > P Gaussians, rank-2 matrices, duplicated
rows, zero rows, rows whose norms span twelve decades, exactly opposite rows, clusters of
nearly parallel rows and near-opposite pairs with a short extra row (the shortest gradient then
leaves MGDA's corral: the case a wrong choice of the corral's reference vertex gets wrong).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import mtljax

EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


# ---------------------------------------------------------------------------------------------
# The zoo.


def zoo(num_tasks: int, seed: int, *, pointed: bool = False) -> list[tuple[str, np.ndarray]]:
    """Named ``[T, P]`` float64 Jacobians; ``pointed``: only those with no non-negative
    combination of rows equal to 0 other than through zero rows (where Nash-MTL, FairGrad and
    CAGrad's conflict-averse direction are defined); T > P rows then share a positive column."""
    t = num_tasks
    rng = np.random.default_rng(seed)

    def gauss(p):
        return rng.normal(size=(t, p))

    def positive_column(j):
        j = j.copy()
        j[:, 0] = np.abs(j[:, 0]) + 1.0
        return j

    wide, narrow = 2 * t + 1, max(1, t // 3)
    rank = min(2, t)
    out = [
        ("gauss", gauss(wide)),
        ("t_gt_p", gauss(narrow) if not pointed else positive_column(gauss(narrow + 1))),
        ("rank2", rng.normal(size=(t, rank)) @ rng.normal(size=(rank, wide))),
        ("scales", gauss(wide) * 10.0 ** rng.uniform(-6, 6, size=(t, 1))),
        ("cluster", rng.normal(size=(1, wide)) + 0.05 * gauss(wide)),
    ]
    dup = gauss(wide)
    dup[1::3] = dup[0::3][: len(dup[1::3])]
    out.append(("duplicates", dup))
    zero = gauss(wide)
    zero[::4] = 0.0
    out.append(("zero_rows", zero))
    if pointed:
        out[2] = ("rank2", positive_column(out[2][1]))
        return out
    opposite = gauss(wide)
    opposite[1] = -opposite[0]
    out.append(("opposite", opposite))
    # Near-opposite pairs g, −g + noise (their hulls pass close to 0) plus shorter rows
    # elsewhere: the shortest gradient, where MGDA's solver starts, is not in the solution.
    pairs = gauss(wide)
    half = t // 2
    pairs[half : 2 * half] = -pairs[:half] + 0.1 * rng.normal(size=(half, wide))
    pairs[2 * half :] *= 0.5
    if t % 2 == 0 and t > 2:
        pairs[-1] *= 0.3
    out.append(("near_opposite", pairs))
    return out


def grams(cases, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``([N, T, T] Gram matrices in dtype, the same cast back to float64)``."""
    g = np.stack([j @ j.T for _, j in cases]).astype(dtype)
    return g, g.astype(np.float64)


@functools.cache
def compiled(name: str, num_tasks: int, dtype: str, hparams: tuple):
    """``jit(vmap(gram_weights))`` from the method's initial state: ``[N, T, T] -> [N, T]``."""
    method = mtljax.get_method(name, num_tasks, **dict(hparams))
    state = method.init(jnp.zeros((1,), dtype))
    return jax.jit(jax.vmap(lambda g: method.gram_weights(g, state)[0]))


def weights(name: str, num_tasks: int, g: np.ndarray, **hparams) -> np.ndarray:
    fn = compiled(name, num_tasks, str(g.dtype), tuple(sorted(hparams.items())))
    w = np.asarray(fn(jnp.asarray(g)), np.float64)
    assert w.shape == g.shape[:2] and np.all(np.isfinite(w))
    return w


def d_distance(g: np.ndarray, w: np.ndarray, w_ref: np.ndarray) -> float:
    """``‖Jᵀw − Jᵀw_ref‖`` from G."""
    diff = w - w_ref
    return float(np.sqrt(max(diff @ g @ diff, 0.0)))


def case_ids(cases, num_tasks):
    return [f"T={num_tasks}:{name}" for name, _ in cases]


# ---------------------------------------------------------------------------------------------
# MGDA: the min-norm point of the convex hull.


def min_norm_reference(jac: np.ndarray) -> np.ndarray:
    """``argmin_{w∈Δ} ‖Jᵀw‖²`` by NNLS: ``min_{u≥0} ‖Jᵀu‖² + (Σu − 1)²`` is ``a/(1 + a)`` at
    ``u = w/(1 + a)``, ``a = ‖Jᵀw‖²``, increasing in ``a``, so ``w = u / Σu``."""
    t = jac.shape[0]
    scale = max(np.max(np.linalg.norm(jac, axis=1)), 1e-300)
    system = np.vstack([jac.T / scale, np.ones((1, t))])
    target = np.zeros(system.shape[0])
    target[-1] = 1.0
    u, _ = optimize.nnls(system, target, maxiter=100 * t)
    return u / u.sum()


def min_norm_gap(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``wᵀĜw − (Ĝw)_t`` for every t (the KKT residual; ≤ 0 where dual feasible)."""
    gn = g / max(np.max(np.diag(g)), 1e-300)
    gw = gn @ w
    return w @ gw - gw


# (dtype, T): float64 at a small, a middle and the largest T; float32 at a middle T.
MGDA_CASES = [("float64", 3), ("float64", 7), ("float64", 40), ("float32", 7)]


@pytest.mark.parametrize("dtype, num_tasks", MGDA_CASES)
def test_mgda_min_norm_point(dtype, num_tasks):
    """KKT of ``min_{w∈Δ} wᵀGw`` and the reference's update.

    Tolerances: the solver stops when ``(Ĝw)_t ≥ wᵀĜw − τ‖ĝ_t‖``, ``τ = 10 T eps``; we allow
    ``2τ`` (the residual recomputed in float64 from the solver's rounded w). On the support
    the affine solve makes the residual vanish to the same order. The update's distance to the
    reference's is at most ``√(2 gap)`` (min-norm point of a convex set: ``‖x − x*‖² ≤
    ‖x‖² − ‖x*‖² ≤ 2 max_t (wᵀĜw − (Ĝw)_t)``), summed over both solutions, plus round-off.
    """
    cases = [c for seed in range(3) for c in zoo(num_tasks, 100 * num_tasks + seed)]
    g, g64 = grams(cases, dtype)
    w = weights("mgda", num_tasks, g)
    tau = 2 * 10 * num_tasks * EPS[dtype]
    for label, (_, jac), gi, wi in zip(case_ids(cases, num_tasks), cases, g64, w, strict=True):
        scale = np.max(np.diag(gi))
        if scale == 0.0:
            continue
        norms = np.sqrt(np.clip(np.diag(gi), 0.0, None) / scale)
        assert np.all(wi >= 0.0), (label, wi.min())
        np.testing.assert_allclose(wi.sum(), 1.0, rtol=0, atol=num_tasks * EPS[dtype],
                                   err_msg=label)
        gap = min_norm_gap(gi, wi)
        assert np.all(gap <= tau * norms), (label, np.max(gap / np.maximum(norms, 1e-300)))
        support = wi > 0.0
        assert np.all(np.abs(gap[support]) <= tau * np.maximum(norms[support], 1e-3)), label
        w_ref = min_norm_reference(jac)
        gap_ref = min_norm_gap(gi, w_ref)
        bound = (np.sqrt(2 * max(gap.max(), 0.0)) + np.sqrt(2 * max(gap_ref.max(), 0.0))
                 + 64 * EPS[dtype]) * np.sqrt(scale)
        assert d_distance(gi, wi, w_ref) <= bound, (label, d_distance(gi, wi, w_ref) / bound)


# ---------------------------------------------------------------------------------------------
# DualProj and UPGrad: projections onto the dual cone {x : Jx ≥ 0}.


def regularized(g: np.ndarray, reg_eps: float) -> np.ndarray:
    """``G / tr G + reg_eps I`` (``reg_eps I`` for the zero matrix), as the methods define it."""
    trace = np.trace(g)
    scaled = g / trace if trace > np.finfo(np.float64).tiny else np.zeros_like(g)
    return scaled + reg_eps * np.eye(len(g))


def projection_reference(jac: np.ndarray, u: np.ndarray, reg_eps: float) -> np.ndarray:
    """``argmin_{w ≥ u} wᵀG̃w`` by NNLS in ``z = w − u``: ``min_{z≥0} ‖A(u + z)‖²`` with
    ``A = [Jᵀ/√tr G; √reg_eps I]``, so that ``AᵀA = G̃``."""
    t = jac.shape[0]
    trace = float(np.sum(jac**2))
    top = jac.T / np.sqrt(trace) if trace > 0 else np.zeros_like(jac.T)
    system = np.vstack([top, np.sqrt(reg_eps) * np.eye(t)])
    z, _ = optimize.nnls(system, -system @ u, maxiter=100 * t)
    return u + z


def projection_residual(gt: np.ndarray, w: np.ndarray, u: np.ndarray, dtype: str):
    """``(G̃w, δ, free)``: the KKT residual, the solver's stated round-off bound on it
    (``64 eps ‖ĝ_t‖ Σ_k ‖ĝ_k‖ |w_k|``, doubled for our float64 re-evaluation) and ``w > u``."""
    norms = np.sqrt(np.diag(gt))
    delta = 2 * 64 * EPS[dtype] * np.maximum(norms * (norms @ np.abs(w)), 1e-300)
    return gt @ w, delta, w > u


# (dtype, T, reg_eps): the default ridge at T = 40, the exact projection (reg_eps = 0, whose
# problem is singular on rank-deficient J) at T = 13, and float32.
PROJECTION_CASES = [("float64", 40, 1e-4), ("float64", 13, 0.0), ("float32", 13, 1e-4)]


@pytest.mark.parametrize("dtype, num_tasks, reg_eps", PROJECTION_CASES)
def test_dualproj_and_upgrad_project_onto_the_dual_cone(dtype, num_tasks, reg_eps):
    """DualProj: KKT of ``min_{w ≥ u} wᵀG̃w`` (``u = 1/T``) and the NNLS reference.
    UPGrad: the sum of the reference projections of ``e_t / T`` over t (its definition).

    The updates are compared in the norm of the regularised problem, ``‖A(w − w_ref)‖``
    relative to ``‖A w_ref‖`` (plus ``‖A u‖`` for a zero projection): an active-set solve is
    exact up to the round-off of the free set's Cholesky solve, so ``1e-9`` in float64 and
    ``1e-3`` in float32 (a Gram matrix whose rows span decades keeps few float32 digits of
    the small rows: ``T eps`` times the condition number of the free set).
    """
    cases = [c for seed in range(2) for c in zoo(num_tasks, 200 * num_tasks + seed)]
    g, g64 = grams(cases, dtype)
    dual = weights("dualproj", num_tasks, g, reg_eps=reg_eps)
    up = weights("upgrad", num_tasks, g, reg_eps=reg_eps)
    u = np.full(num_tasks, 1.0 / num_tasks).astype(dtype).astype(np.float64)  # as the solver's
    rtol = {"float32": 1e-3, "float64": 1e-9}[dtype]
    labels = case_ids(cases, num_tasks)
    for label, (_, jac), gi, wd, wu in zip(labels, cases, g64, dual, up, strict=True):
        gt = regularized(gi, reg_eps)
        assert np.all(wd >= u), label
        residual, delta, free = projection_residual(gt, wd, u, dtype)
        assert np.all(residual >= -delta), (label, np.min(residual / delta))
        assert np.all(np.abs(residual[free]) <= delta[free]), label

        def norm(a, gt=gt):
            return np.sqrt(max(a @ gt @ a, 0.0))

        w_ref = projection_reference(jac, u, reg_eps)
        # G̃ has trace ≈ 1: 64 eps is the round-off floor of a vanishing projection.
        size = rtol * (norm(w_ref) + norm(u)) + 64 * EPS[dtype]
        assert norm(wd - w_ref) <= size, (label, norm(wd - w_ref) / size)
        up_ref = sum(projection_reference(jac, row, reg_eps) for row in np.diag(u))
        size = rtol * (norm(up_ref) + norm(u)) + 64 * EPS[dtype]
        assert norm(wu - up_ref) <= size, (label, norm(wu - up_ref) / size)
        # Non-conflicting up to the ridge's bias: g_t·d ≥ −reg_eps tr(G) w_t (UPGrad's doc).
        trace = np.trace(gi)
        assert np.all(gi @ wu >= -(reg_eps * wu + num_tasks * delta) * trace), label


# ---------------------------------------------------------------------------------------------
# Nash-MTL and FairGrad: the α-fair allocation G w = w^(−1/α).


def fair_system(g: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(G + 10 T eps diag(G), active)``: the system the solver documents solving. Rows with
    ``G_tt ≤ eps² s`` count as zero (``s = max_t G_tt``); the ridge ``10 T eps G_tt`` on each
    row keeps the potential bounded. It shifts equation t by ``10 T eps G_tt w_t^(1+1/α)``."""
    eps, scale = EPS[dtype], np.max(np.diag(g))
    active = np.diag(g) > eps**2 * scale
    return g + 10 * len(g) * eps * np.diag(np.diag(g)), active


def fair_reference(g: np.ndarray, active: np.ndarray, alpha: float) -> np.ndarray:
    """``G w = w^(−1/α)`` on the active rows (others: 0), float64 NumPy: Newton's method on
    the strictly convex potential ``f(w) = ½ wᵀGw − Σ h(w)``, ``h' = w^(−1/α)`` (its unique
    minimiser is the solution), from ``w = 1``, staying in ``w > 0``, backtracking on ``f``, on
    G divided by its largest diagonal entry (then ``w = ŵ s^(−α/(1+α))``)."""
    scale = np.max(np.diag(g))
    gn = (g / scale)[np.ix_(active, active)]
    power = 1.0 / alpha

    def potential(w):
        h = np.log(w) if alpha == 1.0 else w ** (1 - power) / (1 - power)
        return 0.5 * w @ gn @ w - h.sum()

    w = np.ones(len(gn))
    for _ in range(200):
        grad = gn @ w - w ** (-power)
        step = np.linalg.solve(gn + np.diag(power * w ** (-power - 1)), -grad)
        if -grad @ step < 1e-30:
            break
        shrinking = step < 0
        size = min(1.0, 0.99 * np.min(-w[shrinking] / step[shrinking], initial=np.inf))
        while potential(w + size * step) > potential(w) and size > 1e-16:
            size /= 2
        w = w + size * step

    def residual(w):
        return np.max(np.abs(w**power * (gn @ w) - 1.0))

    # The backtracking on f stalls once f's changes fall under its round-off (rows decades
    # shorter than the largest barely move f): finish with full Newton steps while they
    # reduce the system's residual (quadratic convergence from there).
    for _ in range(20):
        new = w + np.linalg.solve(gn + np.diag(power * w ** (-power - 1)), w ** (-power) - gn @ w)
        if np.any(new <= 0.0) or residual(new) >= residual(w):
            break
        w = new
    out = np.zeros(len(g))
    out[active] = w * scale ** (-alpha / (1 + alpha))
    return out


# (name, hparams, alpha, dtype, T). Nash-MTL without its norm clip is FairGrad at α = 1.
FAIR_CASES = [
    ("nash_mtl", {"max_norm": 0.0}, 1.0, "float64", 40),
    ("nash_mtl", {"max_norm": 0.0}, 1.0, "float32", 9),
    ("fairgrad", {"alpha": 2.0}, 2.0, "float64", 9),
    ("fairgrad", {"alpha": 0.5}, 0.5, "float64", 3),
]


@pytest.mark.parametrize("name, hparams, alpha, dtype, num_tasks", FAIR_CASES)
def test_alpha_fair_weights_solve_their_system(name, hparams, alpha, dtype, num_tasks):
    """``w_t^(1/α) (Gw)_t = 1`` on the non-zero rows, ``w_t = 0`` on zero rows, and the
    reference's weights. Problems where the system has a solution (no non-negative
    combination of non-zero rows vanishes: :func:`zoo` with ``pointed``).

    Tolerances: the Newton solver stops at a squared decrement of ``10 T eps``; the residual
    of a converged Newton iterate is then round-off, ``~T eps κ`` with κ the condition number of
    the (Jacobi-scaled) Hessian, which for rows spanning twelve decades and clusters of nearly
    parallel rows reaches ~1e4 here: ``1e-8`` in float64, ``2e-2`` in float32.
    """
    cases = [c for seed in range(3) for c in zoo(num_tasks, 300 * num_tasks + seed, pointed=True)]
    g, g64 = grams(cases, dtype)
    w = weights(name, num_tasks, g, **hparams)
    rtol = {"float32": 2e-2, "float64": 1e-8}[dtype]
    for label, gi, wi in zip(case_ids(cases, num_tasks), g64, w, strict=True):
        system, active = fair_system(gi, dtype)
        assert np.all(wi[~active] == 0.0), label
        assert np.all(wi[active] > 0.0), label
        product = wi[active] ** (1.0 / alpha) * (system @ wi)[active]
        np.testing.assert_allclose(product, 1.0, rtol=rtol, err_msg=label)
        # The ridge's shift is ~10 T eps on these problems, so the system without it holds
        # to the same tolerance (a ridge T eps s did not: rows with G_tt near T eps s, which
        # the norms spanning twelve decades have, were off by O(1)).
        raw = wi[active] ** (1.0 / alpha) * (gi @ wi)[active]
        np.testing.assert_allclose(raw, 1.0, rtol=rtol, err_msg=label)
        reference = fair_reference(system, active, alpha)
        # The weights' error is the residual's times the system's conditioning (duplicated
        # rows, clusters): one decade more.
        np.testing.assert_allclose(wi, reference, rtol=10 * rtol, err_msg=label)


# ---------------------------------------------------------------------------------------------
# CAGrad: the dual of the conflict-averse problem.


def cagrad_reference(g: np.ndarray, c: float) -> np.ndarray:
    """The dual's minimiser on the simplex by SLSQP (normalised G), float64."""
    gn = g / np.max(np.diag(g))
    t = len(g)
    b = gn @ np.full(t, 1.0 / t)
    radius = c * np.sqrt(b.sum() / t)

    def dual(w):
        return w @ b + radius * np.sqrt(max(w @ gn @ w, 0.0))

    def grad(w):
        return b + radius * (gn @ w) / np.sqrt(max(w @ gn @ w, 1e-300))

    sol = optimize.minimize(dual, np.full(t, 1.0 / t), jac=grad, method="SLSQP",
                            bounds=[(0.0, 1.0)] * t, options={"ftol": 1e-16, "maxiter": 1000},
                            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                          "jac": lambda w: np.ones_like(w)}])
    return sol.x


def cagrad_direction(g: np.ndarray, w: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """``λ`` with ``d(w) = Jᵀλ = g0 + c‖g0‖ Jᵀw/‖Jᵀw‖`` (un-rescaled), and ``‖Jᵀw‖``."""
    t = len(g)
    mean = np.full(t, 1.0 / t)
    radius = c * np.sqrt(max(mean @ g @ mean, 0.0))
    norm = np.sqrt(max(w @ g @ w, 0.0))
    return mean + radius * w / norm, norm


@pytest.mark.parametrize("dtype, num_tasks", [("float64", 12), ("float32", 12)])
def test_cagrad_dual_is_optimal(dtype, num_tasks):
    """CAGrad (``rescale=0``) returns ``λ = 1/T + (c‖g0‖/‖Jᵀw‖) w``, from which ``w ∈ Δ`` is
    recovered; the duality gap ``Σ_t w_t (Jd)_t − min_t (Jd)_t`` at ``d = Jᵀλ`` (exactly the
    primal-dual gap, ``‖d − g0‖ = c‖g0‖`` being primal feasible) vanishes, and the primal value
    ``min_t (Jd)_t`` equals the optimal value of the reference's dual.

    Tolerances, relative to ``‖g0‖ max_t ‖g_t‖`` (the dual is solved on G divided by its
    largest diagonal entry): the solver stops at a gradient-mapping norm of ``1e-7``, so the gap
    is ``O(1e-7)``; we allow ``1e-6`` (measured: ``4.4e-7`` in float64). In float32 that norm
    is at round-off: the dual's gradient ``J d`` (entries up to ``(1 + c)`` in these units) is
    known to about an ulp, ``1.8e-7``, and the solver's tests, which read gradients only, take
    the gap to a few ulps (measured: ``4.3e-7``): ``1e-6`` is ~5 ulps. The update itself is
    not compared: with rows spanning decades the near-optimal set of the dual is wide at that
    resolution (two updates 50% apart reach the same value to 1e-7). Zero rows are left out:
    ``0`` is then in the hull of the rows, the conflict-averse direction can be undefined and
    CAGrad documents ``d = g0``.
    """
    c = 0.5
    cases = [case for seed in range(2) for case in zoo(num_tasks, 400 * num_tasks + seed,
                                                       pointed=True) if case[0] != "zero_rows"]
    g, g64 = grams(cases, dtype)
    lam = weights("cagrad", num_tasks, g, c=c, rescale=0)
    mean = np.full(num_tasks, 1.0 / num_tasks)
    for label, gi, li in zip(case_ids(cases, num_tasks), g64, lam, strict=True):
        scale = np.sqrt(max(mean @ gi @ mean, 0.0) * np.max(np.diag(gi)))
        coef = li.sum() - 1.0  # Σλ = 1 + c‖g0‖/‖Jᵀw‖ since Σw = 1
        assert coef > 0.0, label
        w = (li - mean) / coef
        assert np.all(w >= -1e-6), (label, w.min())
        lam_w, _ = cagrad_direction(gi, w, c)
        np.testing.assert_allclose(li, lam_w, rtol=1e-5, atol=1e-6 / num_tasks, err_msg=label)
        gains = gi @ li  # J d
        gap = w @ gains - gains.min()
        assert gap <= 1e-6 * scale, (label, gap / scale)
        w_ref = cagrad_reference(gi, c)
        lam_ref, _ = cagrad_direction(gi, w_ref, c)
        optimum = w_ref @ (gi @ lam_ref)  # F(w_ref) = Σ_t w_t (J d(w_ref))_t
        assert abs(gains.min() - optimum) <= 1e-6 * scale, (label, gains.min(), optimum)
