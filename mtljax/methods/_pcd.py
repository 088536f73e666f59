"""PCD: Priority-Constrained Descent, the primary objective first, every secondary a share.

The primary objective's gradient ``g_1`` (the sum of the primary tasks' gradients) is followed
as closely as possible, subject to every secondary objective (each other task) getting at
least a fraction ``τ_j`` of the first-order progress a step along its own normalised gradient
would give:

    d̃ = argmin_d ½‖d − g̃_1‖²   s.t.   g̃_jᵀd ≥ τ_j ‖g̃_j‖²   (j secondary),

with ``g̃_i = s_i g_i`` and ``s_i = 1/√(v̂_i + ε)``, ``v̂_i`` the bias-corrected exponential
moving average (decay β) of ``‖g_i‖²``. The update is ``d̃`` rescaled to ``‖g_1‖``. The
normalisation makes ``τ`` scale-free: a secondary task whose loss is multiplied by a constant
at every step gets the same update (up to ε).

In Gram space, with ``A`` mapping tasks to objectives (row 1: the primary tasks; then one row
per secondary task), the objectives' Gram matrix is ``G' = A G Aᵀ``; the dual of the problem,
``min_{μ ≥ 0} ½ μᵀ G̃_s μ − μᵀ b`` on ``G̃ = S G' S``, is solved exactly on device
(:func:`mtljax.solvers._pcd_qp.solve_pcd_qp`), ``d̃ = g̃_1 + Σ_j μ_j g̃_j``, and the task
weights are ``w = Aᵀ w'`` with ``w' = S (1, μ) ‖g_1‖/‖d̃‖``.

Special cases, as in the paper's reference and torchjd's ``PCD``: ``g_1 = 0`` (or ``d̃ = 0``
up to the round-off of ``G``) gives ``d = 0``; infeasible constraints (two secondaries exactly
opposed, for instance) are dropped and ``d = g_1``; a non-finite ``G`` gives NaN weights and
leaves the state unchanged.

The primary task is not protected from conflict by itself: ``g_1ᵀd ≥ 0`` holds when ``τ = 0``
(``d̃`` is then the projection of ``g̃_1`` onto a cone, and ``g̃_1ᵀd̃ = ‖d̃‖²``), but a
secondary nearly opposed to the primary with ``τ > 0`` forces ``g_1ᵀd < 0`` (exactly opposed:
``g̃_1ᵀd̃ ≤ −τ``). Every secondary's constraint, hence ``g_jᵀd ≥ 0``, holds whenever the
constraints are feasible.

References:
  "Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical
  Multi-Objective Optimization", TMLR 2026, arXiv:2606.29521.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.solvers._mask import restrict_gram, task_support
from mtljax.solvers._pcd_qp import solve_pcd_qp


class PCDState(NamedTuple):
    primary_sq_norm_ema: jax.Array  # [] EMA of ‖Σ_p g_p‖², the primary objective's
    primary_steps: jax.Array  # [] int32, steps with a primary task present
    sq_norm_ema: jax.Array  # [T] EMA of ‖g_t‖² of each secondary task (0 on primary tasks)
    steps: jax.Array  # [T] int32, steps each secondary task was present


def pcd(
    num_tasks: int,
    *,
    primary: Sequence[int] = (0,),
    tau: float | Sequence[float] = 0.02,
    beta: float = 0.999,
    eps: float = 1e-8,
) -> Method:
    """Priority-Constrained Descent: ``d̃ = argmin ½‖d − g̃_1‖²`` s.t. ``g̃_jᵀd ≥ τ_j‖g̃_j‖²``.

    Args:
      num_tasks: T.
      primary: indices of the primary tasks (distinct, at least one); their gradients' sum is
        the primary objective. Every other task is a secondary objective.
      tau: ``τ ∈ [0, 1]``, the fraction of normalised progress guaranteed to each secondary;
        one float, or one value per secondary task in increasing task order.
      beta: decay ``β ∈ [0, 1)`` of the moving average of the squared gradient norms (the
        weight of the old value).
      eps: ``ε ≥ 0`` added to the moving average before its inverse square root.

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` whose state is a :class:`PCDState`.
      Under ``task_mask`` the absent tasks leave the objectives (weight 0, state unchanged):
      the primary objective is the sum of the present primary tasks, and with none present
      ``d = 0`` (a zero primary gradient). With ``ε = 0``, from the initial state (where
      ``g̃_i = g_i/‖g_i‖``), ``d`` is positively homogeneous of degree 1 in J. The weights
      promise degree 0 (:class:`~mtljax.methods.GramWeighting`) state included: ``G → cG``
      with the moving average also ``× c`` leaves them unchanged when ``ε = 0``. At extreme
      scales :meth:`Method.apply` (not the train step, which passes its own ``G``) solves on
      rows rescaled by a power of two, and the moving average is then kept in those units.

    Example:
      >>> import numpy as np, mtljax
      >>> jac = np.array([[1.0, 0.0], [-1.0, 1.0]])  # the secondary conflicts with g_1
      >>> d = np.asarray(mtljax.aggregate("pcd", jac, tau=0.0, eps=0.0))
      >>> [round(x, 4) for x in d.tolist()], round(float(jac[1] @ d), 6)
      ([0.7071, 0.7071], 0.0)
    """
    num_tasks = check_num_tasks(num_tasks)
    primary = _check_primary(num_tasks, primary)
    secondary = tuple(t for t in range(num_tasks) if t not in primary)
    taus = _check_tau(tau, len(secondary))
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"pcd: beta must be in [0, 1), got {beta!r}.")
    if not eps >= 0.0:
        raise ValueError(f"pcd: eps must be >= 0, got {eps!r}.")
    lift = np.zeros((1 + len(secondary), num_tasks))  # A: tasks to objectives
    lift[0, list(primary)] = 1.0
    lift[np.arange(1, 1 + len(secondary)), list(secondary)] = 1.0
    index = np.asarray(secondary, np.int32)

    def init_state():
        # Default float dtype: float64 when x64 is enabled, as torchjd keeps its average.
        return PCDState(jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros((num_tasks,)),
                        jnp.zeros((num_tasks,), jnp.int32))

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        return _weights(gram, state, mask, lift, index, taus, beta, eps)

    return gram_weighting("pcd", num_tasks, init_state, weights_fn, degree=0.0)


# Jitted with the hyper-parameters as arguments: every PCD of one shape shares a compilation.
@jax.jit
def _weights(gram, state, mask, lift, index, taus, beta, eps):
    """``(w [T], state)`` of one step: the objectives' Gram matrix ``G' = A G Aᵀ`` (absent
    tasks in no objective), the moving averages advanced, the QP, ``w = Aᵀ w'``."""
    a = jnp.where(mask[None, :], lift.astype(gram.dtype), 0.0)
    objectives = a @ restrict_gram(gram, mask) @ a.T
    present = jnp.any(a != 0.0, axis=1)
    finite = jnp.all(jnp.isfinite(objectives))
    objectives = jnp.where(finite, objectives, 0.0)
    ema = jnp.concatenate([state.primary_sq_norm_ema[None], state.sq_norm_ema[index]])
    steps = jnp.concatenate([state.primary_steps[None], state.steps[index]])
    ema, steps, scales = _moving_scales(jnp.diagonal(objectives), ema, steps, present, beta, eps)
    weights = a.T @ _objective_weights(objectives, scales.astype(gram.dtype),
                                       taus.astype(gram.dtype), present[1:])
    new_state = PCDState(ema[0], steps[0], state.sq_norm_ema.at[index].set(ema[1:]),
                         state.steps.at[index].set(steps[1:]))
    # A non-finite G: NaN weights for the present tasks, and the state as it was.
    weights = jnp.where(finite, weights, jnp.where(mask, jnp.nan, 0.0))
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return weights, state


def _moving_scales(sq_norms, ema, steps, present, beta, eps):
    """``(ema, steps, s)``: the moving averages and step counts advanced on the present
    objectives, and the scales ``s = 1/√(v̂ + ε)`` (0 where ``v̂ + ε = 0``, a gradient that
    was always 0, or the objective is absent), in the state's dtype."""
    dtype = ema.dtype
    beta = jnp.asarray(beta, dtype)
    ema = jnp.where(present, beta * ema + (1.0 - beta) * sq_norms.astype(dtype), ema)
    steps = jnp.where(present, steps + 1, steps)
    counted = steps > 0
    debias = 1.0 - jnp.power(beta, steps.astype(dtype))
    corrected = jnp.where(counted, ema / jnp.where(counted, debias, 1.0), 0.0)
    root = jnp.sqrt(corrected + eps)
    usable = present & (root > 0.0)
    return ema, steps, jnp.where(usable, 1.0 / jnp.where(usable, root, 1.0), 0.0)


def _objective_weights(objectives, scales, taus, constrained):
    """``w'`` over the objectives: the QP on ``G̃ = S G' S``, ``d̃`` rescaled to ``‖g_1‖``.

    ``d̃ = 0`` up to the round-off of ``G̃`` (``‖d̃‖² ≤ 10 eps (Σ_i |w̃_i| ‖g̃_i‖)²``) and
    ``g_1 = 0`` give ``w' = 0``.
    """
    normalized = objectives * scales[:, None] * scales[None, :]
    w = solve_pcd_qp(normalized, taus, mask=constrained).weights
    sq_norm = w @ normalized @ w
    magnitude = jnp.square(jnp.abs(w) @ jnp.sqrt(jnp.maximum(jnp.diagonal(normalized), 0.0)))
    precision = 10.0 * jnp.finfo(objectives.dtype).eps
    usable = (objectives[0, 0] > 0.0) & (sq_norm > precision * magnitude)
    factor = jnp.sqrt(objectives[0, 0] / jnp.where(usable, sq_norm, 1.0))
    return jnp.where(usable, w * scales * factor, 0.0)


def _check_primary(num_tasks: int, primary) -> tuple[int, ...]:
    try:
        indices = tuple(int(p) for p in primary)
    except (TypeError, ValueError):
        indices = ()
    valid = (
        indices
        and len(set(indices)) == len(indices)
        and all(0 <= p < num_tasks and p == q for p, q in zip(indices, primary, strict=True))
    )
    if not valid:
        raise ValueError(
            f"pcd: primary must be distinct task indices in [0, {num_tasks}), at least one, "
            f"got {primary!r}."
        )
    return tuple(sorted(indices))


def _check_tau(tau, num_secondary: int) -> np.ndarray:
    taus = np.asarray(tau, np.float64)
    if taus.ndim == 0:
        taus = np.full((num_secondary,), float(taus))
    elif taus.shape != (num_secondary,):
        raise ValueError(
            f"pcd: tau must be a float or one value per secondary task ({num_secondary}), "
            f"got {tau!r}."
        )
    if not np.all((taus >= 0.0) & (taus <= 1.0)):
        raise ValueError(f"pcd: tau must be in [0, 1], got {tau!r}.")
    return taus
