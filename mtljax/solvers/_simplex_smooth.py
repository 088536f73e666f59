"""Minimisation of a smooth convex function over the probability simplex.

``minimize_on_simplex`` runs accelerated projected gradient (FISTA, Beck & Teboulle, SIAM J.
Imaging Sci. 2009) with backtracking on the Lipschitz constant and adaptive restart
(O'Donoghue & Candès, Found. Comput. Math. 2015). The backtracking is vectorised: each
iteration tries ``num_backtracks`` candidate constants ``L · 2^k`` at once and keeps the
smallest that satisfies the sufficient-decrease test, so every iteration has a fixed cost.

Both tests read gradients only, never differences of function values: near the minimiser ``f``
changes by the square of the step, which float32 cannot resolve (the solver accepted steps
that went uphill and stalled at a duality gap of ~1e-3). Sufficient decrease
``f(x) ≤ f(y) + ∇f(y)·(x − y) + L/2 ‖x − y‖²`` is implied, for convex ``f``, by
``(∇f(x) − ∇f(y))·(x − y) ≤ L/2 ‖x − y‖²`` (Becker, Candès & Grant, Math. Prog. Comp. 2011,
§5.3), and the momentum restarts on the gradient scheme ``(y − x⁺)·(x⁺ − x) > 0`` of
O'Donoghue & Candès. In float32 the duality gap then reaches a few eps of ``‖∇f‖``.
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
    grad = jax.grad(fun)
    factors = 2.0 ** jnp.arange(-1, num_backtracks - 1, dtype=dtype)
    # Round-off of (∇f(x) − ∇f(y))·(x − y), entry by entry: each gradient to about an ulp.
    # Not a norm-wise bound: a common part of the gradient many times its spread (nearly
    # parallel tasks) would then accept too short a constant, and the iterates would wander.
    slack = 2.0 * jnp.finfo(dtype).eps

    def cond(carry):
        i, _, _, _, _, gap = carry
        return (i < max_iters) & (gap > tol)

    def body(carry):
        i, x, y, momentum, lipschitz, _ = carry
        gy = grad(y)
        lips = lipschitz * factors
        # The projection ignores a constant shift of the gradient; removing yᵀ∇f(y) keeps
        # y − ∇f(y)/L from cancelling when the gradient's common part dwarfs its spread
        # (nearly parallel tasks: float32 lost the step to round-off).
        shifted = gy - y @ gy
        xs = jax.vmap(lambda lip: project_simplex(y - shifted / lip, mask=mask))(lips)
        diffs = xs - y
        steps = jnp.linalg.norm(diffs, axis=1)
        gxs = jax.vmap(grad)(xs)
        curvature = jnp.sum((gxs - gy) * diffs, axis=1)
        noise = slack * jnp.sum(jnp.abs(diffs) * (jnp.abs(gxs) + jnp.abs(gy)), axis=1)
        ok = curvature <= 0.5 * lips * steps**2 + noise
        k = jnp.where(jnp.any(ok), jnp.argmax(ok), num_backtracks - 1)
        x_new, lip_new = xs[k], lips[k]
        gap = lip_new * steps[k]
        # Gradient restart: drop the momentum when the step turns back on the last one.
        restart = (y - x_new) @ (x_new - x) > 0.0
        m_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * momentum**2)))
        beta = jnp.where(restart, 0.0, (momentum - 1.0) / m_new)
        # Extrapolated points are projected back: f need not be defined off the simplex.
        y_new = project_simplex(x_new + beta * (x_new - x), mask=mask)
        return i + 1, x_new, y_new, m_new.astype(dtype), lip_new, gap

    one = jnp.ones((), dtype)
    carry = (0, init, init, one, one, jnp.asarray(jnp.inf, dtype))
    _, x, _, _, _, _ = lax.while_loop(cond, body, carry)
    return x
