"""FAMO: fast adaptive multitask optimisation, balancing the rates of loss decrease.

FAMO keeps task logits ``ξ`` with ``z = softmax(ξ)`` and descends
``Σ_t z_t log(L_t − L*_t)``, normalised: with ``D_t = L_t − L*_t`` (``L*`` a lower bound, the
``min_loss``) the update is ``d = Σ_t w_t g_t`` with ``w_t = (z_t / D_t) / c``,
``c = Σ_s z_s / D_s`` (so ``w = softmax(ξ − log D)``, computed that way). After the model step,
with ``δ_t = log D_t(before) − log D_t(after)`` the decrease of each log loss, the logits take one
optimizer step on the gradient ``(∂z/∂ξ)ᵀ δ = z ⊙ (δ − zᵀδ)`` plus the weight decay ``γ ξ``:
tasks whose loss fell least gain weight. The paper uses Adam with lr 0.025 on ``ξ``.

Two ways to get the "after" losses:

* ``same_batch=True`` (the paper): the train step calls ``after_step(state,
  task_losses_after=...)`` with the losses at the updated parameters on the same batch (one
  extra forward pass, no backward).
* ``same_batch=False``: no extra forward. The next step's losses (new parameters, next batch)
  stand in for the "after" losses of the previous step: the logits update at the start of
  ``weights_fn``, from the previous losses kept in the state.

Under a ``task_mask`` the weights are the softmax over the K present tasks, and the logits
step moves the present tasks' logits only (those present both before and after, for
``same_batch=False``); the state records the step's mask, so ``after_step`` leaves the absent
tasks out even when its caller does not pass the mask. A non-finite loss, before or after the
update, counts as absent for the state: the state stays finite, and that task's logit, log
loss and optimizer rows are left as they were (Adam's step count is shared and still moves).

References:
  Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023,
  arXiv:2306.03792.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtljax.methods._base import (
    Method,
    check_num_tasks,
    hparam_aliases,
    loss_weighting,
    losses_dtype,
    require_losses,
)
from mtljax.solvers._mask import keep_absent, masked_softmax, task_support

# Added to L − L*, as in the authors' description, so that a loss at its bound keeps a finite log.
EPS = 1e-8


class FAMOState(NamedTuple):
    logits: jax.Array  # [T], ξ
    opt_state: Any  # optimizer state of the logits
    log_gaps: jax.Array  # [T], log(L − L* + eps) at the last weights_fn call
    has_prev: jax.Array  # [] bool, whether log_gaps holds losses yet
    present: jax.Array  # [T] bool, the tasks present at the last weights_fn call


@hparam_aliases(gamma="weight_decay")
def famo(
    num_tasks: int,
    *,
    lr: float = 0.025,
    weight_decay: float = 1e-3,
    same_batch: bool = True,
    min_loss=0.0,
    optimizer: optax.GradientTransformation | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> Method:
    """FAMO with logits ``ξ`` (initialised at 0) and their optimizer in the state.

    Args:
      num_tasks: T.
      lr: learning rate of the default optimizer of ``ξ``, ``optax.adam(lr)`` (paper: 0.025).
      weight_decay: the paper's γ, weight decay on ``ξ`` added to its gradient before the
        optimizer (as PyTorch Adam's ``weight_decay``; paper: 1e-3). Old name ``gamma``.
      same_batch: see the module docstring (default True, the paper).
      min_loss: lower bound ``L*`` of the losses, a scalar or ``[T]`` (default 0).
      optimizer: optax transformation for ``ξ``; replaces ``optax.adam(lr)`` when given.
      dtype: dtype of ``ξ``, its optimizer state and the stored log losses.

    Returns:
      A loss-only :class:`~mtljax.methods.Method` with an ``after_step`` hook when
      ``same_batch``. Weights are positive and sum to 1 (``w ∝ z / D``), in the losses' dtype
      (≥ float32). With ``same_batch=True`` and no ``after_step`` call (e.g.
      :func:`mtljax.aggregate`) the logits never move.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}.")
    min_loss = jnp.broadcast_to(jnp.asarray(min_loss, dtype), (num_tasks,))
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay), optax.adam(lr) if optimizer is None else optimizer
    )

    def init_state():
        logits = jnp.zeros((num_tasks,), dtype)
        return FAMOState(
            logits, tx.init(logits), logits, jnp.zeros((), bool), jnp.ones((num_tasks,), bool)
        )

    def log_gaps(losses, work):
        return jnp.log(jnp.maximum(losses.astype(work) - min_loss.astype(work), 0.0) + EPS)

    def step_logits(state, after, mask):
        # The logits step of the tasks in `mask` (present before and after); z is their
        # softmax, and the other tasks' logits and optimizer rows are left as they were.
        logits = state.logits
        z = masked_softmax(logits, mask)
        delta = jnp.where(mask, state.log_gaps - after.astype(dtype), 0.0)
        grad = z * (delta - jnp.dot(z, delta))
        updates, opt_state = tx.update(grad, state.opt_state, logits)
        new = optax.apply_updates(logits, updates).astype(logits.dtype)
        keep = ~state.has_prev
        stepped = state._replace(
            logits=jnp.where(keep, logits, new),
            opt_state=jax.tree.map(lambda a, b: jnp.where(keep, a, b), state.opt_state, opt_state),
        )
        return keep_absent(mask, stepped, state)

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        losses = require_losses("famo", num_tasks, task_losses)
        mask = task_support(task_mask, num_tasks)
        out_dtype = losses_dtype(losses)
        gaps = log_gaps(losses, jnp.promote_types(out_dtype, dtype))
        # A present task's non-finite loss gives NaN weights (the caller sees it) but never
        # enters the state: it is recorded as absent, its log loss and logit kept.
        recorded = mask & jnp.isfinite(gaps)
        gaps = jnp.where(mask, gaps, state.log_gaps.astype(gaps.dtype))
        if not same_batch:
            state = step_logits(state, gaps, recorded & state.present)
        weights = masked_softmax(state.logits.astype(gaps.dtype) - gaps, mask).astype(out_dtype)
        kept = jnp.where(recorded, gaps, state.log_gaps.astype(gaps.dtype))
        return weights, state._replace(
            log_gaps=kept.astype(dtype), has_prev=jnp.ones((), bool), present=recorded
        )

    def after_step(state, *, task_losses_after, task_mask=None, **extra):
        del extra
        # The step's task mask was recorded by weights_fn; an explicit one can only narrow it,
        # and so does a non-finite loss after the update (a dropped task's NaN label, a
        # diverged task): those tasks' logits and optimizer rows stay as they were.
        after = log_gaps(jnp.asarray(task_losses_after), dtype)
        mask = state.present & task_support(task_mask, num_tasks) & jnp.isfinite(after)
        return step_logits(state, after, mask)

    return loss_weighting(
        "famo", num_tasks, init_state, weights_fn, after_step=after_step if same_batch else None
    )
