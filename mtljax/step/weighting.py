"""The method stage of the Jacobian engines: from per-task rows (or their Gram matrix) to the
method's weights, state and shared update, the heads' update and the diagnostics.

T-sized methods (loss-only, and Gram-space methods built with ``gram_weighting``) see
``task_losses``, ``task_mask`` and, for Gram-space ones, ``G = J Jᵀ``; the step then forms
``Jᵀw`` itself. Other gradient methods get the rows through ``method.apply``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mtljax import linalg
from mtljax.diagnostics import gram_diagnostics
from mtljax.step import status as st
from mtljax.step.context import StepContext


class TaskJacobian(NamedTuple):
    """Per-task gradients: ``shared`` rows ``[T, *p]`` (or ``columns`` ``[*p, T]``, the same
    rows stored task-last, in which case ``shared`` is ``None``) and ``heads`` rows ``[T, *h]``."""

    shared: Any
    heads: Any
    columns: Any = None

    def gram(self) -> jax.Array:
        """``G = J Jᵀ`` of the shared rows, ``[T, T]``."""
        if self.columns is not None:
            return linalg.gram_of_columns(self.columns)
        return linalg.gram(self.shared)

    def combine_shared(self, weights: jax.Array):
        """``Jᵀ w`` of the shared rows."""
        if self.columns is not None:
            return linalg.combine_columns(self.columns, weights)
        return linalg.combine(self.shared, weights)

    def masked(self, keep: jax.Array) -> TaskJacobian:
        """The Jacobian with the rows where ``keep`` is false set to zero."""
        return TaskJacobian(
            None if self.shared is None else linalg.zero_rows(self.shared, keep),
            linalg.zero_rows(self.heads, keep),
            None if self.columns is None else st.mask_columns(self.columns, keep),
        )


class MethodResult(NamedTuple):
    """What the method stage returns."""

    weights: jax.Array | None  # [T]; None for a method that is no weighting
    state: Any
    direction: Any  # the shared update, shaped like one task's gradient


def t_sized_weights(ctx: StepContext, state, losses, status: st.TaskStatus, gram=None):
    """``(w, state)`` of a loss-only or Gram-space method; inactive tasks get weight 0."""
    kw = dict(task_losses=st.safe_losses(losses, status), task_mask=status.active)
    if ctx.method.kind == "loss":
        weights, state = ctx.method.loss_weights(state, **kw)
    else:
        weights, state = ctx.method.gram_weights(gram, state, **kw)
    return jnp.where(status.active, weights, jnp.zeros_like(weights)), state


def run_method(ctx: StepContext, state, shared_params, losses, status, jac: TaskJacobian,
               gram, extra) -> MethodResult:
    """The method on the rows: T-sized methods from ``G`` (or the losses), others by apply."""
    if ctx.method.kind == "loss" or ctx.gram_space:
        weights, state = t_sized_weights(ctx, state, losses, status, gram)
        return MethodResult(weights, state, jac.combine_shared(weights))
    out = ctx.method.apply(jac.shared, state, shared_params, task_losses=st.safe_losses(
        losses, status), task_mask=status.active, **extra)
    return MethodResult(out.weights, out.state, out.updates)


def head_coefficients(ctx: StepContext, weights, status: st.TaskStatus, dtype) -> jax.Array:
    """``c`` of the heads' update ``Σ_t c_t ∇L_t``: the weights or 1, 0 for inactive tasks."""
    if ctx.options.weight_heads and weights is not None:
        coefficients = weights
    else:
        coefficients = jnp.ones((ctx.num_tasks,), dtype)
    return jnp.where(status.active, coefficients, jnp.zeros_like(coefficients))


def diagnostics(jac: TaskJacobian, gram, result: MethodResult) -> dict:
    """:func:`mtljax.diagnostics.gram_diagnostics` of the step (T-sized when ``d = Jᵀw``)."""
    if result.weights is not None:
        w = result.weights.astype(gram.dtype)
        return gram_diagnostics(gram, gram @ w, w @ gram @ w)
    task_dots = linalg.dots(jac.shared, result.direction)
    sq_norm = linalg.squared_norms(jax.tree.map(lambda x: x[None], result.direction))[0]
    return gram_diagnostics(gram, task_dots, sq_norm)
