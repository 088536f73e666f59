"""UPGrad: the average of the task gradients projected onto the dual cone.

Each task gradient ``g_t`` is projected onto the dual cone ``{x : J x ≥ 0}`` of all the task
gradients, and the projections are averaged. In Gram space the projection of ``g_t = Jᵀe_t``
is ``Jᵀw⁽ᵗ⁾`` with ``w⁽ᵗ⁾ = argmin_{w ≥ e_t} wᵀGw``, so ``w = (1/T) Σ_t w⁽ᵗ⁾``. The T solves run
in parallel (``vmap``) with the active-set solver of
:func:`mtljax.solvers._dual_cone.project_dual_cone`, or, from T = 64 on (instance-wise rows),
all at once with matrix products (:mod:`mtljax.solvers._dual_cone_batch`).

The update conflicts with no task (``J d ≥ 0``; with the default ridge ``reg_eps = 1e-4`` only
up to ``g_t · d ≥ −reg_eps · tr(G) · w_t``, see below), is equivariant
under permutations of the tasks, positively homogeneous in J, and equals the mean when the
gradients do not conflict.

References:
  Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, arXiv:2406.16232.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.methods._ew import REDUCTIONS
from mtljax.solvers._dual_cone_batch import project_dual_cone_many
from mtljax.solvers._mask import num_present, restrict, task_support


def preference_weights(
    name: str, num_tasks: int, pref_vector, reduction: str, reg_eps: float, norm_eps: float
) -> np.ndarray:
    """Validates the shared hyper-parameters of UPGrad and DualProj; returns ``u``, ``[T]``.

    ``u`` is ``pref_vector`` (ones by default), divided by T when ``reduction == "mean"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    if reg_eps < 0 or norm_eps < 0:
        raise ValueError(f"{name}: reg_eps and norm_eps must be >= 0, got {reg_eps}, {norm_eps}.")
    pref = np.ones(num_tasks) if pref_vector is None else np.asarray(pref_vector, np.float64)
    if pref.shape != (num_tasks,) or not np.all(np.isfinite(pref)) or np.any(pref < 0):
        raise ValueError(
            f"{name}: pref_vector must be {num_tasks} finite non-negative numbers, "
            f"got {pref_vector!r}."
        )
    return pref / num_tasks if reduction == "mean" else pref


def upgrad(
    num_tasks: int,
    *,
    pref_vector=None,
    reduction: str = "mean",
    reg_eps: float = 1e-4,
    norm_eps: float = 0.0,
) -> Method:
    """Unconflicting projection of gradients: ``w = Σ_t argmin_{w ≥ u_t e_t} wᵀ Ĝ w``.

    ``Ĝ = G / tr(G) + reg_eps · I``. With the defaults ``u_t = 1/T`` and ``d`` is the mean of
    the projected gradients (torchjd's default ``UPGrad()``).

    Args:
      num_tasks: T.
      pref_vector: ``[T]`` non-negative preferences ``u`` (ones by default): task t's gradient
        is scaled by ``u_t`` before its projection. torchjd's ``UPGrad(pref_vector=p)`` is
        ``pref_vector=p, reduction="sum"``.
      reduction: ``"mean"`` (default; ``u`` divided by T) or ``"sum"`` of the projections.
      reg_eps: ridge added to the trace-normalised Gram matrix (the paper's and torchjd's
        1e-4). It biases the projection: ``g_t · d ≥ −reg_eps · tr(G) · w_t`` only, which is a
        real conflict for a task whose gradient is much smaller than the others (at
        ``‖g_2‖ = ‖g_1‖/100`` the cosine can reach −0.66). ``0`` gives the exact projection,
        non-conflicting up to round-off, on any J (rank-deficient ones included).
      norm_eps: Gram matrices with a trace at or under this count as zero, and then
        ``w = u``. The default 0 keeps UPGrad exactly scale-invariant; torchjd uses 1e-4.

    Returns:
      A Gram-space :class:`~mtljax.methods.Method`. Zero gradients give ``w = u``, ``d = 0``;
      at T = 1 the update is the gradient times ``u_1``.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.

    Example:
      >>> import numpy as np, mtljax
      >>> d = mtljax.aggregate("upgrad", np.array([[1.0, 0.0], [-1.0, 1.0]]), reg_eps=0.0)
      >>> [round(x, 4) for x in d.tolist()]
      [0.25, 0.75]
    """
    num_tasks = check_num_tasks(num_tasks)
    u = preference_weights("upgrad", num_tasks, pref_vector, reduction, reg_eps, norm_eps)

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # The present tasks' gradients projected onto their own dual cone ("mean": over K).
        count = jnp.maximum(num_present(mask, gram.dtype), 1.0)
        rescale = num_tasks / count if reduction == "mean" else 1.0
        starts = jnp.diag(restrict(jnp.asarray(u, gram.dtype) * rescale, mask))
        projections = project_dual_cone_many(
            gram, starts, reg_eps=reg_eps, norm_eps=norm_eps, mask=mask
        )
        return projections.sum(0), state

    return gram_weighting("upgrad", num_tasks, optax.EmptyState, weights_fn, degree=0.0)
