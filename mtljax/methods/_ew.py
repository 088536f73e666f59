"""Equal weighting (EW): the sum or the mean of the task gradients.

``d = Σ_t g_t`` (``reduction="sum"``, the linear scalarisation ``Σ_t L_t``; LibMTL's EW) or
``d = (1/T) Σ_t g_t`` (``reduction="mean"``; torchjd's ``Mean``).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtljax.methods._base import Method, check_num_tasks, loss_weighting
from mtljax.solvers._mask import num_present, task_support

REDUCTIONS = ("sum", "mean")


def ew(num_tasks: int, *, reduction: str = "sum") -> Method:
    """Equal weighting: ``w_t = 1`` (sum) or ``w_t = 1/T`` (mean).

    Args:
      num_tasks: T.
      reduction: ``"sum"`` (default) or ``"mean"``.

    Returns:
      A loss-only :class:`~mtljax.methods.Method` (one backward pass in the train step).

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("ew", np.array([[1.0, 0.0], [0.0, 2.0]])).tolist()
      [1.0, 2.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # The default float dtype: exact 1/K for float64 gradients when x64 is on.
        dtype = jnp.result_type(float)
        value = 1.0 if reduction == "sum" else 1.0 / jnp.maximum(num_present(mask, dtype), 1.0)
        return jnp.where(mask, value, 0.0).astype(dtype), state

    return loss_weighting("ew" if reduction == "sum" else "mean", num_tasks, optax.EmptyState,
                          weights_fn)
