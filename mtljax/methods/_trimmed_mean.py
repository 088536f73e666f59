"""Coordinate-wise trimmed mean: drop the k largest and k smallest values of each coordinate.

For every coordinate of the parameters, the T task values are sorted, the ``k`` largest and
``k`` smallest are removed, and the remaining ``T − 2k`` are averaged. The result is no
combination ``Jᵀw`` of the task gradients (each coordinate keeps different tasks), so this is,
with GradDrop, one of the two documented exceptions to the Gram-only rule: it is built with
:class:`~mtljax.methods.Method` directly, sorts along the task axis of every leaf (P-sized work,
``O(P T log T)``), and returns ``weights=None``.

References:
  Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
  Statistical Rates", ICML 2018, arXiv:1803.01498.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtljax.methods._base import (
    Method,
    MethodOutput,
    check_input_tasks,
    check_num_tasks,
    gradient_transform,
)
from mtljax.solvers._mask import task_support


def trimmed_mean(num_tasks: int, *, trim_number: int = 1) -> Method:
    """Coordinate-wise ``k``-trimmed mean of the task gradients.

    Args:
      num_tasks: T.
      trim_number: k, the number of largest and of smallest values removed per coordinate;
        ``0 ≤ 2k < T``. ``k = 0`` is the mean.

    Returns:
      An elementwise :class:`~mtljax.methods.Method` with ``weights=None`` and no state.
      Under a ``task_mask`` with K present tasks: the k-trimmed mean of their values; with
      ``K ≤ 2k`` nothing is left after trimming and the method abstains (``d = 0``), like
      Krum.

    Example:
      >>> import numpy as np, mtljax
      >>> j = np.array([[1.0, -5.0], [2.0, 0.0], [100.0, 1.0]])
      >>> mtljax.aggregate("trimmed_mean", j).tolist()
      [2.0, 0.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    if trim_number < 0 or 2 * trim_number >= num_tasks:
        raise ValueError(
            f"trimmed_mean needs 0 <= trim_number and 2 * trim_number < num_tasks "
            f"(got trim_number={trim_number}, num_tasks={num_tasks})."
        )

    def init(params):
        del params
        return optax.EmptyState()

    def trim(leaf, mask):
        # Absent tasks sort last (+inf) and are never kept: the k-trimmed mean of the K
        # present values. Under K <= 2k present tasks nothing is left after trimming and the
        # method abstains (0), as Krum does, rather than trust values it cannot trim.
        rows = mask.reshape((-1,) + (1,) * (leaf.ndim - 1))
        dtype = jnp.promote_types(leaf.dtype, jnp.float32)
        values = jnp.sort(jnp.where(rows, leaf.astype(dtype), jnp.inf), axis=0)
        count = jnp.sum(mask)
        index = jnp.arange(num_tasks).reshape(rows.shape)
        kept = (index >= trim_number) & (index < count - trim_number)
        total = jnp.sum(jnp.where(kept, values, 0.0), axis=0)
        size = count - 2 * trim_number
        return jnp.where(size > 0, total / jnp.maximum(size, 1), 0.0).astype(leaf.dtype)

    def apply(per_task_grads, state, params=None, *, task_losses=None, task_mask=None, **extra):
        del params, task_losses, extra
        check_input_tasks("trimmed_mean", num_tasks, per_task_grads)
        mask = task_support(task_mask, num_tasks)
        return MethodOutput(jax.tree.map(lambda x: trim(x, mask), per_task_grads), state, None)

    return gradient_transform("trimmed_mean", num_tasks, init, apply)
