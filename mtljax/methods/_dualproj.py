"""DualProj: the mean task gradient projected onto the dual cone.

The projection of ``Jᵀu`` onto ``{x : J x ≥ 0}`` is ``Jᵀw`` with ``w = argmin_{w ≥ u} wᵀGw``, solved
in Gram space by :func:`mtljax.solvers._dual_cone.project_dual_cone`. The update is the closest
direction to the mean gradient that conflicts with no task (``J d ≥ 0``; with the ridge ``reg_eps``
only ``g_t · d ≥ −reg_eps · tr(G) · w_t``); it equals the mean when the mean conflicts with no task.
This is the projection of Gradient Episodic Memory (Lopez-Paz & Ranzato) used as an aggregator by
Quinton & Rey.

References:
  Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017,
  arXiv:1706.08840.
  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, arXiv:2406.16232.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.methods._upgrad import preference_weights
from mtljax.solvers._dual_cone_batch import project_dual_cone_many
from mtljax.solvers._mask import num_present, restrict, task_support


def dualproj(
    num_tasks: int,
    *,
    pref_vector=None,
    reduction: str = "mean",
    reg_eps: float = 1e-4,
    norm_eps: float = 0.0,
) -> Method:
    """Dual projection: ``w = argmin_{w ≥ u} wᵀ Ĝ w``, ``Ĝ = G / tr(G) + reg_eps · I``.

    Args:
      num_tasks: T.
      pref_vector: ``[T]`` non-negative preferences (ones by default): the projected vector is
        ``Jᵀu``. torchjd's ``DualProj(pref_vector=p)`` is ``pref_vector=p, reduction="sum"``.
      reduction: ``"mean"`` (default, ``u = pref/T``; torchjd's ``DualProj()``) or ``"sum"``.
      reg_eps: ridge added to the trace-normalised Gram matrix (torchjd: 1e-4). It lets
        ``d`` conflict with task t by up to ``reg_eps · tr(G) · w_t``; ``0`` solves the exact
        projection (non-conflicting up to round-off, on any J).
      norm_eps: Gram matrices with a trace at or under this count as zero (then ``w = u``).
        The default 0 keeps the method exactly scale-invariant; torchjd uses 1e-4.

    Returns:
      A Gram-space :class:`~mtljax.methods.Method`. Zero gradients give ``w = u``, ``d = 0``.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.

    Example:
      >>> import numpy as np, mtljax
      >>> d = mtljax.aggregate("dualproj", np.array([[1.0, 1.0], [-3.0, 0.0]]), reg_eps=0.0)
      >>> [round(x, 4) for x in d.tolist()]
      [-0.75, 0.75]
    """
    num_tasks = check_num_tasks(num_tasks)
    u = preference_weights("dualproj", num_tasks, pref_vector, reduction, reg_eps, norm_eps)

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # The present tasks' mean projected onto their own dual cone ("mean": over K).
        count = jnp.maximum(num_present(mask, gram.dtype), 1.0)
        rescale = num_tasks / count if reduction == "mean" else 1.0
        start = restrict(jnp.asarray(u, gram.dtype) * rescale, mask)
        weights = project_dual_cone_many(
            gram, start[None], reg_eps=reg_eps, norm_eps=norm_eps, mask=mask
        )[0]
        return weights, state

    return gram_weighting("dualproj", num_tasks, optax.EmptyState, weights_fn, degree=0.0)
