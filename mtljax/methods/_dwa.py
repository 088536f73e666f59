"""Dynamic weight average (DWA): weights from the rate of change of per-epoch losses.

With ``L̄_t(e)`` the average loss of task t over epoch ``e``, the weights of every step of epoch
``e ≥ 2`` are ``w_t = T softmax(r / τ)_t`` with ``r_t = L̄_t(e−1) / L̄_t(e−2)``; the first two
epochs use ``w_t = 1``. Tasks whose loss decreased slowly get more weight. Epochs are counted in
steps: a boundary every ``steps_per_epoch`` steps. The default ``steps_per_epoch=1`` uses the
ratios of the last two steps' losses (per-step DWA), so the method builds without knowing the
data; pass the loader's steps per epoch for the paper's per-epoch averages.

Under a ``task_mask`` the weights are those of the present tasks, ``w = K softmax(r / τ)`` over
the K present ones, and a task's epoch average is over the steps it was present; a task present
in no step of an epoch keeps its two averages (the epoch boundary itself is shared).

References:
  Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
  arXiv:1803.10704.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtljax.methods._base import (
    Method,
    check_num_tasks,
    loss_weighting,
    losses_dtype,
    require_losses,
)
from mtljax.solvers._mask import masked_softmax, num_present, restrict, task_support


class DWAState(NamedTuple):
    step: jax.Array  # [] int32, steps taken
    loss_sum: jax.Array  # [T], sum of the losses of the current epoch so far
    counts: jax.Array  # [T] int32, steps of the current epoch each task was present
    last: jax.Array  # [T], L̄(e−1), average loss of the previous epoch
    before_last: jax.Array  # [T], L̄(e−2)


def dwa(
    num_tasks: int,
    *,
    steps_per_epoch: int = 1,
    temperature: float = 2.0,
    dtype: jnp.dtype = jnp.float32,
) -> Method:
    """Dynamic weight average over per-epoch average losses.

    Args:
      num_tasks: T.
      steps_per_epoch: steps per epoch (the epoch boundary), at least 1. The default 1
        makes every step an "epoch": weights from step 3 on use ``L_t(k−1) / L_t(k−2)``.
      temperature: softmax temperature τ (the paper uses 2).
      dtype: dtype of the accumulated losses in the state.

    Returns:
      A loss-only :class:`~mtljax.methods.Method`; weights sum to T (the paper's and LibMTL's
      convention), in the losses' dtype (≥ float32). A zero previous-previous epoch average
      gives the ratio 1 for that task.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}.")

    def init_state():
        zeros = jnp.zeros((num_tasks,), dtype)
        counts = jnp.zeros((num_tasks,), jnp.int32)
        return DWAState(jnp.zeros((), jnp.int32), zeros, counts, zeros, zeros)

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        losses = require_losses("dwa", num_tasks, task_losses)
        mask = task_support(task_mask, num_tasks)
        out_dtype = losses_dtype(losses)
        big = jnp.finfo(dtype).max
        ok = state.before_last > jnp.finfo(dtype).tiny
        ratio = jnp.where(ok, state.last / jnp.where(ok, state.before_last, 1.0), 1.0)
        # A ratio overflowing to inf would make the softmax NaN; any finite cap keeps the order.
        logits = jnp.minimum(ratio / temperature, big)
        weights = jnp.where(
            state.step >= 2 * steps_per_epoch,
            num_present(mask, dtype) * masked_softmax(logits, mask),
            restrict(jnp.ones((num_tasks,), dtype), mask),
        ).astype(out_dtype)

        loss_sum = state.loss_sum + restrict(losses.astype(dtype), mask)
        counts = state.counts + mask
        boundary = (state.step + 1) % steps_per_epoch == 0
        rolls = boundary & (counts > 0)
        average = loss_sum / jnp.maximum(counts, 1).astype(dtype)
        new_state = DWAState(
            state.step + 1,
            jnp.where(boundary, jnp.zeros_like(loss_sum), loss_sum),
            jnp.where(boundary, jnp.zeros_like(counts), counts),
            jnp.where(rolls, average, state.last),
            jnp.where(rolls, state.last, state.before_last),
        )
        return weights, new_state

    return loss_weighting("dwa", num_tasks, init_state, weights_fn)
