"""Minimisation of a smooth convex function over the probability simplex.

``minimize_on_simplex`` runs accelerated projected gradient (FISTA, Beck & Teboulle, SIAM J.
Imaging Sci. 2009) with backtracking on the Lipschitz constant and adaptive restart
(O'Donoghue & Candès, Found. Comput. Math. 2015). The backtracking is vectorised: each
iteration tries ``num_backtracks`` candidate constants ``L · 2^k`` at once and keeps the
smallest that satisfies the sufficient-decrease test, so every iteration has a fixed cost.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.solvers._simplex import project_simplex


def minimize_on_simplex(
    fun: Callable[[jax.Array], jax.Array],
    init: jax.Array,
    *,
    max_iters: int = 500,
    tol: float = 1e-7,
    num_backtracks: int = 24,
    mask: jax.Array | None = None,
) -> jax.Array:
    """``argmin_{w ∈ Δ} f(w)`` for a convex, differentiable, T-sized ``f``.

    Stops when the norm of the gradient mapping ``L ‖x_{k+1} − y_k‖`` falls under ``tol`` or
    after ``max_iters`` iterations. ``f`` should be scaled so that its gradients are O(1)
    (e.g. built from a Gram matrix divided by its largest diagonal entry).

    Args:
      fun: jittable ``[T] -> []`` convex function, differentiable on the simplex.
      init: ``[T]`` starting point on the simplex.
      max_iters: iteration budget.
      tol: tolerance on the gradient-mapping norm.
      num_backtracks: candidate Lipschitz constants per iteration (``L/2 … L·2^(n−2)``).
      mask: optional ``[T]`` bool support: minimise over the simplex of the present entries
        (``init`` should lie on it; absent entries stay 0). ``f`` must not let the absent
        entries' partial derivatives reach the present ones (true for ``f`` built from a
        Gram matrix restricted to the present tasks).

    Returns:
      ``[T]`` point of the simplex (of the present entries).
    """
    dtype = init.dtype
    value_and_grad = jax.value_and_grad(fun)
    factors = 2.0 ** jnp.arange(-1, num_backtracks - 1, dtype=dtype)
    slack = 10.0 * jnp.finfo(dtype).eps

    def cond(carry):
        i, _, _, _, _, gap = carry
        return (i < max_iters) & (gap > tol)

    def body(carry):
        i, x, y, momentum, lipschitz, _ = carry
        fy, gy = value_and_grad(y)
        lips = lipschitz * factors
        xs = jax.vmap(lambda lip: project_simplex(y - gy / lip, mask=mask))(lips)
        fxs = jax.vmap(fun)(xs)
        diffs = xs - y
        model = fy + diffs @ gy + 0.5 * lips * jnp.sum(diffs**2, axis=1)
        ok = fxs <= model + slack * (1.0 + jnp.abs(fy))
        k = jnp.where(jnp.any(ok), jnp.argmax(ok), num_backtracks - 1)
        x_new, lip_new = xs[k], lips[k]
        gap = lip_new * jnp.linalg.norm(x_new - y)
        # Adaptive restart: drop the momentum when the objective goes up.
        restart = fxs[k] > fun(x)
        m_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * momentum**2)))
        beta = jnp.where(restart, 0.0, (momentum - 1.0) / m_new)
        # Extrapolated points are projected back: f need not be defined off the simplex.
        y_new = project_simplex(x_new + beta * (x_new - x), mask=mask)
        return i + 1, x_new, y_new, m_new.astype(dtype), lip_new, gap

    one = jnp.ones((), dtype)
    carry = (0, init, init, one, one, jnp.asarray(jnp.inf, dtype))
    _, x, _, _, _, _ = lax.while_loop(cond, body, carry)
    return x
