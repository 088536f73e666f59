"""Solvers over the probability simplex Δ = {w ∈ R^T : w ≥ 0, Σ w = 1}.

``min_norm_simplex`` finds the min-norm point of the convex hull of the task gradients,
``argmin_{w∈Δ} wᵀ G w``, exactly in finitely many steps by Wolfe's min-norm-point algorithm run
in Gram space (Wolfe, Math. Programming 1976); from ``T = SCREEN_FROM`` on, accelerated projected
gradient and active-set rounds on a screened set of vertices first bring it close to the
solution, so that Wolfe's loop (one ``T × T`` factorisation per corral change) has little left
to do. ``project_simplex`` is the Euclidean projection onto Δ (Duchi et al., ICML 2008).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve

from mtljax.solvers._mask import restrict_gram, task_support

# From this many tasks on, min_norm_simplex screens the vertices first (each corral change of
# Wolfe's loop refactorises a T × T matrix), with SCREEN_STEPS accelerated gradient steps.
SCREEN_FROM = 64
SCREEN_STEPS = 200


def normalize_gram(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(G / s, s)`` with ``s`` the largest diagonal entry (1 when G is zero).

    Simplex-constrained minimisers of ``wᵀ G w`` do not change under positive scaling of G;
    dividing by ``s`` keeps huge and tiny gradients in a range where tolerances mean the same.
    """
    scale = jnp.max(jnp.diagonal(gram))
    tiny = jnp.finfo(gram.dtype).tiny
    scale = jnp.where(scale > tiny, scale, jnp.ones_like(scale))
    return gram / scale, scale


