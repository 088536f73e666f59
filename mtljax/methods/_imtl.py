"""IMTL: impartial multi-task learning (IMTL-G, and the IMTL-L + IMTL-G hybrid).

IMTL-G picks the combination ``d = Jᵀ α`` with ``Σ_t α_t = 1`` whose projections on the unit
gradients ``u_t = g_t/‖g_t‖`` are all equal. The paper writes the closed form
``α_{2:T} = g_1 Uᵀ (D Uᵀ)^{-1}`` with rows ``D_t = g_1 − g_t``, ``U_t = u_1 − u_t``. Equivalently
``diag(1/n) G α = c 1`` with ``n_t = ‖g_t‖``, so ``α ∝ G⁻¹ n`` normalised to sum 1: a Gram-only
form. We use the pseudo-inverse, ``α = G⁺ n / (1ᵀ G⁺ n)`` (the generalisation of Quinton & Rey),
which equals the paper's formula on full-rank Jacobians and stays finite otherwise.

IMTL-L learns a log-scale ``s_t`` per task and trains on ``e^{s_t} L_t − s_t``; the hybrid IMTL
applies IMTL-G to the scaled gradients ``e^{s_t} g_t`` and updates ``s`` by its own gradient
step ``s ← s − lr (e^{s} L − 1)``.

References:
  Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
  ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr.
  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, arXiv:2406.16232.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting, require_losses
from mtljax.solvers._mask import num_present, restrict, restrict_gram, task_support
from mtljax.solvers._psd import psd_eigh
from mtljax.solvers._simplex import normalize_gram


def imtl_g_weights(gram: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """IMTL-G weights ``α = G⁺ n / (1ᵀ G⁺ n)`` from a ``[T, T]`` Gram matrix.

    Returns ``[T]`` weights summing to 1; ``1`` at ``T = 1``. When ``1ᵀ G⁺ n`` vanishes to
    round-off (e.g. two exactly opposite gradients: no combination has equal positive
    projections) the weights are 0, so ``d = 0``. Zero gradients get weight 0. With a ``[T]``
    bool ``mask``, the weights of the present tasks' Gram block (1 when one task is present),
    0 on the absent tasks.
    """
    t = gram.shape[0]
    mask = task_support(mask, t)
    if t == 1:
        return restrict(jnp.ones((1,), gram.dtype), mask)
    g, _ = normalize_gram(restrict_gram(gram, mask))
    eps = jnp.finfo(g.dtype).eps
    count = num_present(mask, g.dtype)
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(g), 0.0))
    lam, vec, keep = psd_eigh(g, mask=mask)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    v = vec @ (inv * (vec.T @ norms))
    total = jnp.sum(restrict(v, mask))
    # Round-off bound on 1ᵀ G⁺ n: T eps ‖G⁺‖ ‖n‖ (a few ulps per entry).
    noise = 10.0 * count * eps * jnp.max(inv) * jnp.linalg.norm(norms)
    ok = jnp.abs(total) > noise
    alpha = restrict(jnp.where(ok, v / jnp.where(ok, total, 1.0), 0.0), mask)
    # One present task: the T = 1 method, weight 1 whatever its gradient.
    return jnp.where(count == 1, mask.astype(g.dtype), alpha)


def imtl_g(num_tasks: int) -> Method:
    """IMTL-G: equal projections of ``d`` on every unit gradient, ``Σ α = 1``.

    Args:
      num_tasks: T.

    Returns:
      A stateless Gram-space :class:`~mtljax.methods.Method` (see :func:`imtl_g_weights` for
      degenerate inputs).
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("imtl_g", np.array([[1.0, 0.0], [0.0, 3.0]])).tolist()
      [0.75, 0.75]
    """
    num_tasks = check_num_tasks(num_tasks)

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        return imtl_g_weights(gram, task_support(task_mask, num_tasks)), state

    return gram_weighting("imtl_g", num_tasks, optax.EmptyState, weights_fn, degree=0.0)


class IMTLState(NamedTuple):
    log_scales: jax.Array  # [T] s_t, the IMTL-L loss log-scales


def imtl(num_tasks: int, *, lr: float = 1e-2) -> Method:
    """IMTL hybrid: IMTL-G weights on the IMTL-L scaled gradients ``e^{s_t} g_t``.

    Each call uses the current ``s``: with ``G_s = diag(e^s) G diag(e^s)`` the weights on the
    raw gradients are ``w = e^s ⊙ imtl_g_weights(G_s)``. Then ``s`` takes one gradient step
    on ``Σ_t e^{s_t} L_t − s_t``: ``s ← s − lr (e^s ⊙ L − 1)`` (fixed point ``s = −log L``).

    Args:
      num_tasks: T.
      lr: step size of the log-scale update (plain gradient descent; in the paper the scales
        are trained with the network's optimiser).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` that needs ``task_losses``; ``s`` starts
      at 0 (scales 1).
    """
    num_tasks = check_num_tasks(num_tasks)
    if not lr > 0.0:
        raise ValueError(f"lr must be positive, got {lr!r}.")

    def init_state():
        return IMTLState(jnp.zeros((num_tasks,)))

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del extra
        losses = require_losses("imtl", num_tasks, task_losses).astype(gram.dtype)
        mask = task_support(task_mask, num_tasks)
        log_scales = state.log_scales.astype(gram.dtype)
        scales = jnp.exp(log_scales)
        alpha = imtl_g_weights(gram * jnp.outer(scales, scales), mask)
        new = log_scales - lr * (scales * losses - 1.0)
        new = jnp.where(mask, new.astype(state.log_scales.dtype), state.log_scales)
        return alpha * scales, IMTLState(new)

    return gram_weighting("imtl", num_tasks, init_state, weights_fn, degree=0.0)
