"""CR-MOGM: correlation-reduced stochastic multi-objective gradient manipulation.

Stochastic gradient-manipulation methods (MGDA, PCGrad, CAGrad, ...) compute their composite
weights from the same noisy mini-batch gradients they combine; the correlation between the two
can keep them from converging. CR-MOGM replaces the instantaneous weights ``λ̂_k`` of any
weighting method by their exponential moving average

``λ_k = β λ_{k−1} + (1 − β) λ̂_k``  (``λ_1 = λ̂_1``),  ``d = Jᵀ λ_k``.

β = 0 recovers the base method. The base keeps its own state (random keys, moving averages).
Under a ``task_mask`` the base runs on the present tasks, absent tasks get weight 0 and keep
their average, and a task's average starts at its first step present.

References:
  Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of Stochastic Multi-Objective
  Gradient Manipulation and Beyond", NeurIPS 2022.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mtljax import linalg
from mtljax.methods import get_method
from mtljax.methods._base import (
    Method,
    MethodOutput,
    check_input_tasks,
    check_num_tasks,
    gradient_transform,
    weights_dtype,
)
from mtljax.solvers._mask import drop_absent, restrict, task_support


class CRMOGMState(NamedTuple):
    base: Any  # the base method's state
    weights: jax.Array  # [T] moving average λ of the base weights
    started: jax.Array  # [T] bool, whether λ_t holds a first value


def cr_mogm(
    num_tasks: int,
    *,
    base: str = "mgda",
    beta: float = 0.9,
    base_kw: dict | None = None,
    **base_hparams,
) -> Method:
    """Exponential moving average of any weighting method's weights.

    Args:
      num_tasks: T.
      base: registry name of the base method; it must return weights (``d = Jᵀ λ̂``).
      beta: β in [0, 1), the weight of the previous average (0: the base method itself).
      base_kw: keyword arguments of the base method's factory, for names that clash with
        CR-MOGM's own (``base``, ``beta``, ``base_kw``).
      **base_hparams: further keyword arguments of the base method's factory.

    Returns:
      A gradient :class:`~mtljax.methods.Method` with the base's level and number of batches;
      a base's ``after_step`` hook (FAMO) is forwarded to the base's state. The average is
      applied to the current Jacobian, ``d = Jᵀ λ``: bases whose weights combine something
      else (MoCo's and DB-MTL's tracked gradients) are not CR-MOGM's setting.
      Extreme scales are handled by the base method. With the MGDA base, a zero gradient gives
      ``d = 0`` exactly (the min-norm point), as MGDA does; the step reports it as a zero
      ``update_norm``.

    Raises:
      ValueError: bad ``beta``, or (when first traced) a base that returns no weights, such as
        GradDrop, whose update is no combination of the task gradients.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}.")
    inner = get_method(base, num_tasks, **(base_kw or {}), **base_hparams)

    def init(params):
        dtype = weights_dtype(params)
        return CRMOGMState(
            inner.init(params),
            jnp.full((num_tasks,), 1.0 / num_tasks, dtype),
            jnp.zeros((num_tasks,), jnp.bool_),
        )

    def apply(per_task_grads, state, params=None, *, task_mask=None, **extra):
        check_input_tasks("cr_mogm", num_tasks, per_task_grads)
        mask = task_support(task_mask, num_tasks)
        out = inner.apply(per_task_grads, state.base, params, task_mask=task_mask, **extra)
        if out.weights is None:
            raise ValueError(
                f"cr_mogm needs a base method that returns task weights; {base!r} returns "
                f"weights=None (its update is no combination Jᵀ w of the task gradients)."
            )
        dtype = weights_dtype(per_task_grads)
        fresh = out.weights.astype(dtype)
        previous = state.weights.astype(dtype)
        averaged = jnp.where(state.started, beta * previous + (1.0 - beta) * fresh, fresh)
        # Absent tasks: weight 0 in this step, and their average and flag are kept.
        kept = jnp.where(mask, averaged.astype(state.weights.dtype), state.weights)
        new_state = CRMOGMState(out.state, kept, state.started | mask)
        averaged = restrict(averaged, mask)
        update = linalg.combine(drop_absent(per_task_grads, task_mask), averaged)
        return MethodOutput(update, new_state, averaged)

    def after_step(state, **kwargs):
        return state._replace(base=inner.after_step(state.base, **kwargs))

    return gradient_transform(
        "cr_mogm",
        num_tasks,
        init,
        apply,
        level=inner.level,
        num_batches=inner.num_batches,
        after_step=None if inner.after_step is None else after_step,
    )
