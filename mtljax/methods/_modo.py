"""MoDo: multi-objective gradient with double sampling.

A stochastic MGDA that takes one projected gradient step on the MGDA dual per iteration, with
an unbiased estimate of its gradient ``J Jᵀ λ`` from two independent mini-batches:

``λ ← Π_Δ(λ − γ (J_{z1} J_{z2}ᵀ + ρ I) λ)``, then ``d = J_{z3}ᵀ λ``

with a third independent batch ``z3`` for the update. The train step passes ``J_{z3}`` (the
first batch of the tuple) as ``per_task_grads`` and ``(J_{z1}, J_{z2})`` as
``extra_per_task_grads``. ρ > 0 makes the dual strongly convex. Under a ``task_mask`` the step
runs on the simplex of the present tasks, from the present part of λ (renormalised); absent
tasks keep theirs.

References:
  Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
  Generalization and Conflict-Avoidance", NeurIPS 2023, arXiv:2305.20057.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtljax import linalg
from mtljax.methods._base import (
    Method,
    MethodOutput,
    check_input_tasks,
    check_num_tasks,
    gradient_transform,
    scaled_rows,
    unscaled_gram,
    weights_dtype,
)
from mtljax.methods._sdmgrad import cross_gram, extra_grads
from mtljax.solvers import project_simplex
from mtljax.solvers._mask import (
    drop_absent,
    present_max,
    restrict_gram,
    restrict_simplex,
    task_support,
)


class MoDoState(NamedTuple):
    weights: jax.Array  # [T] λ on the simplex


def modo(num_tasks: int, *, gamma: float = 1e-3, rho: float = 0.1) -> Method:
    """Multi-objective gradient with double sampling (three batches per step).

    Args:
      num_tasks: T.
      gamma: γ > 0, the step size of the λ update (absolute: it multiplies ``J Jᵀ``, so it
        depends on the gradients' scale, as in the paper).
      rho: ρ ≥ 0, the ℓ2 regularisation of the λ subproblem.

    Returns:
      A :class:`~mtljax.methods.Method` with ``num_batches=3``; weights ``λ`` lie on the
      simplex (uniform at the start) and apply to the update batch: ``d = J_{z3}ᵀ λ``.
      The cross Gram is formed from rows rescaled by a power of two and scaled back; where it
      would pass the float range it is capped uniformly (same direction), so ``λ`` stays finite
      and lands on a vertex as the true, enormous step would.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}.")
    if not rho >= 0:
        raise ValueError(f"rho must be >= 0, got {rho!r}.")

    def init(params):
        dtype = weights_dtype(params)
        return MoDoState(jnp.full((num_tasks,), 1.0 / num_tasks, dtype))

    def apply(
        per_task_grads, state, params=None, *, task_losses=None, extra_per_task_grads=None,
        task_mask=None, **extra,
    ):
        del params, task_losses, extra
        check_input_tasks("modo", num_tasks, per_task_grads)
        z1, z2 = extra_grads("modo", num_tasks, per_task_grads, extra_per_task_grads, 2)
        mask = task_support(task_mask, num_tasks)
        dtype = weights_dtype(per_task_grads)
        # Under a mask: the step on the present tasks' simplex, from the present part of the
        # last λ; absent tasks keep their λ.
        # Absent rows (NaN allowed) are dropped before they can set the scale or the cap.
        rows, scale = scaled_rows(drop_absent((z1, z2), task_mask))
        cross = unscaled_gram(restrict_gram(cross_gram(*rows).astype(dtype), mask), scale)
        lam = restrict_simplex(state.weights.astype(dtype), mask)
        step = lam - gamma * (cross @ lam + rho * lam)
        # Π_Δ(v) = Π_Δ(v − c·1): shifting by the max keeps huge steps exact in float32.
        lam = project_simplex(step - present_max(step, mask), mask=mask)
        kept = jnp.where(mask, lam.astype(state.weights.dtype), state.weights)
        update = linalg.combine(drop_absent(per_task_grads, task_mask), lam)
        return MethodOutput(update, MoDoState(kept), lam)

    return gradient_transform("modo", num_tasks, init, apply, num_batches=3)
