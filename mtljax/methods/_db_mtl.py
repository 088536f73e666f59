"""DB-MTL: dual balancing of loss scales and gradient magnitudes.

Loss-scale balancing: each task descends ``log L_t``, whose gradient is ``g_t / L_t``.
Gradient-magnitude balancing: an exponential moving average ``ĝ_t`` of those gradients is
rescaled so every task contributes the largest task's magnitude:

``ĝ_t ← β_k ĝ_t + (1 − β_k) g_t / (L_t + ε)``,  ``d = Σ_t α_t ĝ_t``,
``α_t = max_s ‖ĝ_s‖ / ‖ĝ_t‖``

with ``β_k = β / k^σ`` at step ``k = 1, 2, ...`` and ``ĝ = 0`` at the start. The moving
average is a ``[T, *p]`` tree (T copies of the shared parameters): this P-sized state is
inherent to DB-MTL. The weights α combine the averaged gradients ``ĝ``, not this step's ``J``.

References:
  Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Tsang & Kwok, "Dual-Balancing for Multi-Task
  Learning", arXiv:2308.12029, 2023.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mtljax import linalg
from mtljax.methods._base import (
    Method,
    MethodOutput,
    check_input_tasks,
    check_num_tasks,
    gradient_transform,
    require_losses,
    row_norms,
    weights_dtype,
)
from mtljax.solvers._mask import drop_absent, keep_absent, restrict, task_support

EPS = 1e-8


class DBMTLState(NamedTuple):
    step: jax.Array  # [] int32, steps taken
    ema: Any  # [T, *p] moving average ĝ of the log-loss gradients, zeros at the start


def db_mtl(num_tasks: int, *, beta: float = 0.9, beta_sigma: float = 0.5) -> Method:
    """Dual-balancing multi-task learning.

    Args:
      num_tasks: T.
      beta: β in [0, 1), the weight of the old average at step 1 (0: no averaging).
      beta_sigma: σ ≥ 0, decay exponent of the factor ``β / k^σ``.

    Returns:
      A :class:`~mtljax.methods.Method` that needs ``task_losses``. Its ``weights`` are α, the
      weights of the averaged gradients ``ĝ`` (not of ``J``); all are ≥ 1 and the largest-norm
      task has weight 1. Norms under ε = 1e-8 times the largest are raised to it (LibMTL adds
      an absolute ε instead, which breaks the scale invariance for small gradients), so
      ``‖α_t ĝ_t‖ ≤ max_s ‖ĝ_s‖``; zero gradients give ``d = 0``. Losses are clipped at 0
      before adding ε, so zero or negative losses give large but finite log-loss gradients.
      Norms are computed row by row without over- or underflow, so ``d`` is finite and of degree
      1 at any float32 scale.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}.")
    if not beta_sigma >= 0:
        raise ValueError(f"beta_sigma must be >= 0, got {beta_sigma!r}.")

    def init(params):
        ema = jax.tree.map(lambda p: jnp.zeros((num_tasks, *p.shape), p.dtype), params)
        return DBMTLState(jnp.zeros((), jnp.int32), ema)

    def apply(per_task_grads, state, params=None, *, task_losses=None, task_mask=None, **extra):
        del params, extra
        check_input_tasks("db_mtl", num_tasks, per_task_grads)
        mask = task_support(task_mask, num_tasks)
        per_task_grads = drop_absent(per_task_grads, task_mask)
        dtype = weights_dtype(per_task_grads)
        losses = require_losses("db_mtl", num_tasks, task_losses).astype(dtype)
        losses = restrict(losses, mask, 1.0)
        step = state.step + 1
        beta_k = beta / step.astype(dtype) ** beta_sigma
        inv_loss = 1.0 / (jnp.maximum(losses, 0.0) + EPS)

        def average(m, g):
            log_grad = g * inv_loss.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
            return (log_grad + beta_k * (m - log_grad)).astype(m.dtype)

        # Absent tasks keep their averages and get α = 0; the largest norm is the present ones'.
        ema = keep_absent(mask, jax.tree.map(average, state.ema, per_task_grads), state.ema)
        norms = restrict(row_norms(ema).astype(dtype), mask)
        largest = jnp.max(norms)
        # The paper's α = max‖ĝ‖ / ‖ĝ_t‖ is scale-free; the guard is relative to the largest
        # norm (not an absolute ε) so that d stays linear in J, and zero rows get α = 1/EPS.
        floor = jnp.maximum(EPS * largest, jnp.finfo(dtype).tiny)
        alpha = restrict(largest / jnp.maximum(norms, floor), mask)
        return MethodOutput(linalg.combine(ema, alpha), DBMTLState(step, ema), alpha)

    return gradient_transform("db_mtl", num_tasks, init, apply)
