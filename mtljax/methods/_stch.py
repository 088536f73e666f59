"""Smooth Tchebycheff scalarisation (STCH) with a nadir point from a warm-up phase.

The Tchebycheff scalarisation ``max_t λ_t (L_t − z_t)`` is smoothed into
``f = μ log Σ_t exp(λ_t (L_t − z_t) / μ)``, which tends to the max as ``μ → 0``. In the paper's
multi-task experiments the losses are first normalised by a nadir point ``z`` (the average loss
over a calibration window at the end of a warm-up) and taken in log space:
``u_t = log(L_t / z_t)``, ``f = T μ log Σ_t exp(u_t / μ)``. The weights are the gradient of ``f``
with respect to the losses, ``w_t = T softmax(u / μ)_t / L_t`` (``transform="log"``), or, with
``u_t = (L_t − z_t) / z_t`` (``transform="linear"``), ``w_t = T softmax(u / μ)_t / z_t``.

During the warm-up (``warmup_steps`` steps) the method trains with the sum of log losses
(``w_t = 1/L_t``, as the authors' MTL code does) or with equal weights (``warmup="ew"``), and
averages the losses of the last ``nadir_steps`` warm-up steps into ``z``.

Under a ``task_mask`` the softmax (and its factor T) runs over the K present tasks, and a
task's nadir averages the window steps it was present; a task absent through the whole window
takes its first loss after it as its nadir.

References:
  Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective
  Optimization", ICML 2024, arXiv:2402.19078.
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

WARMUPS = ("log", "ew")
TRANSFORMS = ("log", "linear")


class STCHState(NamedTuple):
    step: jax.Array  # [] int32, steps taken
    loss_sum: jax.Array  # [T], sum of the losses over the nadir window
    counts: jax.Array  # [T] int32, losses summed in loss_sum (steps each task was present)


def stch(
    num_tasks: int,
    *,
    warmup_steps: int,
    mu: float = 1.0,
    nadir_steps: int | None = None,
    warmup: str = "log",
    transform: str = "log",
    eps: float = 1e-12,
    dtype: jnp.dtype = jnp.float32,
) -> Method:
    """Smooth Tchebycheff scalarisation of nadir-normalised losses.

    Args:
      num_tasks: T.
      warmup_steps: steps before the STCH phase (the paper: 4 warm-up epochs plus one
        calibration epoch), at least 1.
      mu: smoothing parameter μ > 0 (LibMTL default 1.0); smaller is closer to the max.
      nadir_steps: length of the window at the end of the warm-up whose average loss is the
        nadir point; defaults to ``warmup_steps`` (the whole warm-up). The paper averages
        over the last warm-up epoch.
      warmup: weights during the warm-up: ``"log"`` (``1/L_t``, the authors' code, default)
        or ``"ew"`` (1).
      transform: ``"log"`` (default, the paper's MTL experiments) or ``"linear"``, see the
        module docstring.
      eps: floor on losses and on the nadir point, so that zero losses stay finite.
      dtype: dtype of the accumulated losses in the state.

    Returns:
      A loss-only :class:`~mtljax.methods.Method`; weights in the losses' dtype (≥ float32).
      After the warm-up the weights times ``L`` (log) or ``z`` (linear) sum to T.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be a positive integer, got {warmup_steps!r}.")
    nadir_steps = warmup_steps if nadir_steps is None else nadir_steps
    if not isinstance(nadir_steps, int) or not 1 <= nadir_steps <= warmup_steps:
        raise ValueError(
            f"nadir_steps must be an integer in [1, warmup_steps], got {nadir_steps!r}."
        )
    if not mu > 0:
        raise ValueError(f"mu must be positive, got {mu!r}.")
    if warmup not in WARMUPS:
        raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}.")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}.")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}.")

    def init_state():
        zeros = jnp.zeros((num_tasks,), jnp.int32)
        return STCHState(jnp.zeros((), jnp.int32), jnp.zeros((num_tasks,), dtype), zeros)

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        losses = require_losses("stch", num_tasks, task_losses)
        mask = task_support(task_mask, num_tasks)
        out_dtype = losses_dtype(losses)
        work = jnp.promote_types(out_dtype, dtype)
        safe = jnp.maximum(restrict(losses.astype(work), mask, 1.0), eps)
        # The nadir is the average over the window steps a task was present. A task absent
        # through the whole window takes its first loss after it (u_t = 0 at that step).
        seen = state.counts > 0
        average = state.loss_sum.astype(work) / jnp.maximum(state.counts, 1).astype(work)
        nadir = jnp.maximum(jnp.where(seen, average, safe), eps)
        if transform == "log":
            u, slope = jnp.log(safe) - jnp.log(nadir), 1.0 / safe
        else:
            u, slope = safe / nadir - 1.0, 1.0 / nadir
        # Clipping keeps the softmax finite when u / μ overflows (tiny μ, extreme losses).
        big = jnp.finfo(work).max
        logits = jnp.clip(u / mu, -big, big)
        stch_weights = num_present(mask, work) * masked_softmax(logits, mask) * slope
        warm_weights = 1.0 / safe if warmup == "log" else jnp.ones_like(safe)
        weights = restrict(jnp.where(state.step >= warmup_steps, stch_weights, warm_weights), mask)

        in_window = (state.step >= warmup_steps - nadir_steps) & (state.step < warmup_steps)
        record = (in_window | (state.step >= warmup_steps) & ~seen) & mask
        loss_sum = state.loss_sum + jnp.where(record, losses.astype(dtype), 0.0)
        counts = state.counts + record
        return weights.astype(out_dtype), STCHState(state.step + 1, loss_sum, counts)

    return loss_weighting("stch", num_tasks, init_state, weights_fn)
