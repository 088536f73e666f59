"""The α-fair allocation system ``G w = w^(−1/α)``, ``w > 0`` (Nash-MTL at α = 1, FairGrad).

The system is the stationarity condition of the strictly convex

    f(w) = ½ wᵀ G w − Σ_t h(w_t),   h(w) = log w (α = 1),  h(w) = w^(1−1/α) / (1 − 1/α) (α ≠ 1),

since ``h'(w) = w^(−1/α)`` and ``h'' < 0``. ``alpha_fair_weights`` minimises ``f`` by Newton's
method with a fraction-to-the-boundary rule (``w`` stays positive) and a vectorised Armijo
backtracking, on the Gram matrix divided by its largest diagonal entry ``s``; the solution is
mapped back with ``w = ŵ · s^(−α/(1+α))``, which is exact because the system is homogeneous.

Degenerate Gram matrices: rows with ``G_tt ≤ eps² · max_t G_tt`` (zero gradients, up to
round-off) get weight 0 and leave the system. When ``G`` has a positive null vector (e.g. two
exactly opposite gradients) the system has no solution (``f`` is unbounded below); a ridge
``10 · T · eps · G_tt`` on each active row keeps ``f`` bounded (``G`` plus a positive diagonal
is positive definite), so the weights stay finite (``1/(‖g_t‖ sqrt(10 T eps))`` for two
opposite rows) and ``Jᵀ w`` is ≈ 0 along the cancelling directions. It is ten times the
round-off of ``G`` (``T eps G_tt`` per row): a smaller ridge leaves the cancelling component of
the weights to round-off. It is per row, not relative to ``s``: a ridge ``T · eps · s`` biased
rows with ``G_tt`` near ``T eps s`` by O(1); this one shifts equation t by
``10 T eps G_tt w_t^(1+1/α)``, ``10 T eps`` for orthogonal rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.solvers._mask import restrict_gram, task_support
from mtljax.solvers._simplex import normalize_gram

_NUM_BACKTRACKS = 30
_ARMIJO = 0.25


def alpha_fair_weights(
    gram: jax.Array,
    *,
    alpha: float = 1.0,
    init: jax.Array | None = None,
    max_iters: int = 20,
    tol: float | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Solves ``G w = w^(−1/α)`` for ``w > 0`` (element-wise power) by damped Newton.

    Args:
      gram: ``[T, T]`` positive semi-definite Gram matrix.
      alpha: fairness exponent ``α > 0`` (1: proportional fairness, the Nash bargaining
        solution of Nash-MTL).
      init: optional ``[T]`` warm start in the units of ``gram`` (e.g. the previous step's
        weights); non-positive or non-finite entries fall back to the cold start
        ``w_t = G_tt^(−α/(1+α))``, the exact solution for orthogonal gradients.
      max_iters: Newton iteration budget.
      tol: stop when the squared Newton decrement (in normalised units) is below ``tol``;
        defaults to ``10 · K · eps`` of the dtype (K present tasks).
      mask: optional ``[T]`` bool support: the system of the present tasks only (absent rows
        and columns of G, whatever they hold, are ignored; ``T`` in the ridge and the default
        ``tol`` becomes K). Absent tasks get weight 0, like zero rows.

    Returns:
      ``[T]`` non-negative weights (0 exactly on zero rows and absent tasks).
    """
    mask = task_support(mask, gram.shape[0])
    g, scale = normalize_gram(restrict_gram(gram, mask))
    dtype = g.dtype
    t = jnp.sum(mask).astype(dtype)
    eps = jnp.finfo(dtype).eps
    tol = 10.0 * t * eps if tol is None else tol
    power = 1.0 / alpha  # e, with h'(w) = w^(−e)
    back = 1.0 / (1.0 + power)  # α/(1+α): w = ŵ · s^(−back)

    diag = jnp.diagonal(g)
    active = (diag > eps**2) & mask
    both = active[:, None] & active[None, :]
    # Zero rows become decoupled unit equations (solution 1), masked to 0 at the end. The
    # ridge is relative to each row (see the module docstring).
    ridge = 10.0 * t * eps * diag
    g = jnp.where(both, g, 0.0) + jnp.diag(jnp.where(active, ridge, 1.0))

    def h(w):
        if alpha == 1.0:
            return jnp.log(w)
        return w ** (1.0 - power) / (1.0 - power)

    def objective(w):
        # Over the active rows only: the decoupled ones sit at their solution 1 and must not
        # shift f (the Armijo slack is relative to |f|), so the present tasks' solve is the
        # same whatever the number of absent or zero rows.
        active_w = jnp.where(active, w, 0.0)
        return 0.5 * active_w @ g @ active_w - jnp.sum(jnp.where(active, h(w), 0.0))

    cold = jnp.diagonal(g) ** (-back)
    if init is None:
        w0 = cold
    else:
        warm = init.astype(dtype) * scale**back
        w0 = jnp.where(jnp.isfinite(warm) & (warm > 0) & active, warm, cold)

    steps = 0.5 ** jnp.arange(_NUM_BACKTRACKS, dtype=dtype)

    def cond(carry):
        i, _, decrement = carry
        return (i < max_iters) & (decrement > tol)

    def body(carry):
        i, w, _ = carry
        grad = g @ w - w ** (-power)
        hess = g + jnp.diag(power * w ** (-power - 1.0))
        # Jacobi scaling keeps the solve well conditioned when the weights span many decades.
        d = 1.0 / jnp.sqrt(jnp.diagonal(hess))
        delta = -d * jnp.linalg.solve(hess * jnp.outer(d, d), d * grad)
        decrement = -grad @ delta
        ratio = jnp.where(delta < 0, -w / jnp.where(delta < 0, delta, -1.0), jnp.inf)
        t_max = jnp.minimum(1.0, 0.99 * jnp.min(ratio))
        cand = w[None, :] + (t_max * steps)[:, None] * delta[None, :]
        values = jax.vmap(objective)(cand)
        f0 = objective(w)
        ok = values <= f0 - _ARMIJO * t_max * steps * decrement + 10 * eps * jnp.abs(f0)
        found = jnp.any(ok)
        w_new = jnp.where(found, cand[jnp.argmax(ok)], w)
        # Without an acceptable step we are at round-off level: stop.
        return i + 1, w_new, jnp.where(found, decrement, 0.0)

    _, w, _ = lax.while_loop(cond, body, (0, w0, jnp.asarray(jnp.inf, dtype)))
    return jnp.where(active, w * scale ** (-back), 0.0)
