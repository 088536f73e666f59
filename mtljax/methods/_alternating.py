"""Alternating training: one task per step.

Each step trains a single task ``t``: ``w = e_t`` (one-hot), so ``d = g_t``. The task is drawn at
random (uniformly or from given probabilities) or cycles round-robin ``t = step mod T``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.methods._base import Method, as_key, check_num_tasks, loss_weighting, losses_dtype
from mtljax.solvers._mask import task_support

ORDERS = ("random", "round_robin")


class AlternatingState(NamedTuple):
    key: jax.Array  # PRNG key for the random task draws
    step: jax.Array  # [] int32, steps taken


def alternating(
    num_tasks: int,
    *,
    order: str = "random",
    key: jax.Array | int = 0,
    probs=None,
) -> Method:
    """Alternating training: ``w = e_t`` with ``t`` drawn or cycled each step.

    Args:
      num_tasks: T.
      order: ``"random"`` (default; ``t ~ probs``, uniform when ``probs`` is None) or
        ``"round_robin"`` (``t = step mod T``).
      key: PRNG key or integer seed for the random draws (kept in the state).
      probs: optional ``[T]`` non-negative sampling weights for ``order="random"``,
        normalised to sum to 1.

    Returns:
      A loss-only :class:`~mtljax.methods.Method`; one-hot weights in the losses' dtype
      (≥ float32; float32 when no losses are given). Under a ``task_mask`` the task is cycled
      or drawn among the present ones (``probs`` renormalised over them); with no present
      task of positive probability the weights are 0.

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("alternating", np.eye(2), order="round_robin").tolist()
      [1.0, 0.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}.")
    log_probs = None
    if probs is not None:
        if order != "random":
            raise ValueError('probs only applies to order="random".')
        p = np.asarray(probs, dtype=np.float64)
        if p.shape != (num_tasks,) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
            raise ValueError(
                f"probs must be {num_tasks} finite non-negative numbers with a positive sum, "
                f"got {np.asarray(probs).tolist()}."
            )
        with np.errstate(divide="ignore"):
            log_probs = np.log(p / p.sum())
    key0 = as_key(key)

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        dtype = losses_dtype(task_losses)
        mask = task_support(task_mask, num_tasks)
        # Under a mask the draw is among the K present tasks: "the k-th present task" with k
        # cycled or uniform is exactly the K-task method's draw (same key, same step).
        count = jnp.maximum(jnp.sum(mask), 1)
        key = state.key
        if order == "round_robin":
            task = _kth_present(mask, state.step % count)
        else:
            key, sub = jax.random.split(key)
            if log_probs is None:
                task = _kth_present(mask, jax.random.randint(sub, (), 0, count))
            else:
                logits = jnp.where(mask, jnp.asarray(log_probs, jnp.float32), -jnp.inf)
                task = jax.random.categorical(sub, logits)
                # No present task with a positive probability: nothing to train this step.
                mask = mask & jnp.isfinite(logits[task])
        weights = jnp.where(mask, jax.nn.one_hot(task, num_tasks, dtype=dtype), 0.0)
        return weights, AlternatingState(key, state.step + 1)

    return loss_weighting(
        "alternating",
        num_tasks,
        lambda: AlternatingState(key0, jnp.zeros((), jnp.int32)),
        weights_fn,
    )


def _kth_present(mask: jax.Array, k: jax.Array) -> jax.Array:
    """The index of the k-th (from 0) True entry of ``mask`` (k itself when all are True)."""
    return jnp.argmax(mask & (jnp.cumsum(mask) == k + 1))
