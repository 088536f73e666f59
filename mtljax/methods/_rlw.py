"""Random loss weighting (RLW): fresh random task weights every step.

Each step samples ``λ̃`` from a distribution and normalises it onto the simplex: ``w = softmax(z)``
with ``z ~ N(0, I)`` (the paper's default) or ``z ~ U(0, 1)^T``, or ``w ~ Dir(α 1)`` directly.
RLW applied to the losses and to the gradients (RGW, torchjd's ``Random``) gives the same update.

References:
  Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
  Multi-Task Learning", TMLR 2022, arXiv:2111.10603.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtljax.methods._base import Method, as_key, check_num_tasks, loss_weighting, losses_dtype
from mtljax.solvers._mask import masked_softmax, restrict_simplex, task_support

DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


class RLWState(NamedTuple):
    key: jax.Array  # PRNG key for the weight draws


def rlw(
    num_tasks: int,
    *,
    distribution: str = "normal",
    alpha: float = 1.0,
    key: jax.Array | int = 0,
) -> Method:
    """Random loss weighting: ``w = softmax(z)``, ``z`` drawn afresh each step.

    Args:
      num_tasks: T.
      distribution: ``"normal"`` (default, ``z ~ N(0, I)``), ``"uniform"`` (``z ~ U(0, 1)``),
        both followed by a softmax, or ``"dirichlet"`` (``w ~ Dir(α 1)``, no softmax).
      alpha: Dirichlet concentration (``distribution="dirichlet"`` only).
      key: PRNG key or integer seed (kept in the state).

    Returns:
      A loss-only :class:`~mtljax.methods.Method`. Weights are positive and sum to 1 (the
      convention of both LibMTL's RLW and torchjd's ``Random``), in the losses' dtype
      (≥ float32; float32 when no losses are given).
    """
    num_tasks = check_num_tasks(num_tasks)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}.")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}.")
    key0 = as_key(key)

    def weights_fn(state, *, task_losses=None, task_mask=None, **extra):
        del extra
        dtype = losses_dtype(task_losses)
        mask = task_support(task_mask, num_tasks)
        key, sub = jax.random.split(state.key)
        # Under a mask, T draws restricted to the K present tasks: i.i.d. logits restricted
        # are K i.i.d. logits, and a Dir(α 1_T) sample renormalised on K entries is a
        # Dir(α 1_K) sample. So the weights have the K-task method's law (not its draw).
        if distribution == "normal":
            weights = masked_softmax(jax.random.normal(sub, (num_tasks,), dtype), mask)
        elif distribution == "uniform":
            weights = masked_softmax(jax.random.uniform(sub, (num_tasks,), dtype), mask)
        else:
            weights = jax.random.dirichlet(sub, jnp.full((num_tasks,), alpha, dtype), dtype=dtype)
            weights = restrict_simplex(weights, mask)
        return weights, RLWState(key)

    return loss_weighting("rlw", num_tasks, lambda: RLWState(key0), weights_fn)
