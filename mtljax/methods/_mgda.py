"""MGDA: the min-norm point of the convex hull of the task gradients.

``d = Jᵀ w*``, ``w* = argmin_{w ∈ Δ} ‖Jᵀ w‖² = argmin_{w ∈ Δ} wᵀ G w``, solved exactly in Gram space
on device by Wolfe's min-norm-point algorithm (:func:`mtljax.solvers.min_norm_simplex`). ``d`` is a
common descent direction: ``g_t · d ≥ ‖d‖² ≥ 0`` for every task (non-conflicting); ``d = 0`` exactly
at a Pareto-stationary point.

MGDA-UB applies the same solve to the gradients of the losses at the shared representation
(``level="representation"``), then back-propagates ``Σ w_t L_t`` through the encoder once.

References:
  Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
  Comptes Rendus Mathématique, 2012.
  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
  arXiv:1810.04650.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting, require_losses
from mtljax.solvers import min_norm_simplex
from mtljax.solvers._mask import restrict, restrict_gram, task_support

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda(
    num_tasks: int,
    *,
    normalization: str = "none",
    max_iters: int | None = None,
    tol: float | None = None,
    level: str = "parameters",
) -> Method:
    """Multiple-gradient descent: ``w = argmin_{w∈Δ} wᵀ G w``, ``d = Jᵀ w``.

    Args:
      num_tasks: T.
      normalization: rescale each gradient before the solve, as in Sener & Koltun's code:
        ``"none"``, ``"l2"`` (``g_t/‖g_t‖``), ``"loss"`` (``g_t/L_t``) or ``"loss+"``
        (``g_t/(L_t ‖g_t‖)``). The returned weights apply to the *unscaled* gradients.
      max_iters: budget of solves of the min-norm-point algorithm (``3T + 10`` by default).
      tol: relative tolerance of the solver's stopping test, ``g_t · d ≥ ‖d‖² − tol ‖g_t‖
        max_s ‖g_s‖`` (``10 T eps`` of the dtype by default).
      level: ``"parameters"`` (MGDA) or ``"representation"`` (MGDA-UB).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method`. Weights lie on the simplex; with every
      gradient zero they are uniform and ``d = 0``.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there. A zero gradient puts 0 in the hull: ``d = 0`` exactly (the min-norm point,
      Pareto-stationary), which the step reports as a zero ``update_norm``.

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("mgda", np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
      [0.5, 0.5]
    """
    num_tasks = check_num_tasks(num_tasks)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    name = "mgda" if level == "parameters" else "mgda_ub"

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del extra
        mask = task_support(task_mask, num_tasks)
        gram = restrict_gram(gram, mask)
        scale = jnp.ones((num_tasks,), gram.dtype)
        norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram), 0.0))
        if normalization in ("l2", "loss+"):
            scale = scale * norms
        if normalization in ("loss", "loss+"):
            losses = require_losses(name, num_tasks, task_losses).astype(gram.dtype)
            scale = scale * restrict(losses, mask, 1.0)
        # Zero-norm or zero-loss rows keep scale 1: they contribute a zero vertex either way.
        safe = jnp.where(scale > jnp.finfo(gram.dtype).tiny, scale, 1.0)
        w = min_norm_simplex(gram / jnp.outer(safe, safe), max_iters=max_iters, tol=tol,
                             mask=mask)
        return w / safe, state

    return gram_weighting(name, num_tasks, optax.EmptyState, weights_fn, level=level, degree=0.0)
