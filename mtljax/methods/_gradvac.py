"""Gradient Vaccine: raise each pair's gradient cosine towards an EMA target.

Every task pair keeps a target cosine ``φ̂_ij`` (an exponential moving average, initially 0).
For each task i, in a random order of the other tasks j, with ``φ_ij = cos(g_i', g_j)``
(``g_i'`` the already corrected gradient of task i, ``g_j`` the original): if
``φ_ij < φ̂_ij``, add the multiple of ``g_j`` that makes the cosine equal to the target,

    g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²)) · g_j,

then update ``φ̂_ij ← (1 − β) φ̂_ij + β φ_ij`` with the cosine measured *before* the correction
(the paper's Algorithm 1, where ``φ_ij`` is computed once per pair and then feeds both the test
and the EMA). The update is ``d = Σ_i g_i'``. As in PCGrad, every ``g_i'`` stays a combination
``Σ_k C_ik g_k``, so everything runs on ``C`` and the Gram matrix
(``g_i' · g_j = (C G)_ij``, ``‖g_i'‖² = C_i G C_iᵀ``), and ``w = Σ_i C_i``.

With ``φ̂ = 0`` (the first step) GradVac is PCGrad; targets stay pairwise, ``φ̂_ij ≠ φ̂_ji``.

References:
  Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
  Optimization in Massively Multilingual Models", ICLR 2021, arXiv:2010.05874.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.methods._base import Method, as_key, check_num_tasks, gram_weighting, hparam_aliases
from mtljax.methods._ew import REDUCTIONS
from mtljax.solvers._mask import num_present, restrict_gram, task_support


class GradVacState(NamedTuple):
    key: jax.Array  # PRNG key for the visiting orders
    targets: jax.Array  # [T, T] EMA target cosines φ̂_ij (row i: the task being corrected)


@hparam_aliases(beta="ema_rate")
def gradvac(
    num_tasks: int,
    *,
    ema_rate: float = 0.01,
    key: jax.Array | int = 0,
    reduction: str = "sum",
) -> Method:
    """Gradient Vaccine, in Gram space.

    Args:
      num_tasks: T.
      ema_rate: the paper's β in ``[0, 1]``, the weight of the new cosine in the targets'
        moving average, ``φ̂ ← (1 − β) φ̂ + β φ`` (the paper's 1e-2; LibMTL and torchjd
        default to 0.5). Old name ``beta``, same meaning; elsewhere in mtljax ``beta`` weighs
        the old value.
      key: PRNG key or integer seed for the random visiting orders (kept in the state).
      reduction: ``"sum"`` (the paper, LibMTL and torchjd; default) or ``"mean"`` of the
        corrected gradients.

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` whose state holds the targets ``[T, T]``
      (float32; float64 when x64 is enabled). Pairs with a zero gradient are skipped and
      their targets left unchanged. A target of ±1 would need an unbounded correction: the
      denominator ``√(1 − φ̂²)`` is floored at the dtype's epsilon.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not 0.0 <= ema_rate <= 1.0:
        raise ValueError(f"gradvac: ema_rate must be in [0, 1], got {ema_rate}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    key0 = as_key(key)

    def init_state():
        return GradVacState(key0, jnp.zeros((num_tasks, num_tasks), jnp.result_type(float)))

    def vaccinate(i, order, targets, gram):
        tiny = jnp.sqrt(jnp.finfo(gram.dtype).tiny)
        eps = jnp.finfo(gram.dtype).eps
        norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram), 0.0))

        def body(s, carry):
            coeffs, targets = carry
            j = order[s]
            norm_i = jnp.sqrt(jnp.clip(coeffs @ gram @ coeffs, 0.0))
            valid = (j != i) & (norm_i > tiny) & (norms[j] > tiny)
            denom = jnp.where(valid, norm_i * norms[j], 1.0)
            phi = jnp.clip(jnp.where(valid, coeffs @ gram[:, j] / denom, 0.0), -1.0, 1.0)
            target = targets[j]
            sin_target = jnp.maximum(jnp.sqrt(jnp.clip(1.0 - target**2, 0.0)), eps)
            sin_phi = jnp.sqrt(jnp.clip(1.0 - phi**2, 0.0))
            step = norm_i * (target * sin_phi - phi * sin_target) / (
                jnp.where(valid, norms[j], 1.0) * sin_target
            )
            step = jnp.where(valid & (phi < target), step, 0.0)
            coeffs = coeffs + step * jax.nn.one_hot(j, num_tasks, dtype=gram.dtype)
            averaged = (1 - ema_rate) * target + ema_rate * phi
            targets = targets.at[j].set(jnp.where(valid, averaged, target))
            return coeffs, targets

        start = (jax.nn.one_hot(i, num_tasks, dtype=gram.dtype), targets.astype(gram.dtype))
        return lax.fori_loop(0, num_tasks, body, start)

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # As in PCGrad, absent tasks enter as zero gradients (skipped, like real zero
        # gradients) and their own corrected gradients are left out; the targets of every
        # pair with an absent task are kept as they were.
        gram = restrict_gram(gram, mask)
        key, sub = jax.random.split(state.key)
        orders = jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(
            jax.random.split(sub, num_tasks)
        )
        coeffs, targets = jax.vmap(vaccinate, in_axes=(0, 0, 0, None))(
            jnp.arange(num_tasks), orders, state.targets, gram
        )
        weights = jnp.where(mask[:, None], coeffs, 0.0).sum(0)
        if reduction == "mean":
            weights = weights / jnp.maximum(num_present(mask, weights.dtype), 1.0)
        pairs = mask[:, None] & mask[None, :]
        targets = jnp.where(pairs, targets.astype(state.targets.dtype), state.targets)
        return weights, GradVacState(key, targets)

    return gram_weighting("gradvac", num_tasks, init_state, weights_fn, degree=0.0)
