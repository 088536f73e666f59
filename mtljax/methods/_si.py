"""Scale-invariant loss (SI): the sum of the log task losses.

Minimising ``Σ_t log L_t`` gives the gradient ``Σ_t (1/L_t) ∇L_t``: the weights ``w_t = 1/L_t``
make the update invariant to a positive rescaling of any task's loss.

References:
  Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
  Bargaining Game", ICML 2022, arXiv:2202.01017 (the SI baseline).
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
from mtljax.solvers._mask import restrict, task_support


def si(num_tasks: int, *, eps: float = 1e-12) -> Method:
    """Scale-invariant weighting ``w_t = 1 / max(L_t, eps)``.

    Args:
      num_tasks: T.
      eps: floor on the loss (a cap of ``1/eps`` on a weight), which keeps zero, negative or
        tiny losses finite. Losses above ``eps`` get exactly ``1/L_t``.

    Returns:
      A loss-only :class:`~mtljax.methods.Method`; weights in the losses' dtype (≥ float32).

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("si", np.eye(2), task_losses=[2.0, 0.5]).tolist()
      [0.5, 2.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}.")

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        losses = require_losses("si", num_tasks, task_losses)
        mask = task_support(task_mask, num_tasks)
        losses = restrict(losses.astype(losses_dtype(losses)), mask, 1.0)
        return restrict(1.0 / jnp.maximum(losses, eps), mask), state

    return loss_weighting("si", num_tasks, optax.EmptyState, weights_fn)
