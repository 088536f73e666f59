"""Gradient similarity: auxiliary gradients used only as far as they agree with the primary one.

Du et al. train a main task with auxiliary losses and gate each auxiliary gradient ``g_a`` by
its cosine with the main gradient ``g_P``: the *unweighted* version adds ``g_a`` when
``cos(g_P, g_a) > 0`` and drops it otherwise, the *weighted* version adds
``max(0, cos(g_P, g_a)) · g_a``. So ``d = g_P + Σ_a w_a g_a`` with ``w_a ≥ 0`` only where
``g_P · g_a > 0``, hence ``g_P · d ≥ ‖g_P‖²``: the update never conflicts with the primary
objective, and it is zero only where ``g_P`` is (the paper's Proposition 1: gradient descent
with this rule converges to critical points of the main loss).

Several primary tasks are one primary objective, their sum: ``g_P = Σ_{p ∈ P} g_p``, and each
primary task keeps weight 1. In Gram space ``g_P · g_a = (G 1_P)_a`` and
``‖g_P‖² = 1_Pᵀ G 1_P``, so the weights are T-sized work on ``G``.

Conventions where the paper is silent: a zero primary (or auxiliary) gradient has cosine 0, so
the auxiliaries are dropped; the unweighted gate is strict (``cos = 0`` drops ``g_a``, as the
weighted rule gives it weight 0), as in the AuxiLearn reference implementation of this
baseline. Under a ``task_mask`` the primary objective is the sum of the *present* primary tasks;
with none present, the auxiliaries have nothing to agree with and every weight is 0.

References:
  Du, Czarnecki, Jayakumar, Farajtabar, Pascanu & Lakshminarayanan, "Adapting Auxiliary Losses
  Using Gradient Similarity", 2018, arXiv:1812.02224 (Algorithm 1, weighted and unweighted).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.solvers._mask import restrict_gram, task_support


def primary_indicator(name: str, num_tasks: int, primary: Sequence[int]) -> np.ndarray:
    """Validates task indices of the primary tasks; returns their ``[T]`` bool indicator."""
    indices = np.asarray(primary)
    if (indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer)
            or np.any(indices < 0) or np.any(indices >= num_tasks)
            or np.unique(indices).size != indices.size):
        raise ValueError(
            f"{name}: primary must be distinct task indices in [0, {num_tasks}), at least one, "
            f"got {primary!r}."
        )
    indicator = np.zeros(num_tasks, bool)
    indicator[indices] = True
    return indicator


def gradsim(num_tasks: int, *, primary: Sequence[int] = (0,), weighted: bool = False) -> Method:
    """Auxiliary gradients gated by their cosine with the primary gradient.

    ``w_p = 1`` for the primary tasks; for an auxiliary task a,
    ``c_a = (G 1_P)_a / (‖g_P‖ ‖g_a‖)`` and ``w_a = [c_a > 0]`` (unweighted) or
    ``w_a = max(0, c_a)`` (weighted). ``d = Jᵀw`` satisfies ``g_P · d ≥ ‖g_P‖²``.

    Args:
      num_tasks: T.
      primary: indices of the primary tasks (the main task(s)); the others are auxiliary.
        Their gradients are summed into one primary objective.
      weighted: ``False`` (default): the paper's unweighted version (an auxiliary gradient in
        or out); ``True``: its weighted version (scaled by the clipped cosine).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` whose weights do not depend on the scale of
      J (``degree=0``).

    Example:
      >>> import numpy as np, mtljax
      >>> jac = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
      >>> mtljax.aggregate("gradsim", jac).tolist()
      [2.0, 1.0]
      >>> [round(x, 4) for x in mtljax.aggregate("gradsim", jac, weighted=True).tolist()]
      [1.7071, 0.7071]

    References:
      Du et al., "Adapting Auxiliary Losses Using Gradient Similarity", 2018, arXiv:1812.02224.
    """
    num_tasks = check_num_tasks(num_tasks)
    is_primary = primary_indicator("gradsim", num_tasks, primary)
    if not isinstance(weighted, bool):
        raise ValueError(f"gradsim: weighted must be a bool, got {weighted!r}.")

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        gram = restrict_gram(gram, mask)
        main = jnp.where(mask & is_primary, 1.0, 0.0).astype(gram.dtype)
        agreement = gram @ main  # g_P · g_t
        if weighted:
            # ‖g_P‖ ‖g_a‖ as a product of square roots: neither factor squares out of range.
            norms = jnp.sqrt(jnp.maximum(main @ agreement, 0.0)) * jnp.sqrt(
                jnp.maximum(jnp.diagonal(gram), 0.0))
            safe = jnp.where(norms > 0.0, norms, 1.0)
            aux = jnp.where(norms > 0.0, jnp.clip(agreement / safe, 0.0, 1.0), 0.0)
        else:
            aux = jnp.where(agreement > 0.0, 1.0, 0.0).astype(gram.dtype)
        weights = jnp.where(is_primary, main, aux)
        # No present primary task: nothing for the auxiliaries to agree with.
        return jnp.where(mask & jnp.any(main > 0.0), weights, 0.0), state

    return gram_weighting("gradsim", num_tasks, optax.EmptyState, weights_fn, degree=0.0)
