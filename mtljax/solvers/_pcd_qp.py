"""PCD's quadratic program, solved exactly on device by a dual active-set method.

Given the Gram matrix ``G`` of objective gradients ``g_1, …, g_M`` (row 0 the primary one) and
fractions ``τ_j``, Priority-Constrained Descent needs

    d = argmin_d ½‖d − g_1‖²   s.t.   g_jᵀd ≥ τ_j ‖g_j‖²,   j = 2, …, M.

Its dual is ``min_{μ ≥ 0} ½ μᵀ G_s μ − μᵀ b`` with ``G_s`` the secondaries' block of ``G`` and
``b_j = τ_j G_jj − G_j1``; the minimiser is ``d = g_1 + Σ_j μ_j g_j`` (stationarity), so the
whole solve reads inner products from ``G``. The slack of constraint j at ``μ`` is
``(G_s μ − b)_j = g_jᵀd − τ_j‖g_j‖²``.

The dual active-set method of Goldfarb & Idnani (1983), for an identity Hessian, keeps ``d``
optimal for the active constraints (a set of linearly independent gradients, held with
equality) and adds the most violated constraint p: it moves ``μ_p`` up and the active
multipliers along ``−r`` with ``r = G_AA⁻¹ G_Ap``, i.e. ``d`` along ``z = g_p − Σ_A r_j g_j``,
the part of ``g_p`` orthogonal to the active gradients. The full step ``−slack_p / ‖z‖²`` makes
p active; a shorter step, where an active multiplier reaches 0 first, drops that constraint and
tries p again. When ``z = 0`` (``g_p`` depends on the active gradients) and no multiplier can
reach 0, the constraints are infeasible. Every step raises the dual objective, so no active set
repeats and the method ends after finitely many steps (about M in practice); the budget only
guards against cycling by round-off. Inside ``jit`` the active set is a ``[M−1]`` mask and the
equality system of the active set is solved with the inactive rows replaced by the identity.

References:
  Goldfarb & Idnani, "A numerically stable dual method for solving strictly convex quadratic
  programs", Mathematical Programming 27, 1983, doi:10.1007/BF02591962.
  "Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical
  Multi-Objective Optimization", TMLR 2026, arXiv:2606.29521.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

# Below this squared sine between g_p and the span of the active gradients, g_p counts as a
# linear combination of them (float64; float32 uses 100 eps): above the Gram matrix's relative
# precision, so that dependent gradients never look independent with huge multipliers.
DEPENDENCE_TOL = 1e-9


class PCDSolution(NamedTuple):
    """What :func:`solve_pcd_qp` returns."""

    weights: jax.Array  # [M]: (1, μ_2, …, μ_M), d = Σ_i w_i g_i; (1, 0, …, 0) if infeasible
    feasible: jax.Array  # [] bool: the constraints can all hold
    iterations: jax.Array  # [] int32: active-set steps taken


class _Carry(NamedTuple):
    step: jax.Array  # [] int32
    mu: jax.Array  # [S]
    active: jax.Array  # [S] bool
    adding: jax.Array  # [] int32: the constraint being added, -1 when none
    status: jax.Array  # [] int32: 0 running, 1 optimal, 2 infeasible


@functools.partial(jax.jit, static_argnames=("max_iters",))
def solve_pcd_qp(
    gram: jax.Array,
    taus: jax.Array,
    *,
    mask: jax.Array | None = None,
    max_iters: int | None = None,
) -> PCDSolution:
    """Solves PCD's QP from the objectives' Gram matrix (row and column 0: the primary).

    Args:
      gram: ``[M, M]`` positive semi-definite Gram matrix of ``g_1, …, g_M``.
      taus: ``[M − 1]`` fractions ``τ_j ≥ 0`` of the secondaries' constraints.
      mask: optional ``[M − 1]`` bool: the secondaries that have a constraint (default all);
        the others get ``μ_j = 0`` whatever their rows of ``gram`` hold.
      max_iters: budget of active-set steps (one ``[M−1]²`` linear solve each), ``10 M + 10``
        by default; reaching it returns the current iterate.

    Returns:
      A :class:`PCDSolution`, in ``gram``'s dtype. The constraints hold to round-off when
      feasible: a constraint counts as satisfied when its slack is above ``−64 eps`` times
      the round-off scale of its row. Jitted (one compilation per shape and dtype, shared by
      every PCD method).

    Example:
      >>> import jax.numpy as jnp
      >>> g = jnp.array([[1.0, -0.5], [-0.5, 1.0]])  # unit gradients at 120 degrees
      >>> sol = solve_pcd_qp(g, jnp.array([0.0]))
      >>> [round(x, 4) for x in sol.weights.tolist()], bool(sol.feasible)
      ([1.0, 0.5], True)
    """
    size = gram.shape[0]
    dtype = gram.dtype
    top = jnp.max(jnp.diagonal(gram))
    # μ does not change when G is scaled: solve on G / max diag, entries in [-1, 1].
    g = gram / jnp.where(top > 0, top, 1.0)
    gs, g1 = g[1:, 1:], g[1:, 0]
    present = jnp.ones((size - 1,), bool) if mask is None else mask
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g), 0.0))
    b = taus.astype(dtype) * jnp.diagonal(gs) - g1
    eps = jnp.finfo(dtype).eps
    dependence = jnp.maximum(DEPENDENCE_TOL, 100 * eps).astype(dtype)
    budget = 10 * size + 10 if max_iters is None else max_iters

    def tolerance(mu):
        # Round-off of the slack g_jᵀd − τ_j‖g_j‖²: about eps ‖g_j‖ (Σ_i |w_i| ‖g_i‖).
        scale = norms[0] + norms[1:] @ jnp.abs(mu)
        return 64 * eps * jnp.maximum(norms[1:] * scale, jnp.finfo(dtype).tiny)

    def cond(c: _Carry):
        return (c.step < budget) & (c.status == 0)

    def body(c: _Carry) -> _Carry:
        slacks = gs @ c.mu - b
        violated = present & ~c.active & (slacks < -tolerance(c.mu))
        candidate = jnp.argmin(jnp.where(violated, slacks, jnp.inf)).astype(jnp.int32)
        choosing = c.adding < 0
        optimal = choosing & ~jnp.any(violated)
        p = jnp.where(choosing, candidate, c.adding)
        mu, active, added, infeasible = _step(gs, b, c.mu, c.active, p, dependence)
        running = ~optimal & ~infeasible
        return _Carry(
            c.step + 1,
            jnp.where(running, mu, c.mu),
            jnp.where(running, active, c.active),
            jnp.where(running & ~added, p, -1).astype(jnp.int32),
            jnp.where(optimal, 1, jnp.where(infeasible, 2, 0)).astype(jnp.int32),
        )

    start = _Carry(jnp.zeros((), jnp.int32), jnp.zeros((size - 1,), dtype),
                   jnp.zeros((size - 1,), bool), -jnp.ones((), jnp.int32),
                   jnp.zeros((), jnp.int32))
    out = lax.while_loop(cond, body, start) if size > 1 else start
    feasible = out.status != 2
    mu = jnp.where(feasible & present, jnp.maximum(out.mu, 0.0), 0.0)
    weights = jnp.concatenate([jnp.ones((1,), dtype), mu])
    return PCDSolution(weights, feasible, out.step)


def _step(gs, b, mu, active, p, dependence):
    """One Goldfarb-Idnani step adding constraint p: ``(μ, active, added, infeasible)``.

    ``r`` solves the active set's equality system (``r = 0`` off it); ``‖z‖² = G_pp − G_pAᵀ r``.
    The step is the full one, ``−slack_p / ‖z‖²`` (p becomes active), or the partial one where
    the first active multiplier moving down reaches 0 (that constraint is dropped).
    """
    size = gs.shape[0]
    onehot = jnp.arange(size) == p
    system = jnp.where(active[:, None] & active[None, :], gs, jnp.eye(size, dtype=gs.dtype))
    r = jnp.linalg.solve(system, jnp.where(active, gs[:, p], 0.0))
    z_sq = gs[p, p] - jnp.where(active, gs[:, p], 0.0) @ r
    shrinking = active & (r > 0)
    ratios = jnp.where(shrinking, mu / jnp.where(shrinking, r, 1.0), jnp.inf)
    k = jnp.argmin(ratios)
    partial = ratios[k]
    slack_p = gs[p] @ mu - b[p]
    independent = z_sq > dependence * gs[p, p]
    full = jnp.where(independent, -slack_p / jnp.where(independent, z_sq, 1.0), jnp.inf)
    step = jnp.minimum(partial, full)
    infeasible = jnp.isinf(step) | ~jnp.isfinite(z_sq)
    added = full <= partial
    dropped = (jnp.arange(size) == k) & ~added
    step = jnp.where(infeasible, 0.0, step)
    mu = jnp.where(active, mu - step * r, mu) + jnp.where(onehot, step, 0.0)
    mu = jnp.where(dropped, 0.0, mu)
    active = (active | (onehot & added)) & ~dropped
    return mu, active, added, infeasible
