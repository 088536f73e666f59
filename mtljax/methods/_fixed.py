"""Fixed weighting: user-given constant task weights.

``d = Σ_t w_t g_t`` with ``w`` fixed for the whole run (the linear scalarisation ``Σ_t w_t L_t``;
torchjd's ``Constant``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from mtljax.methods._base import Method, check_num_tasks, loss_weighting, losses_dtype
from mtljax.solvers._mask import task_support


def fixed(num_tasks: int, *, weights) -> Method:
    """Fixed weighting: ``w_t`` given by the user, constant over training.

    Any finite real weights are accepted, as in torchjd's ``Constant``: a negative weight makes
    the step *ascend* that task's loss, which is occasionally wanted (adversarial tasks) and
    is the caller's responsibility.

    Args:
      num_tasks: T.
      weights: ``[T]`` finite task weights (sequence or array).

    Returns:
      A loss-only :class:`~mtljax.methods.Method`. The weights take the dtype of the task
      losses (at least float32; float32 when no losses are given).

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("fixed", np.eye(2), weights=[2.0, 0.5]).tolist()
      [2.0, 0.5]
    """
    num_tasks = check_num_tasks(num_tasks)
    values = np.asarray(weights, dtype=np.float64)
    if values.shape != (num_tasks,):
        raise ValueError(f"weights must have shape ({num_tasks},), got {values.shape}.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"weights must be finite, got {values.tolist()}.")

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        dtype = losses_dtype(task_losses)
        mask = task_support(task_mask, num_tasks)
        return jnp.where(mask, jnp.asarray(values, dtype), 0.0), state

    return loss_weighting("fixed", num_tasks, optax.EmptyState, weights_fn)
