"""Aligned-MTL: align the task gradients' singular values.

With ``G = J Jᵀ = V Λ Vᵀ``, the balance transformation ``B = √σ · V Λ^{-1/2} Vᵀ`` (over the
numerically non-zero eigenvalues) makes the aligned gradients ``B J`` orthogonal with equal
norms: ``(BJ)(BJ)ᵀ = σ V_r V_rᵀ``, so every non-zero singular value of ``BJ`` is ``√σ``, and the
condition number of the system becomes 1. The update sums the aligned gradients,
``d = (BJ)ᵀ 1 = Jᵀ (B 1)`` (paper, official code, LibMTL), or averages them (torchjd).
``σ`` is the smallest kept eigenvalue (``scale="min"``, the paper), the lower median
(``"median"``, ``torch.median`` of the official code) or the mean (``"rmse"``).

Aligned-MTL-UB applies the same weights to the gradients at the shared representation
(``level="representation"``).

References:
  Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
  Learning", CVPR 2023, arXiv:2305.19000.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.methods._ew import REDUCTIONS
from mtljax.solvers._mask import num_present, restrict, task_support
from mtljax.solvers._psd import psd_eigh

SCALES = ("min", "median", "rmse")


def aligned_mtl(
    num_tasks: int,
    *,
    scale: str = "min",
    reduction: str = "sum",
    rtol: float | None = None,
    level: str = "parameters",
) -> Method:
    """Aligned-MTL: ``w = B 1`` (or ``B 1/T``), ``B = √σ V Λ^{-1/2} Vᵀ``.

    Args:
      num_tasks: T.
      scale: ``"min"`` (paper, default), ``"median"`` or ``"rmse"``: which ``σ`` sets the
        common singular value.
      reduction: ``"sum"`` (paper, official code and LibMTL; default) or ``"mean"`` (torchjd).
      rtol: eigenvalues ``λ ≤ rtol · λ_max`` are discarded (default ``T · eps`` of the Gram
        matrix's dtype, the rule of the official code and of ``numpy.linalg.matrix_rank``).
      level: ``"parameters"`` (Aligned-MTL) or ``"representation"`` (Aligned-MTL-UB).

    Returns:
      A stateless Gram-space :class:`~mtljax.methods.Method`. The weights do not change
      under a common rescaling of the gradients. With every gradient zero the weights are
      the equal weights of the reduction and ``d = 0``.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("aligned_mtl", np.array([[2.0, 0.0], [0.0, 1.0]])).tolist()
      [1.0, 1.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    if rtol is not None and not rtol >= 0.0:
        raise ValueError(f"rtol must be non-negative, got {rtol!r}.")
    name = "aligned_mtl" if level == "parameters" else "aligned_mtl_ub"

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # Under a mask the eigenpairs of the present tasks' block: the absent tasks add zero
        # eigenvalues, which are never kept (and sort first, before the kept ones).
        lam, vec, keep = psd_eigh(gram, rtol=rtol, mask=mask)  # ascending: kept ones last
        rank = jnp.sum(keep)
        kept = jnp.where(keep, lam, 0.0)
        if scale == "min":
            sigma = jnp.min(jnp.where(keep, lam, jnp.inf))
        elif scale == "median":
            sigma = lam[num_tasks - rank + (rank - 1) // 2]
        else:
            sigma = jnp.sum(kept) / jnp.maximum(rank, 1)
        inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
        count = num_present(mask, gram.dtype)
        unit = 1.0 if reduction == "sum" else 1.0 / jnp.maximum(count, 1.0)
        ones = restrict(jnp.full((num_tasks,), unit, gram.dtype), mask)
        weights = jnp.sqrt(jnp.where(rank > 0, sigma, 0.0)) * (vec @ (inv_sqrt * (vec.T @ ones)))
        return restrict(jnp.where(rank > 0, weights, ones), mask), state

    return gram_weighting(name, num_tasks, optax.EmptyState, weights_fn, level=level, degree=0.0)
