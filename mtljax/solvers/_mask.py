"""Task masks: the support of a step's method when some tasks are absent from the batch.

A step may see only K of the T tasks (a task without a labelled example in the batch, a task
whose loss is not finite). The train step then passes ``task_mask`` (``[T]`` bool) to the
method, which solves the problem of the present tasks only: their weights and the update equal
those of the same method built for K tasks and run on their rows, absent tasks get weight
exactly 0, and absent tasks' per-task state is left as it was. Shapes stay static (T inside
``jit``): absent entries are *selected* away with ``where``, never multiplied by 0, so NaN or
inf in an absent task's gradient or loss cannot leak, and every T-sized solver takes the mask
as the support of its variables (the simplex, the dual cone's constraints, the α-fair system
restricted to the present tasks).

Example:
  >>> import jax.numpy as jnp
  >>> mask = jnp.array([True, False, True])
  >>> restrict_gram(jnp.full((3, 3), jnp.nan), mask)[1].tolist()
  [0.0, 0.0, 0.0]
  >>> masked_softmax(jnp.array([0.0, 5.0, 0.0]), mask).tolist()
  [0.5, 0.0, 0.5]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mtljax import linalg


def task_support(task_mask, num_tasks: int) -> jax.Array:
    """``task_mask`` as a ``[T]`` bool array; all True when it is None (every task present).

    Raises:
      ValueError: a mask that is not a boolean array of shape ``(T,)`` (trace time).
    """
    if task_mask is None:
        return jnp.ones((num_tasks,), bool)
    mask = jnp.asarray(task_mask)
    if mask.shape != (num_tasks,) or mask.dtype != jnp.bool_:
        raise ValueError(
            f"task_mask must be a boolean array of shape ({num_tasks},), got {mask.dtype} "
            f"{mask.shape}."
        )
    return mask


def num_present(mask: jax.Array, dtype) -> jax.Array:
    """K, the number of present tasks, as a scalar of ``dtype``."""
    return jnp.sum(mask).astype(dtype)


def restrict_gram(gram: jax.Array, mask: jax.Array) -> jax.Array:
    """The Gram matrix of the present tasks, absent rows and columns set to 0 (``[T, T]``)."""
    return jnp.where(mask[:, None] & mask[None, :], gram, 0.0)


def restrict(values: jax.Array, mask: jax.Array, fill=0.0) -> jax.Array:
    """``values`` on the present tasks, ``fill`` on the absent ones (e.g. a neutral loss)."""
    return jnp.where(mask, values, jnp.asarray(fill, values.dtype))


def present_max(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The largest present entry of ``values`` (0 when no task is present)."""
    return jnp.where(mask.any(), jnp.max(jnp.where(mask, values, -jnp.inf)), 0.0)


def masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the present entries, 0 on the absent ones (all 0 when none is present).

    With every entry present it is ``jax.nn.softmax`` (the same operations).
    """
    exp = jnp.where(mask, jnp.exp(logits - present_max(logits, mask)), 0.0)
    total = jnp.sum(exp)
    return jnp.where(mask, exp / jnp.where(total > 0, total, 1.0), 0.0)


def restrict_simplex(weights: jax.Array, mask: jax.Array) -> jax.Array:
    """A point of the simplex over T tasks, restricted to the present ones and renormalised.

    The conditional distribution on the present tasks: this is where a method that keeps
    simplex weights in its state (MoCo, SDMGrad, MoDo) starts a masked step. Uniform over the
    present tasks when their weights sum to 0; all 0 when none is present; ``weights``
    unchanged (not renormalised) when every task is present.
    """
    present = jnp.where(mask, weights, 0.0)
    total = jnp.sum(present)
    uniform = jnp.where(mask, 1.0 / jnp.maximum(jnp.sum(mask), 1), 0.0).astype(weights.dtype)
    restricted = jnp.where(total > 0, present / jnp.where(total > 0, total, 1.0), uniform)
    return jnp.where(jnp.all(mask), weights, restricted)


def _rows(mask: jax.Array, leaf: jax.Array) -> jax.Array:
    return mask.reshape((-1,) + (1,) * (leaf.ndim - 1))


def _per_task(leaf: Any, num_tasks: int) -> bool:
    return jnp.ndim(leaf) >= 1 and jnp.shape(leaf)[0] == num_tasks


def keep_absent(mask: jax.Array, new: Any, old: Any) -> Any:
    """A state update that leaves the absent tasks' rows as they were.

    Every leaf with a leading task axis (``[T]``, ``[T, T]``, ``[T, *p]``) takes ``new`` on the
    present tasks' rows and ``old`` on the absent ones; other leaves (step counters, PRNG keys,
    optimizer counts) are shared state and take ``new``. ``new`` and ``old`` have the same
    tree structure.
    """
    num_tasks = mask.shape[0]

    def one(a, b):
        if not _per_task(a, num_tasks) or jnp.shape(a) != jnp.shape(b):
            return a
        return jnp.where(_rows(mask, a), a, b)

    return jax.tree.map(one, new, old)


def drop_absent(per_task: Any, task_mask) -> Any:
    """A per-task tree ``[T, *p]`` with the absent tasks' rows set to 0 (by ``where``).

    ``task_mask`` None (every task present) returns the tree unchanged. Combining the result
    with weights that are 0 on the absent tasks gives a finite update even when their rows
    hold NaN.
    """
    if task_mask is None:
        return per_task
    mask = task_support(task_mask, jnp.shape(jax.tree.leaves(per_task)[0])[0])
    return linalg.zero_rows(per_task, mask)