def min_norm_simplex(
    gram: jax.Array,
    *,
    max_iters: int | None = None,
    tol: float | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Min-norm point of the convex hull of the rows of J, from ``G = J Jᵀ``.

    Solves ``min_{w ∈ Δ} wᵀ G w`` (G normalised by its largest diagonal entry) by Wolfe's algorithm.
    It keeps a *corral* S of affinely independent vertices and ``x = Jᵀw`` in their convex hull.
    Each iteration solves for the min-norm point ``Jᵀv`` of the affine hull of S (one T×T Cholesky
    solve of the normal equations in the differences ``g_i − g_k`` to the corral's shortest
    gradient, positive definite exactly when S is affinely independent). If ``v`` lies inside the
    hull (``v > 0`` on S), ``x = v`` and the vertex ``t ∉ S`` with the smallest ``(G w)_t`` joins S
    when ``(G w)_t < wᵀGw − tol ‖g_t‖`` (norms normalised by the largest); when no vertex passes the
    test the algorithm stops. If ``v`` leaves the hull, ``w`` moves towards ``v`` until a weight
    hits 0 and that vertex leaves S. Every step lowers ``‖x‖`` and no corral repeats, so the loop
    ends after a few T steps (``3T + 10`` is the budget) with
    ``g_t · d ≥ ‖d‖² − tol ‖g_t‖ max_s ‖g_s‖`` for every task: non-conflicting to round-off,
    also at Pareto-stationary points where ``d = 0`` (where Frank-Wolfe only converges
    sublinearly).

    From ``T = SCREEN_FROM`` on (instance-wise rows), where each corral change refactorises a
    large matrix, the vertices are screened first (:func:`_screened_wolfe`): accelerated
    projected gradient on the simplex finds an approximate minimiser, active-set rounds and
    Wolfe's loop run from its support on the ``3T/4`` most promising vertices, and the test is
    then checked on every vertex; only if it fails does the loop continue on the whole problem
    (from the first vertex if the screened loop did not converge). The result meets the same
    test either way.

    Args:
      gram: ``[T, T]`` positive semi-definite matrix.
      max_iters: budget of solves (``3T + 10`` by default); the result is on the simplex
        whenever the budget runs out.
      tol: relative tolerance of the stopping test (see above); ``10 K eps`` of the dtype by
        default (round-off level; K the number of present tasks).
      mask: optional ``[T]`` bool support: the hull of the present rows only (absent rows and
        columns of G are ignored, whatever they hold); the result is the solve on the present
        tasks' Gram matrix, with 0 on the absent ones. None: every task.

    Returns:
      ``[T]`` weights on the simplex (of the present tasks); uniform over the present tasks
      when their Gram matrix is zero, all 0 when no task is present.

    Example:
      >>> import jax.numpy as jnp
      >>> w = min_norm_simplex(jnp.array([[1.0, -1.0], [-1.0, 4.0]]))
      >>> [round(x, 4) for x in w.tolist()]  # (5/7, 2/7)
      [0.7143, 0.2857]

    References:
      Wolfe, "Finding the nearest point in a polytope", Math. Programming 11, 1976.
      Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm", SIAM J. Imaging
      Sci., 2009.
    """
    t = gram.shape[0]
    mask = task_support(mask, t)
    gram = restrict_gram(gram, mask)
    g, _ = normalize_gram(gram)
    budget = 3 * t + 10 if max_iters is None else max_iters
    count = jnp.sum(mask).astype(g.dtype)
    tol = 10 * count * jnp.finfo(g.dtype).eps if tol is None else tol
    # The stopping test of vertex t is scaled by ‖g_t‖ (normalised): the round-off of (G w)_t is
    # proportional to it, and it keeps the gradients many decades smaller than the largest one
    # exactly non-conflicting too: g_t · d ≥ ‖d‖² − tol ‖g_t‖ max_s ‖g_s‖.
    slack = tol * jnp.sqrt(jnp.clip(jnp.diagonal(g), 0.0))
    if t < SCREEN_FROM:
        w, _ = _wolfe(g, mask, slack, budget, *_first_vertex(g, mask))
    else:
        w = _screened_wolfe(g, mask, slack, budget)
    zero = jnp.max(jnp.diagonal(gram)) <= jnp.finfo(g.dtype).tiny
    uniform = jnp.where(mask, 1.0 / jnp.maximum(count, 1.0), 0.0)
    return jnp.where(zero, uniform, jnp.where(mask, w, 0.0))


def _first_vertex(g, mask):
    """Wolfe's start: the corral and weights of the shortest present gradient."""
    t = g.shape[0]
    first = jnp.argmin(jnp.where(mask, jnp.diagonal(g), jnp.inf))
    return jnp.arange(t) == first, jax.nn.one_hot(first, t, dtype=g.dtype)


def _affine_min_norm(g, corral):
    """Weights of the min-norm point of the affine hull of the ``corral``'s vertices."""
    t = g.shape[0]
    # x = g_k + Σ_{i∈B} λ_i (g_i − g_k) over B = S \ {k}, k the corral's shortest gradient:
    # the normal equations M λ = −b, M_ij = (g_i − g_k)·(g_j − g_k), b_i = (g_i − g_k)·g_k,
    # are positive definite exactly when S is affinely independent, and (Cholesky being
    # invariant to diagonal scaling) stay accurate when the corral mixes gradients many
    # decades apart in norm. Rows and columns outside B are those of the identity.
    k = jnp.argmin(jnp.where(corral, jnp.diagonal(g), jnp.inf))
    col = g[:, k]
    basis = corral & (jnp.arange(t) != k)
    m = g - col[:, None] - col[None, :] + g[k, k]
    system = jnp.where(jnp.outer(basis, basis), m, jnp.eye(t, dtype=g.dtype))
    rhs = jnp.where(basis, g[k, k] - col, 0.0)
    factor = cho_factor(system)
    lam = cho_solve(factor, rhs)
    # One step of iterative refinement removes the square roots' rounding (exact 1/2s).
    lam = lam + cho_solve(factor, rhs - system @ lam)
    lam = jnp.where(basis, lam, 0.0)
    return lam + jax.nn.one_hot(k, t, dtype=g.dtype) * (1.0 - jnp.sum(lam))


def _wolfe(g, mask, slack, budget, corral, w):
    """Wolfe's loop (see :func:`min_norm_simplex`) from an affinely independent ``corral``
    holding ``w`` (on the simplex, positive exactly on the corral); returns ``(w, whether it
    stopped on the optimality test)``."""
    t = g.shape[0]

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < budget) & ~done

    def body(carry):
        i, corral, w, _, _ = carry
        v = _affine_min_norm(g, corral)
        inside = jnp.all(jnp.where(corral, v > 0.0, True))
        # Inside: x = v, then add the vertex that most violates the optimality test.
        gv = g @ v
        violation = jnp.where(~corral & mask & (gv < v @ gv - slack), gv, jnp.inf)
        optimal = jnp.all(jnp.isinf(violation))
        grown = corral | (jnp.arange(t) == jnp.argmin(violation)) & ~optimal
        # Outside: move from w towards v until a weight of the corral reaches 0, drop it.
        leaving = corral & (v <= 0.0)
        ratios = jnp.where(leaving, w / jnp.where(leaving, w - v, 1.0), jnp.inf)
        step = jnp.clip(jnp.min(ratios), 0.0, 1.0)
        stepped = jnp.where(corral, w + step * (v - w), 0.0)
        shrunk = corral & (stepped > 0.0) & ~(leaving & (ratios <= step))
        stepped = jnp.where(shrunk, stepped, 0.0)
        new_w = jnp.where(inside, v, stepped / jnp.sum(stepped))
        new_corral = jnp.where(inside, grown, shrunk)
        # A non-finite solve means round-off made the corral affinely dependent: stop at w.
        finite = jnp.all(jnp.isfinite(v))
        w = jnp.where(finite, new_w, w)
        corral = jnp.where(finite, new_corral, corral)
        return i + 1, corral, w, (inside & optimal) | ~finite, inside & optimal & finite

    false = jnp.array(False)
    _, _, w, _, converged = lax.while_loop(cond, body, (0, corral, w, false, false))
    return w, converged


