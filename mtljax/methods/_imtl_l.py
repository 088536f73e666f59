"""IMTL-L: loss balancing with learned scales ``e^{s_t}``.

Each task has a learned scale parameter ``s_t`` and the objective is ``Σ_t e^{s_t} L_t − s_t``.
The step's weights are ``w_t = e^{s_t}``. At the optimum of ``s``, ``e^{s_t} L_t = 1`` for every
task: the scaled losses are equal (impartial), and the weights become ``1/L_t``.

The scales are not model parameters: they live in the method state and take their own optimizer
step each update, on the analytic gradient ``∂f/∂s_t = e^{s_t} L_t − 1`` at the current losses,
after the weights of the step are read.

References:
  Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
  ICLR 2021 (IMTL-L, Section 3.1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtljax.methods._base import (
    Method,
    check_num_tasks,
    loss_weighting,
    losses_dtype,
    require_losses,
)
from mtljax.solvers._mask import keep_absent, restrict, task_support

# e^{±S_MAX} stays finite in float32: a guard against scales drifting without bound (zero
# losses push s up forever), not a constraint active in ordinary training.
S_MAX = 40.0


class IMTLLState(NamedTuple):
    log_scales: jax.Array  # [T], s_t
    opt_state: Any  # optimizer state of log_scales


def imtl_l(
    num_tasks: int,
    *,
    lr: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> Method:
    """IMTL-L with learned log-scales ``s`` (initialised at 0) in the state.

    Args:
      num_tasks: T.
      lr: learning rate of the default optimizer of ``s``, ``optax.adam(lr)``.
      optimizer: optax transformation for ``s``; replaces ``optax.adam(lr)`` when given.
      dtype: dtype of ``s`` and of its optimizer state (use float64 for float64 training).

    Returns:
      A loss-only :class:`~mtljax.methods.Method`; weights ``e^{s}`` in the losses' dtype
      (≥ float32), all 1 at the first step.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")
    tx = optax.adam(lr) if optimizer is None else optimizer

    def init_state():
        log_scales = jnp.zeros((num_tasks,), dtype)
        return IMTLLState(log_scales, tx.init(log_scales))

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        losses = require_losses("imtl_l", num_tasks, task_losses)
        mask = task_support(task_mask, num_tasks)
        s = state.log_scales
        scale = jnp.exp(s)
        weights = restrict(scale.astype(losses_dtype(losses)), mask)
        # Absent tasks: gradient 0 and rows of the state kept (see UW).
        grad = jnp.where(mask, scale * losses.astype(s.dtype) - 1.0, 0.0)
        updates, opt_state = tx.update(grad, state.opt_state, s)
        s = jnp.clip(optax.apply_updates(s, updates), -S_MAX, S_MAX).astype(s.dtype)
        return weights, keep_absent(mask, IMTLLState(s, opt_state), state)

    return loss_weighting("imtl_l", num_tasks, init_state, weights_fn)
