"""Which tasks take part in a step: presence, finiteness and the task mask.

A task takes part when it is *present* (the loss function's ``aux["present"]``, default all
true: at least one labelled example in the batch; OR-ed over the data axis) and, under the
``"drop_task"`` policy, *finite* (its loss and gradient rows hold no NaN/Inf). The method then
sees ``task_mask = active``: an inactive task's row does not exist for it (weight 0, the other
tasks' weights as on the sub-problem without it), never a zero gradient fed in as a task.

Rows that are both non-finite and inactive are zeroed before they reach ``Jᵀw`` (``0 · NaN``
would be NaN); the check itself is cheap: Gram-space methods read it off ``diag(G)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mtljax.step import collectives
from mtljax.step.context import StepContext


class TaskStatus(NamedTuple):
    """Per-task flags of one step, all ``[T]`` bool."""

    present: jax.Array  # the task has labels in the (global) batch
    nonfinite: jax.Array  # present, with a non-finite loss or gradient row
    active: jax.Array  # the method's task_mask


def split_presence(ctx: StepContext, aux) -> tuple[jax.Array | None, Any]:
    """``aux["present"]`` as a ``[T]`` bool vector (``None`` when absent) and the rest of aux."""
    if not isinstance(aux, Mapping) or "present" not in aux:
        return None, aux
    rest = {k: v for k, v in aux.items() if k != "present"}
    present = aux["present"]
    if isinstance(present, Mapping):
        present = ctx.tasks.stack_losses(present)
    present = jnp.asarray(present)
    if present.shape != (ctx.num_tasks,):
        raise ValueError(f'aux["present"] must have shape ({ctx.num_tasks},) for tasks '
                         f"{list(ctx.tasks.names)}, got {present.shape}.")
    return present.astype(bool), rest


def task_status(ctx: StepContext, finite: jax.Array, present: jax.Array | None) -> TaskStatus:
    """The step's :class:`TaskStatus` from per-task finiteness and (local) presence."""
    if present is None:
        present = jnp.ones_like(finite)
    else:
        parallel = ctx.options.parallel
        if parallel.data_axis is not None and not parallel.local:
            present = collectives.any_device(present, parallel.data_axis)
    nonfinite = present & ~finite
    drop = ctx.options.nonfinite == "drop_task"
    return TaskStatus(present, nonfinite, present & finite if drop else present)


def needs_row_masks(ctx: StepContext, present: jax.Array | None) -> bool:
    """Whether some inactive row may be non-finite (decided at trace time)."""
    return ctx.options.nonfinite == "drop_task" or present is not None


def kept_rows(status: TaskStatus, finite: jax.Array) -> jax.Array:
    """Rows that may enter ``Jᵀw`` unchanged: active or finite."""
    return status.active | finite


def safe_losses(losses: jax.Array, status: TaskStatus) -> jax.Array:
    """The losses the method sees: 1 in place of an inactive or non-finite task's loss."""
    return jnp.where(status.active & jnp.isfinite(losses), losses, jnp.ones_like(losses))


def row_finite(tree, size: int) -> jax.Array:
    """``[size]``: whether each row (leading axis) of every leaf is finite."""
    # Reduce over the leaf's own axes: a reshape first makes XLA:CPU copy the Jacobian.
    parts = [jnp.all(jnp.isfinite(x), axis=tuple(range(1, x.ndim)))
             for x in jax.tree.leaves(tree)]
    # An empty tree (a model without task-specific parameters) has no bad rows.
    return jnp.stack(parts).all(0) if parts else jnp.ones((size,), bool)


def mask_columns(tree, keep: jax.Array):
    """Zeroes the task columns (trailing axis) of every leaf where ``keep`` is false."""
    return jax.tree.map(lambda x: jnp.where(keep, x, jnp.zeros_like(x)), tree)


def mask_gram(gram: jax.Array, keep: jax.Array) -> jax.Array:
    """Zeroes the rows and columns of ``G`` where ``keep`` is false."""
    return jnp.where(keep[:, None] & keep[None, :], gram, jnp.zeros_like(gram))