def _screened_wolfe(g, mask, slack, budget):
    """Wolfe's loop on screened vertices, checked on all of them (see :func:`min_norm_simplex`).

    Accelerated projected gradient gives ``w̃ ≈ w*``; the ``m = 3T/4`` candidates are the
    support of ``w̃`` (by weight), then the vertices with the smallest ``(G w̃)_t``. Active-set
    rounds on the candidates (:func:`_support_rounds`) correct the support of ``w̃`` many
    vertices at a time, and Wolfe's loop finishes from there (an affinely dependent support
    makes its solve non-finite: it then stops and fails the check below). Supports near
    ``T/2`` vertices occur (per-sample gradients with a shared direction), hence ``3T/4``.
    """
    t = g.shape[0]
    m = max(SCREEN_FROM, 3 * t // 4)
    approx = _accelerated_simplex(g, mask, SCREEN_STEPS)
    priority = jnp.where(approx > 0.0, 2.0 + approx, -(g @ approx))
    _, idx = lax.top_k(jnp.where(mask, priority, -jnp.inf), m)
    sub, sub_mask = g[idx[:, None], idx[None, :]], mask[idx]
    corral = _support_rounds(sub, sub_mask, slack[idx], sub_mask & (approx[idx] > 0.0))
    start = jnp.where(corral, jnp.maximum(_affine_min_norm(sub, corral), 0.0), 0.0)
    start = start / jnp.maximum(jnp.sum(start), jnp.finfo(g.dtype).tiny)
    sub_w, converged = _wolfe(sub, sub_mask, slack[idx], budget, start > 0.0, start)
    w = jnp.zeros((t,), g.dtype).at[idx].set(sub_w)
    # The candidates passed Wolfe's test; the other vertices are checked here.
    gw = g @ w
    outside = jnp.ones((t,), bool).at[idx].set(False) & mask
    optimal = converged & jnp.all(~outside | (gw >= w @ gw - slack))
    # Otherwise Wolfe's loop runs on every vertex: from the candidates' solution when that
    # converged (only the missing vertices remain to add), else from the first vertex.
    first_corral, first_w = _first_vertex(g, mask)
    corral = jnp.where(converged, w > 0.0, first_corral)
    start = jnp.where(converged, w, first_w)
    return lax.cond(optimal, lambda: w, lambda: _wolfe(g, mask, slack, budget, corral, start)[0])


def _support_rounds(g, mask, slack, corral, rounds: int = 8):
    """Primal-dual active-set rounds for the simplex QP from ``corral``: each solves for the
    affine min-norm point ``v`` of the corral, drops every vertex with ``v_i ≤ 0`` and adds
    every vertex failing Wolfe's test at ``v``, until the corral stops changing. Not monotone
    (Wolfe's loop, which follows, is): a round with a non-finite solve changes nothing."""

    def cond(carry):
        i, _, changed = carry
        return (i < rounds) & changed

    def body(carry):
        i, corral, _ = carry
        v = _affine_min_norm(g, corral)
        gv = g @ v
        new = (corral & (v > 0.0)) | (~corral & mask & (gv < v @ gv - slack))
        new = jnp.where(jnp.all(jnp.isfinite(v)) & jnp.any(new), new, corral)
        return i + 1, new, jnp.any(new != corral)

    _, corral, _ = lax.while_loop(cond, body, (0, corral, jnp.array(True)))
    return corral


def _accelerated_simplex(g, mask, steps):
    """``steps`` of FISTA with gradient restart on ``min_{w∈Δ} ½ wᵀGw`` from the barycentre.

    The step ``1/L`` uses ``L = 1.5 λ̂`` (``λ̂`` from 20 power iterations, capped by the bound
    ``‖G‖_F``): only a screen, its accuracy is not relied on.
    """
    x = jnp.where(mask, 1.0, 0.0).astype(g.dtype)
    for _ in range(20):
        x = g @ x
        x = x / jnp.maximum(jnp.linalg.norm(x), jnp.finfo(g.dtype).tiny)
    lipschitz = jnp.minimum(1.5 * x @ (g @ x), jnp.linalg.norm(g))
    step = 1.0 / jnp.maximum(lipschitz, jnp.finfo(g.dtype).tiny)

    def body(_, carry):
        w, x, k = carry
        w_new = project_simplex(x - step * (g @ x), mask=mask)
        restart = jnp.sum((x - w_new) * (w_new - w)) > 0.0
        k_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * k * k)))
        beta = jnp.where(restart, 0.0, (k - 1.0) / k_new)
        return w_new, w_new + beta * (w_new - w), k_new

    w0 = project_simplex(jnp.zeros((g.shape[0],), g.dtype), mask=mask)
    w, _, _ = lax.fori_loop(0, steps, body, (w0, w0, jnp.ones((), g.dtype)))
    return w


def project_simplex(
    v: jax.Array, radius: float = 1.0, *, mask: jax.Array | None = None
) -> jax.Array:
    """Euclidean projection of ``v`` onto ``{w ≥ 0, Σ w = radius}`` (sort-based, O(T log T)).

    With a ``[T]`` bool ``mask`` the simplex is that of the present entries (absent entries of
    ``v`` are ignored and set to 0): the projection of the present entries alone. No present
    entry gives all 0.
    """
    t = v.shape[0]
    mask = task_support(mask, t)
    # Absent entries sort last (-inf) and are never counted in the threshold.
    u = jnp.sort(jnp.where(mask, v, -jnp.inf))[::-1]
    css = jnp.cumsum(jnp.where(jnp.isfinite(u), u, 0.0)) - radius
    idx = jnp.arange(1, t + 1, dtype=v.dtype)
    rho = jnp.max(jnp.where(u - css / idx > 0, jnp.arange(t), 0))
    theta = css[rho] / (rho + 1).astype(v.dtype)
    return jnp.where(mask, jnp.maximum(v - theta, 0.0), 0.0)
