"""GradNorm: learned task weights that balance the gradient norms of a shared layer.

With ``G_t = ‖∇_W w_t L_t‖ = w_t ‖∇_W L_t‖`` on shared parameters ``W``, their mean ``Ḡ``, the
loss ratios ``L̃_t = L_t / L_t(0)`` and relative inverse training rates ``r_t = L̃_t / mean(L̃)``,
the step uses the current weights (``d = Σ_t w_t g_t``) and then moves ``w`` one optimizer step
down the gradient of ``Σ_t |G_t − Ḡ r_t^α|`` with ``Ḡ r_t^α`` held constant:
``∂/∂w_t = sign(G_t − Ḡ r_t^α) ‖∇_W L_t‖``. The new weights are clipped at 0 and renormalised to
sum to T. ``L(0)`` is recorded at the first step.

The only P-sized work is the per-task squared norm of the selected leaves of the Jacobian.

References:
  Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
  Balancing in Deep Multitask Networks", ICML 2018, arXiv:1711.02257.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtljax import linalg
from mtljax.methods._base import (
    Method,
    MethodOutput,
    check_input_tasks,
    check_num_tasks,
    gradient_transform,
    losses_dtype,
    require_losses,
)
from mtljax.solvers._mask import drop_absent, keep_absent, num_present, restrict, task_support

LAYERS = ("last", "all")


class GradNormState(NamedTuple):
    weights: jax.Array  # [T], current task weights, sum T
    opt_state: Any  # optimizer state of the weights
    initial_losses: jax.Array  # [T], L(0), recorded at the first step each task is present
    recorded: jax.Array  # [T] bool, whether initial_losses holds the task's L(0)
    step: jax.Array  # [] int32, steps taken


def _selected_leaves(per_task_grads, layer) -> list[jax.Array]:
    """The leaves of ``per_task_grads`` that form ``W`` (see :func:`gradnorm`)."""
    with_paths = jax.tree_util.tree_flatten_with_path(per_task_grads)[0]
    if layer == "all":
        return [leaf for _, leaf in with_paths]
    if layer == "last":
        prefix = with_paths[-1][0][:-1]
        chosen = [leaf for path, leaf in with_paths if path[: len(prefix)] == prefix]
    else:
        chosen = [leaf for path, leaf in with_paths if layer(path)]
    if not chosen:
        raise ValueError("GradNorm's layer selected no leaf of the per-task gradients.")
    return chosen


def gradnorm(
    num_tasks: int,
    *,
    alpha: float = 1.5,
    lr: float = 0.025,
    layer: str | Callable[[tuple], bool] = "last",
    optimizer: optax.GradientTransformation | None = None,
) -> Method:
    """GradNorm with learned weights in the state (initialised at 1).

    Args:
      num_tasks: T.
      alpha: asymmetry α ≥ 0; larger pulls harder on tasks that train slowly (paper: 1.5 on
        NYUv2; α = 0 equalises the gradient norms).
      lr: learning rate of the default optimizer of the weights, ``optax.adam(lr)`` (Adam
        makes the step insensitive to the scale of the gradient norms).
      layer: which shared parameters ``W`` the norms are taken on. ``"last"`` (default): the
        leaves whose key path (``jax.tree_util`` flatten order) starts with the path of the
        last leaf minus its final key, i.e. the parent module of the last leaf (the whole tree
        when it is flat or a single array). ``"all"``: every leaf (the Gram diagonal of the
        whole Jacobian). A callable ``path -> bool`` on key-path tuples selects leaves freely.
      optimizer: optax transformation for the weights; replaces ``optax.adam(lr)`` when given
        (e.g. ``optax.sgd(lr)`` for the plain gradient step).

    Returns:
      A gradient :class:`~mtljax.methods.Method`. Weights are non-negative, sum to T, and are
      in the losses' dtype (≥ float32); the state is in the parameters' dtype (≥ float32).
      When every updated weight clips to 0 they reset to 1. A zero ``L(0)`` counts as 1.
      Under a ``task_mask`` the means, targets and renormalisation (to sum K) run over the K
      present tasks, absent tasks keep their weights, and ``L_t(0)`` is recorded at the
      first step task t is present.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not alpha >= 0:
        raise ValueError(f"alpha must be non-negative, got {alpha!r}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")
    if not (layer in LAYERS if isinstance(layer, str) else callable(layer)):
        raise ValueError(f"layer must be one of {LAYERS} or a callable, got {layer!r}.")
    tx = optax.adam(lr) if optimizer is None else optimizer

    def init(params):
        leaves = jax.tree.leaves(params)
        dtype = jnp.promote_types(jnp.result_type(*leaves), jnp.float32) if leaves else jnp.float32
        weights = jnp.ones((num_tasks,), dtype)
        recorded = jnp.zeros((num_tasks,), bool)
        return GradNormState(
            weights, tx.init(weights), weights, recorded, jnp.zeros((), jnp.int32)
        )

    def apply(per_task_grads, state, params=None, *, task_losses=None, task_mask=None, **extra):
        del params, extra
        check_input_tasks("gradnorm", num_tasks, per_task_grads)
        losses = require_losses("gradnorm", num_tasks, task_losses)
        mask = task_support(task_mask, num_tasks)
        per_task_grads = drop_absent(per_task_grads, task_mask)
        w = state.weights
        dtype, tiny = w.dtype, jnp.finfo(w.dtype).tiny
        # Means, targets and the renormalisation run over the K present tasks only.
        count = num_present(mask, dtype)

        def mean_of(x):
            return jnp.sum(restrict(x, mask)) / jnp.maximum(count, 1.0)

        norms = jnp.sqrt(linalg.squared_norms(_selected_leaves(per_task_grads, layer)))
        norms = norms.astype(dtype)
        losses = restrict(losses.astype(dtype), mask, 1.0)
        initial = jnp.where(mask & ~state.recorded, losses, state.initial_losses)
        ratios = losses / jnp.where(initial > tiny, initial, 1.0)
        mean = mean_of(ratios)
        rates = jnp.where(mean > tiny, ratios / jnp.where(mean > tiny, mean, 1.0), 1.0)
        weighted = w * norms
        target = mean_of(weighted) * jnp.maximum(rates, 0.0) ** alpha
        grad = restrict(jnp.sign(weighted - target) * norms, mask)
        updates, opt_state = tx.update(grad, state.opt_state, w)
        new = restrict(jnp.maximum(optax.apply_updates(w, updates), 0.0).astype(dtype), mask)
        total = jnp.sum(new)
        new = jnp.where(total > tiny, count * new / jnp.where(total > tiny, total, 1.0), 1.0)
        weights = restrict(w, mask).astype(losses_dtype(losses))
        new_state = GradNormState(new, opt_state, initial, state.recorded | mask, state.step + 1)
        new_state = keep_absent(mask, new_state, state)
        return MethodOutput(linalg.combine(per_task_grads, weights), new_state, weights)

    return gradient_transform("gradnorm", num_tasks, init, apply)
