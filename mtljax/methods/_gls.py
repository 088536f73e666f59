"""Geometric loss strategy (GLS): minimise the geometric mean of the task losses.

``f = (Π_t L_t)^{1/T}`` has ``∂f/∂L_t = f / (T L_t)``, so ``w_t = exp(mean_s log L_s − log L_t)/T``,
computed in log space so that products of many small or large losses neither underflow nor
overflow.

References:
  Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation and
  Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019, arXiv:1904.08492.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtljax.methods._base import (
    Method,
    check_num_tasks,
    loss_weighting,
    losses_dtype,
    require_losses,
)
from mtljax.solvers._mask import num_present, restrict, task_support


def gls(num_tasks: int, *, eps: float = 1e-12) -> Method:
    """Geometric loss strategy: ``w_t = (Π_s L_s)^{1/T} / (T L_t)``.

    Args:
      num_tasks: T.
      eps: floor on the losses before the logarithm, which keeps zero or negative losses
        finite (the geometric mean is then taken of ``max(L, eps)``).

    Returns:
      A loss-only :class:`~mtljax.methods.Method`; weights in the losses' dtype (≥ float32).
      Equal losses give ``w = 1/T`` (the mean), and ``Σ_t w_t L_t = f``.

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("gls", np.eye(2), task_losses=[4.0, 1.0]).tolist()
      [0.25, 1.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}.")

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        losses = require_losses("gls", num_tasks, task_losses)
        mask = task_support(task_mask, num_tasks)
        losses = restrict(losses.astype(losses_dtype(losses)), mask, 1.0)
        logs = jnp.log(jnp.maximum(losses, eps))
        # The geometric mean of the K present losses (absent ones enter as log 1 = 0).
        count = jnp.maximum(num_present(mask, logs.dtype), 1.0)
        return restrict(jnp.exp(jnp.sum(logs) / count - logs) / count, mask), state

    return loss_weighting("gls", num_tasks, optax.EmptyState, weights_fn)
