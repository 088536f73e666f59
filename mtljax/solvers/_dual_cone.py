"""Projection onto the dual cone of the task gradients, in Gram space.

The dual cone of the rows of J is ``{x : J x ≥ 0}``: the directions that conflict with no task.
The Euclidean projection of ``v = Jᵀu`` onto it is ``Jᵀw`` with

    w = argmin_{w ≥ u} wᵀ G w,        G = J Jᵀ

(Quinton & Rey, 2024, Proposition 1: the Lagrange multipliers of ``Jx ≥ 0`` are ``w − u``).
This box-constrained QP is solved on device, exactly in finitely many steps, by a primal active-set
method in ``z = w − u ≥ 0`` (the Lawson-Hanson NNLS scheme applied to a QP): start from
``z = 0``, free the bound variable whose gradient ``(Ĝw)_i`` is most negative, solve the
equality-constrained problem on the free set by Cholesky, and when that solution leaves the
box, step back to the boundary and bind the variable that hit it. It stops when every bound
variable has ``(Ĝw)_i ≥ 0`` (the KKT conditions), so an already non-conflicting ``Jᵀu`` costs one
solve. Unlike primal-dual active-set (semismooth Newton) iterations, which can cycle on
ill-conditioned Gram matrices, it decreases the objective monotonically; a variable is rarely
freed twice, so the default budget of ``3T + 10`` solves is reached only on pathological inputs.

As in the UPGrad paper the Gram matrix is trace-normalised and given a small ridge,
``Ĝ = G / tr(G) + reg_eps · I``: the minimiser of the normalised problem does not depend on
the scale of J. The ridge is not needed for solvability: the problem is the non-negative least
squares ``min_{z ≥ 0} ‖Jᵀz + Jᵀu‖²``, and Lawson-Hanson only frees a variable whose gradient
is linearly independent of the free ones, so ``reg_eps = 0`` works on rank-deficient J too
(tested on zero, identical, opposite and low-rank rows). With a ridge, at a free variable
``(Ĝw)_t = 0`` means ``g_t · Jᵀw = −reg_eps · tr(G) · w_t``: ``Jᵀw`` conflicts with task t by
exactly that much, which is large next to ``‖g_t‖`` when g_t is much smaller than the others.

References:
  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, arXiv:2406.16232.
  Lawson & Hanson, "Solving Least Squares Problems", Prentice-Hall, 1974, chapter 23.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve

from mtljax.solvers._mask import restrict_gram, task_support


def regularize_gram(gram: jax.Array, *, reg_eps: float = 1e-4, norm_eps: float = 0.0):
    """``G / tr(G) + reg_eps · I``; ``reg_eps · I`` when ``tr(G) ≤ max(norm_eps, tiny)``.

    Args:
      gram: ``[T, T]`` positive semi-definite matrix.
      reg_eps: ridge added after normalisation (relative to the trace).
      norm_eps: traces at or under this are treated as a zero Gram matrix. The default 0 (the
        smallest normal number of the dtype) keeps the result invariant under any positive
        scaling of J; torchjd uses ``norm_eps=1e-4``.

    Returns:
      The ``[T, T]`` regularised matrix, in ``gram``'s dtype.
    """
    trace = jnp.trace(gram)
    threshold = jnp.maximum(jnp.asarray(norm_eps, gram.dtype), jnp.finfo(gram.dtype).tiny)
    scaled = jnp.where(trace > threshold, gram / jnp.where(trace > threshold, trace, 1.0), 0.0)
    return scaled + reg_eps * jnp.eye(gram.shape[0], dtype=gram.dtype)


def project_dual_cone(
    gram: jax.Array,
    u: jax.Array,
    *,
    reg_eps: float = 1e-4,
    norm_eps: float = 0.0,
    max_iters: int | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Weights ``w = argmin_{w ≥ u} wᵀ Ĝ w`` of the projection of ``Jᵀu`` onto the dual cone.

    Args:
      gram: ``[T, T]`` Gram matrix ``J Jᵀ``.
      u: ``[T]`` weights of the vector to project.
      reg_eps: ridge on the trace-normalised Gram matrix (see :func:`regularize_gram`).
      norm_eps: Gram matrices with trace at or under this count as zero (then ``w = u``).
      max_iters: budget of active-set iterations (one T×T Cholesky solve each);
        ``3T + 10`` by default. Freeing k variables takes k + 1 iterations without step-backs.
      mask: optional ``[T]`` bool support: the dual cone of the present rows only (one
        constraint per present task; absent rows and columns of G, whatever they hold, are
        ignored, the trace is the present tasks'). Absent tasks get ``w = 0``.

    Returns:
      ``[T]`` weights ``w ≥ u`` in ``gram``'s dtype; ``Jᵀw`` is the projection of ``Jᵀu``.
      Batch over several ``u`` with ``jax.vmap``.

    Example:
      >>> import jax.numpy as jnp
      >>> g = jnp.array([[1.0, -0.5], [-0.5, 1.0]])
      >>> w = project_dual_cone(g, jnp.array([1.0, 0.0]), reg_eps=0.0)
      >>> [round(x, 4) for x in w.tolist()]
      [1.0, 0.5]
    """
    t = gram.shape[0]
    mask = task_support(mask, t)
    g = regularize_gram(restrict_gram(gram, mask), reg_eps=reg_eps, norm_eps=norm_eps)
    u = jnp.where(mask, u.astype(g.dtype), 0.0)
    budget = 3 * t + 10 if max_iters is None else max_iters
    eye = jnp.eye(t, dtype=g.dtype)
    g_u = g @ u
    eps, tiny = jnp.finfo(g.dtype).eps, jnp.finfo(g.dtype).tiny
    norms = jnp.sqrt(jnp.diagonal(g))

    def tolerance(z):
        # Stationarity tolerance per task: the round-off of (Ĝw)_i = Σ_k Ĝ_ik w_k is about
        # eps · ‖ĝ_i‖ Σ_k ‖ĝ_k‖ |w_k|. Scaling it by ‖ĝ_i‖ (not by the largest norm) keeps the
        # constraints of gradients many decades smaller than the others exact too.
        return 64 * eps * jnp.maximum(norms * (norms @ jnp.abs(u + z)), tiny)

    def solve(free):
        # z_i = 0 on the bound set, (Ĝ (u + z))_i = 0 on the free set: a symmetric positive
        # definite system whose bound rows are those of the identity.
        system = jnp.where(jnp.outer(free, free), g, eye)
        return cho_solve(cho_factor(system), jnp.where(free, -g_u, 0.0))

    def cond(carry):
        i, _, _, done = carry
        return (i < budget) & ~done

    def body(carry):
        i, free, z, _ = carry
        s = solve(free)
        feasible = jnp.all(jnp.where(free, s > 0.0, True))
        # Feasible: accept s and free the bound variable with the most negative gradient.
        grad = g_u + g @ s
        candidate = jnp.where(~free & mask & (grad < -tolerance(s)), grad, jnp.inf)
        done = feasible & jnp.all(jnp.isinf(candidate))
        grown = free | (jnp.arange(t) == jnp.argmin(candidate)) & ~done
        # Infeasible: step from z towards s until a free variable hits its bound, bind it.
        shrinking = free & (s <= 0.0)
        ratios = jnp.where(shrinking, z / jnp.where(shrinking, z - s, 1.0), jnp.inf)
        step = jnp.clip(jnp.min(ratios), 0.0, 1.0)
        stepped = jnp.where(free, z + step * (s - z), 0.0)
        shrunk = free & (stepped > 0.0) & ~(shrinking & (ratios <= step))
        new_z = jnp.where(feasible, s, jnp.where(shrunk, stepped, 0.0))
        new_free = jnp.where(feasible, grown, shrunk)
        # A non-finite solve (free gradients dependent up to round-off, reg_eps = 0): stop at z.
        finite = jnp.all(jnp.isfinite(s))
        z = jnp.where(finite, new_z, z)
        return i + 1, jnp.where(finite, new_free, free), z, done | ~finite

    start = (0, jnp.zeros((t,), bool), jnp.zeros((t,), g.dtype), jnp.array(False))
    _, _, z, _ = lax.while_loop(cond, body, start)
    return u + jnp.maximum(z, 0.0)
