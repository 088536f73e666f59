"""Uncertainty weighting (UW): task weights from learned homoscedastic uncertainties.

Each task has a learned log-variance ``s_t = log σ_t²`` and the objective is
``Σ_t (1/(2σ_t²)) L_t + log σ_t = Σ_t ½ e^{−s_t} L_t + ½ s_t`` (Kendall et al.'s regression form,
also LibMTL's), or ``Σ_t e^{−s_t} L_t + s_t`` with ``form="full"``. The step's weights are the
coefficients of the losses, ``w_t = ½ e^{−s_t}`` (or ``e^{−s_t}``).

The log-variances are not model parameters: they live in the method state and take their own
optimizer step each update, on the analytic gradient ``∂f/∂s_t = c (1 − e^{−s_t} L_t)``
(``c = ½`` or 1) at the current losses, after the weights of the step are read. Both forms have
the same fixed point ``e^{s_t} = L_t``, where ``w_t L_t`` is constant across tasks.

References:
  Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
  Geometry and Semantics", CVPR 2018, arXiv:1705.07115.
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

FORMS = ("half", "full")
# e^{±S_MAX} stays finite in float32: a guard against log-variances drifting without bound
# (zero losses push s down forever), not a constraint active in ordinary training.
S_MAX = 40.0


class UWState(NamedTuple):
    log_vars: jax.Array  # [T], s_t = log σ_t²
    opt_state: Any  # optimizer state of log_vars


def uw(
    num_tasks: int,
    *,
    lr: float = 1e-3,
    form: str = "half",
    init: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> Method:
    """Uncertainty weighting with learned log-variances ``s`` in the state.

    Args:
      num_tasks: T.
      lr: learning rate of the default optimizer of ``s``, ``optax.adam(lr)``.
      form: ``"half"`` (default; ``½ e^{−s} L + ½ s``, Kendall et al. and LibMTL) or
        ``"full"`` (``e^{−s} L + s``, a common re-implementation; weights twice as large).
      init: initial log-variance of every task (LibMTL starts at −0.5).
      optimizer: optax transformation for ``s``; replaces ``optax.adam(lr)`` when given.
      dtype: dtype of ``s`` and of its optimizer state (use float64 for float64 training).

    Returns:
      A loss-only :class:`~mtljax.methods.Method`; weights in the losses' dtype (≥ float32).
    """
    num_tasks = check_num_tasks(num_tasks)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")
    if not abs(init) < S_MAX:
        raise ValueError(f"init must lie in (-{S_MAX}, {S_MAX}), got {init!r}.")
    tx = optax.adam(lr) if optimizer is None else optimizer
    coef = 0.5 if form == "half" else 1.0

    def init_state():
        log_vars = jnp.full((num_tasks,), init, dtype)
        return UWState(log_vars, tx.init(log_vars))

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        losses = require_losses("uw", num_tasks, task_losses)
        mask = task_support(task_mask, num_tasks)
        s = state.log_vars
        scale = coef * jnp.exp(-s)
        weights = restrict(scale.astype(losses_dtype(losses)), mask)
        # Absent tasks' gradients are 0 (their losses may hold anything) and their rows of the
        # state are kept: the optimizer of s sees the present tasks' problem only.
        grad = jnp.where(mask, coef - scale * losses.astype(s.dtype), 0.0)
        updates, opt_state = tx.update(grad, state.opt_state, s)
        s = jnp.clip(optax.apply_updates(s, updates), -S_MAX, S_MAX).astype(s.dtype)
        return weights, keep_absent(mask, UWState(s, opt_state), state)

    return loss_weighting("uw", num_tasks, init_state, weights_fn)
