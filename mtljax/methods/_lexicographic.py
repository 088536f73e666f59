"""Lexicographic priority levels: each level's update may not conflict with any higher level.

Every task has a priority level (0 = highest). With ``S_k`` the tasks at levels ``≤ k`` and
``C(S) = {x : g_i · x ≥ 0 ∀ i ∈ S}`` the dual cone of their gradients, the update is

    d = Σ_k d_k,        d_k = (1/T) Σ_{t at level k} Π_{C(S_k)}(g_t),

each task gradient projected onto the dual cone of its own and every higher level. In Gram space
``Π_{C(S)}(g_t) = Jᵀw⁽ᵗ⁾`` with ``w⁽ᵗ⁾ = argmin {wᵀGw : w ≥ e_t, w_i = 0 off S}`` (Quinton &
Rey, Proposition 1, on the rows of S), solved exactly by the active-set solver of
:func:`mtljax.solvers._dual_cone.project_dual_cone` with the support ``S_k``: the T problems in
one ``vmap`` (one compiled solver whatever the number of levels), or from T = 64 on one batched
solve per level (:mod:`mtljax.solvers._dual_cone_batch`).

What this guarantees (``reg_eps = 0``, the exact projections):

1. ``d_j ∈ C(S_j)``, and a task i at level k lies in ``S_j`` for every ``j ≥ k``, so
   ``g_i · d_j ≥ 0`` for ``j ≥ k``. Hence ``g_i · d ≥ g_i · (d_0 + … + d_k)``: the lower-priority
   levels never take anything from a task; a level-1 task never pays for a level-2 task.
   Likewise ``g_i · (d_k + d_{k+1} + …) ≥ 0``: the part of the update made at a task's own level
   and below never conflicts with it.
2. ``C(S_j) ⊆ C(S_0)`` for every j, so ``g_i · d ≥ 0`` for every task at the highest level: the
   update never conflicts with a primary task.
3. With a single level, ``d`` is UPGrad's update (with ``reg_eps = 0``).

A higher level's part *can* conflict with a lower-priority task (``g_i · d_0 < 0`` for i at level
1): that is the priority order, not a defect. Only the order of the levels matters (``(0, 2)``
and ``(0, 1)`` are the same method); under a ``task_mask`` the levels of the present tasks keep
their order and T is the number of present tasks, so a batch without a level-0 task is the
problem of the levels present.

The priority order is lexicographic multi-objective optimisation, and the construction mirrors
the task-priority framework of redundant robot control, where each lower-priority task moves
only within what the higher ones allow (Siciliano & Slotine 1991, with equality tasks and null
spaces; Kanoun, Lamiraux & Wieber 2011 with inequality tasks, as here). The composition of
dual-cone projections per level is this library's construction; no paper defines exactly this
update.

References:
  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, arXiv:2406.16232.
  Siciliano & Slotine, "A general framework for managing multiple tasks in highly redundant
  robotic systems", ICAR 1991.
  Kanoun, Lamiraux & Wieber, "Kinematic control of redundant manipulators: generalizing the
  task-priority framework to inequality tasks", IEEE Trans. Robotics 27(4), 2011.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.solvers._dual_cone import project_dual_cone
from mtljax.solvers._dual_cone_batch import BATCH_FROM, project_dual_cone_batch
from mtljax.solvers._mask import num_present, task_support


def priority_levels(name: str, num_tasks: int, levels: Sequence[int] | None) -> np.ndarray:
    """Validates per-task priority levels (None: all 0); returns them as ``[T]`` ints."""
    if levels is None:
        return np.zeros(num_tasks, int)
    values = np.asarray(levels)
    valid = (values.shape == (num_tasks,) and np.issubdtype(values.dtype, np.number)
             and np.all(np.isfinite(values)) and np.all(values >= 0)
             and np.all(values == np.round(values)))
    if not valid:
        raise ValueError(
            f"{name}: levels must be {num_tasks} non-negative integers (0 = highest priority), "
            f"got {levels!r}."
        )
    return values.astype(int)


def lexicographic(
    num_tasks: int, *, levels: Sequence[int] | None = None, reg_eps: float = 0.0
) -> Method:
    """Priority levels: ``w = (1/T) Σ_k Σ_{t at level k} argmin_{w ≥ e_t, w on S_k} wᵀ Ĝ w``.

    ``S_k`` is the set of tasks at levels ``≤ k`` and ``Ĝ = G / tr(G_{S_k}) + reg_eps · I``.

    Args:
      num_tasks: T.
      levels: the priority level of each task, ``[T]`` non-negative integers, 0 the highest
        (only their order matters); ``None`` (default): every task at level 0, which is UPGrad.
      reg_eps: ridge on the trace-normalised Gram matrix, as in ``upgrad``. The default 0 gives
        the exact projections and the guarantees of the module docstring to round-off; a
        positive ridge holds them only up to ``reg_eps · tr(G_{S_k}) · w``.

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` whose weights do not depend on the scale of
      J (``degree=0``).

    Example:
      >>> import numpy as np, mtljax
      >>> jac = np.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> [round(x, 4) for x in mtljax.aggregate("lexicographic", jac, levels=[0, 1]).tolist()]
      [0.5, 0.5]
      >>> [round(x, 4) for x in mtljax.aggregate("lexicographic", jac, levels=[1, 0]).tolist()]
      [-0.25, 0.75]

    References:
      Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
      arXiv:2406.16232.
    """
    num_tasks = check_num_tasks(num_tasks)
    task_levels = priority_levels("lexicographic", num_tasks, levels)
    if not reg_eps >= 0:
        raise ValueError(f"lexicographic: reg_eps must be >= 0, got {reg_eps!r}.")
    # Row t: the support S_k of task t's level k, the tasks at its level and above.
    supports = task_levels[None, :] <= task_levels[:, None]
    levels_at = [np.flatnonzero(task_levels == k) for k in np.unique(task_levels)]

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        share = 1.0 / jnp.maximum(num_present(mask, gram.dtype), 1.0)
        starts = share * jnp.eye(num_tasks, dtype=gram.dtype)
        if num_tasks < BATCH_FROM:  # one vmapped active-set solve, each start its own support
            projections = jax.vmap(lambda start, support: project_dual_cone(
                gram, start, reg_eps=reg_eps, mask=mask & support))(starts, supports)
            return projections.sum(0), state
        # Large T (instance-wise rows): one batched solve per level, whose tasks share S_k.
        weights = jnp.zeros((num_tasks,), gram.dtype)
        for tasks in levels_at:
            weights = weights + project_dual_cone_batch(
                gram, starts[tasks], reg_eps=reg_eps, mask=mask & supports[tasks[0]]).sum(0)
        return weights, state

    return gram_weighting("lexicographic", num_tasks, optax.EmptyState, weights_fn, degree=0.0)
