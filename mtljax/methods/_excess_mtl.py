"""ExcessMTL: robust task weighting by estimated excess risks.

Tasks are weighted by how far they are from convergence rather than by their loss, so a task
with label noise (a large Bayes error) does not take over. A second-order Taylor expansion
around the task's optimum estimates its excess risk as ``e_t ≈ g_tᵀ H_t⁻¹ g_t``, with ``H_t``
the AdaGrad-style diagonal ``diag(sqrt(Σ_{s≤k} g_{t,s}² + ε))`` accumulated over the steps.
Each ``e_t`` is divided by its value at the first step (scale normalisation), and the weights
take an exponentiated-gradient (multiplicative weights) step on the simplex:

``w_t ← w_t exp(η e_t / e_t⁰) / Σ_s w_s exp(η e_s / e_s⁰)``,  ``d = Jᵀ w``.

The first step only records ``e⁰`` and keeps the uniform weights. The accumulator is a
``[T, *p]`` tree (T copies of the shared parameters): this P-sized state is inherent to the
method's diagonal Hessian estimate.

References:
  He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning with Excess
  Risks", ICML 2024, arXiv:2402.02009.
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
    weights_dtype,
)
from mtljax.methods._ew import REDUCTIONS
from mtljax.solvers._mask import (
    drop_absent,
    keep_absent,
    masked_softmax,
    num_present,
    present_max,
    task_support,
)

EPS = 1e-7
MAX_RATIO = 1e6  # bound on e_t / e_t⁰ so that one step cannot overflow the log-weights


class ExcessMTLState(NamedTuple):
    step: jax.Array  # [] int32, steps taken
    grad_sq_sum: Any  # [T, *p] accumulated squared per-task gradients Σ_s g_{t,s}²
    baseline: jax.Array  # [T] excess risks e⁰ at the first step each task is present
    log_weights: jax.Array  # [T] log of the simplex weights (uniform at the start)
    recorded: jax.Array  # [T] bool, whether baseline holds the task's e⁰


def excess_mtl(
    num_tasks: int, *, robust_step_size: float = 1.0, reduction: str = "mean"
) -> Method:
    """Excess-risk weighting with an AdaGrad diagonal Hessian estimate.

    Args:
      num_tasks: T.
      robust_step_size: η > 0, the exponentiated-gradient step size of the weights.
      reduction: ``"mean"`` (default, the paper: weights on the simplex, sum 1) or ``"sum"``
        (weights sum to T, as LibMTL and the official code).

    Returns:
      A :class:`~mtljax.methods.Method` with ``d = Jᵀ w``. A task whose first-step excess risk
      is zero (zero gradient) keeps ratio 0; ratios are capped at 1e6. Weights stay positive.
      Under a ``task_mask`` the weights lie on the simplex of the present tasks, absent tasks'
      accumulators and log-weights are kept, and ``e_t⁰`` is recorded at the first step task
      t is present.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not robust_step_size > 0:
        raise ValueError(f"robust_step_size must be positive, got {robust_step_size!r}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")

    def init(params):
        dtype = weights_dtype(params)
        acc = jax.tree.map(
            lambda p: jnp.zeros((num_tasks, *p.shape), jnp.promote_types(p.dtype, jnp.float32)),
            params,
        )
        zeros = jnp.zeros((num_tasks,), dtype)
        recorded = jnp.zeros((num_tasks,), bool)
        return ExcessMTLState(jnp.zeros((), jnp.int32), acc, zeros, zeros, recorded)

    def apply(per_task_grads, state, params=None, *, task_losses=None, task_mask=None, **extra):
        del params, task_losses, extra
        check_input_tasks("excess_mtl", num_tasks, per_task_grads)
        mask = task_support(task_mask, num_tasks)
        # Absent rows are zero gradients here; their rows of the state are kept below.
        per_task_grads = drop_absent(per_task_grads, task_mask)
        dtype = state.log_weights.dtype
        acc = jax.tree.map(
            lambda a, g: a + jnp.square(g.astype(a.dtype)), state.grad_sq_sum, per_task_grads
        )

        def excess(a, g):
            g = g.astype(a.dtype)
            return jnp.sum((jnp.square(g) / jnp.sqrt(a + EPS)).reshape(g.shape[0], -1), axis=1)

        risks = sum(jax.tree.leaves(jax.tree.map(excess, acc, per_task_grads))).astype(dtype)
        first = ~state.recorded
        baseline = jnp.where(first, risks, state.baseline)
        ok = baseline > jnp.finfo(dtype).tiny
        ratio = jnp.where(ok, risks / jnp.where(ok, baseline, 1.0), 0.0)
        log_w = state.log_weights + jnp.where(
            first, 0.0, robust_step_size * jnp.minimum(ratio, MAX_RATIO)
        )
        log_w = log_w - present_max(log_w, mask)
        # The simplex of the K present tasks (sum 1, or K with reduction="sum").
        total = 1.0 if reduction == "mean" else num_present(mask, dtype)
        weights = total * masked_softmax(log_w, mask)
        new_state = ExcessMTLState(state.step + 1, acc, baseline, log_w, state.recorded | mask)
        new_state = keep_absent(mask, new_state, state)
        return MethodOutput(linalg.combine(per_task_grads, weights), new_state, weights)

    return gradient_transform("excess_mtl", num_tasks, init, apply)
