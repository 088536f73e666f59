"""MoCo: stochastic multi-objective gradient correction.

Stochastic MGDA is biased because the min-norm weights are a nonlinear function of noisy
gradients. MoCo tracks the true Jacobian with a moving average ``Y`` and takes one projected
gradient step on the (regularised) MGDA dual per iteration:

``Y ← Y − β_k (Y − J)``,  ``λ ← Π_Δ(λ − γ_k (Y Yᵀ + ρ I) λ)``,  ``d = Yᵀ λ``

with ``β_k = β / k^{σ_β}`` and ``γ_k = γ / k^{σ_γ}`` at step ``k = 1, 2, ...``. The tracking
variable ``Y`` is a ``[T, *p]`` tree, T copies of the shared parameters: this P-sized state is
inherent to MoCo. The weights λ combine the *tracked* gradients ``Y``, not this step's ``J``.
The paper also projects each ``y_t`` onto a ball for its analysis; that bound is not applied.
Under a ``task_mask`` absent tasks keep their tracked gradients and λ; the step starts from the
present part of λ, renormalised, and stays on the simplex of the present tasks.

References:
  Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
  Multi-objective Learning: A Provably Convergent Approach", ICLR 2023, arXiv:2210.12624.
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
    hparam_aliases,
    require_losses,
    row_norms,
    scaled_rows,
    unscaled_gram,
    weights_dtype,
)
from mtljax.solvers import project_simplex
from mtljax.solvers._mask import (
    drop_absent,
    keep_absent,
    masked_softmax,
    present_max,
    restrict,
    restrict_gram,
    restrict_simplex,
    task_support,
)

NORMALIZATIONS = ("none", "loss")
SIMPLEX_MAPS = ("projection", "softmax")


class MoCoState(NamedTuple):
    step: jax.Array  # [] int32, steps taken
    tracking: Any  # [T, *p] tracked per-task gradients Y, zeros at the start
    weights: jax.Array  # [T] λ, uniform at the start


@hparam_aliases(beta="ema_rate", beta_sigma="ema_rate_sigma")
def moco(
    num_tasks: int,
    *,
    ema_rate: float = 0.5,
    ema_rate_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    normalization: str = "none",
    simplex_map: str = "projection",
) -> Method:
    """Multi-objective gradient correction with a tracked Jacobian.

    Args:
      num_tasks: T.
      ema_rate: the paper's β in (0, 1], the tracking step size at step 1: the weight of the
        new gradient in ``Y ← (1 − β_k) Y + β_k J`` (old name ``beta``, same meaning;
        elsewhere in mtljax ``beta`` weighs the old value).
      ema_rate_sigma: σ_β ≥ 0, decay exponent of the tracking step size ``β_k = β / k^σ_β``
        (old name ``beta_sigma``).
      gamma: γ > 0, the λ step size at step 1 (absolute: it multiplies ``Y Yᵀ``).
      gamma_sigma: σ_γ ≥ 0, decay exponent of the λ step size ``γ / k^σ_γ``.
      rho: ρ ≥ 0, ℓ2 regularisation of the λ subproblem.
      normalization: ``"none"`` (the paper) or ``"loss"``: track ``L_t g_t / (‖g_t‖ + 1e-8)``
        instead of ``g_t`` (the authors' code and LibMTL; needs ``task_losses``).
      simplex_map: ``"projection"`` (the paper, ``Π_Δ``) or ``"softmax"`` (LibMTL applies a
        softmax to the step instead of projecting it).

    Returns:
      A :class:`~mtljax.methods.Method` whose ``update`` is ``Yᵀ λ``. Its ``weights`` are λ,
      the weights of the tracked gradients ``Y`` (not of ``J``); they lie on the simplex.
      The Gram matrix of the tracked gradients is formed from rows rescaled by a power of two
      and scaled back, capped uniformly where it would pass the float range; norms for
      ``normalization="loss"`` are computed without overflow.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not 0 < ema_rate <= 1:
        raise ValueError(f"ema_rate must be in (0, 1], got {ema_rate!r}.")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}.")
    for label, value in (
        ("ema_rate_sigma", ema_rate_sigma),
        ("gamma_sigma", gamma_sigma),
        ("rho", rho),
    ):
        if not value >= 0:
            raise ValueError(f"{label} must be >= 0, got {value!r}.")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    if simplex_map not in SIMPLEX_MAPS:
        raise ValueError(f"simplex_map must be one of {SIMPLEX_MAPS}, got {simplex_map!r}.")

    def init(params):
        dtype = weights_dtype(params)
        tracking = jax.tree.map(lambda p: jnp.zeros((num_tasks, *p.shape), p.dtype), params)
        return MoCoState(
            jnp.zeros((), jnp.int32), tracking, jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
        )

    def apply(per_task_grads, state, params=None, *, task_losses=None, task_mask=None, **extra):
        del params, extra
        check_input_tasks("moco", num_tasks, per_task_grads)
        mask = task_support(task_mask, num_tasks)
        per_task_grads = drop_absent(per_task_grads, task_mask)
        dtype = weights_dtype(per_task_grads)
        step = state.step + 1
        k = step.astype(dtype)
        beta_k = ema_rate / k**ema_rate_sigma
        gamma_k = gamma / k**gamma_sigma
        grads = per_task_grads
        if normalization == "loss":
            losses = restrict(require_losses("moco", num_tasks, task_losses).astype(dtype), mask)
            norms = row_norms(per_task_grads).astype(dtype)
            grads = _scale_rows(per_task_grads, losses / (norms + 1e-8))
        tracking = jax.tree.map(
            lambda y, g: (y - beta_k * (y - g)).astype(y.dtype), state.tracking, grads
        )
        # Absent tasks: their tracked gradients and λ are kept; this step's λ lives on the
        # simplex of the present tasks, from the present part of the last λ.
        tracking = keep_absent(mask, tracking, state.tracking)
        rows, scale = scaled_rows(tracking)
        gram = unscaled_gram(restrict_gram(linalg.gram(rows).astype(dtype), mask), scale)
        lam = restrict_simplex(state.weights.astype(dtype), mask)
        lam = lam - gamma_k * (gram @ lam + rho * lam)
        if simplex_map == "softmax":
            lam = masked_softmax(lam, mask)
        else:
            # Π_Δ(v) = Π_Δ(v − c·1): shifting by the max keeps huge steps exact in float32.
            lam = project_simplex(lam - present_max(lam, mask), mask=mask)
        kept = jnp.where(mask, lam.astype(state.weights.dtype), state.weights)
        new_state = MoCoState(step, tracking, kept)
        return MethodOutput(linalg.combine(tracking, lam), new_state, lam)

    return gradient_transform("moco", num_tasks, init, apply)


def _scale_rows(per_task, scale: jax.Array):
    """``diag(scale) J``: each task's gradient times its own factor (elementwise, P-sized)."""

    def one(leaf):
        s = scale.astype(leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return leaf * s

    return jax.tree.map(one, per_task)
