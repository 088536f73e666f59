"""PCGrad: project each task gradient off the gradients it conflicts with.

For each task i, in a random order of the other tasks j: if ``g_i' · g_j < 0`` then
``g_i' ← g_i' − (g_i' · g_j / ‖g_j‖²) g_j``. The update is ``d = Σ_i g_i'`` (the paper) or its
mean. Every ``g_i'`` stays a combination ``Σ_k C_ik g_k``, so the whole procedure runs on the
coefficients ``C`` and the Gram matrix (``g_i' · g_j = (C G)_ij``), and ``w = Σ_i C_i``.

At T = 2 the result conflicts with neither task; on non-conflicting gradients it equals the sum.

References:
  Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
  NeurIPS 2020, arXiv:2001.06782.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.methods._base import Method, as_key, check_num_tasks, gram_weighting
from mtljax.methods._ew import REDUCTIONS
from mtljax.solvers._mask import num_present, restrict_gram, task_support


class PCGradState(NamedTuple):
    key: jax.Array  # PRNG key for the projection orders


def pcgrad(num_tasks: int, *, reduction: str = "sum", key: jax.Array | int = 0) -> Method:
    """Projecting conflicting gradients, in Gram space.

    Args:
      num_tasks: T.
      reduction: ``"sum"`` (the paper, default) or ``"mean"`` of the projected gradients.
      key: PRNG key or integer seed for the random projection orders (kept in the state).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method`.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.
    """
    num_tasks = check_num_tasks(num_tasks)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    key0 = as_key(key)

    def project_one(i, order, gram):
        tiny = jnp.finfo(gram.dtype).tiny

        def body(s, coeffs):
            j = order[s]
            dot = coeffs @ gram[:, j]
            norm_sq = gram[j, j]
            conflict = (j != i) & (dot < 0) & (norm_sq > tiny)
            step = jnp.where(conflict, dot / jnp.where(conflict, norm_sq, 1.0), 0.0)
            return coeffs - step * jax.nn.one_hot(j, num_tasks, dtype=gram.dtype)

        return lax.fori_loop(0, num_tasks, body, jax.nn.one_hot(i, num_tasks, dtype=gram.dtype))

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # Absent tasks enter as zero gradients, which no projection uses, and their own
        # projected gradients are left out: the present tasks' PCGrad, visited in the order a
        # uniform permutation of T induces on them (uniform too: the same law, not the draw).
        gram = restrict_gram(gram, mask)
        key, sub = jax.random.split(state.key)
        orders = jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(
            jax.random.split(sub, num_tasks)
        )
        coeffs = jax.vmap(project_one, in_axes=(0, 0, None))(
            jnp.arange(num_tasks), orders, gram
        )
        weights = jnp.where(mask[:, None], coeffs, 0.0).sum(0)
        if reduction == "mean":
            weights = weights / jnp.maximum(num_present(mask, weights.dtype), 1.0)
        return weights, PCGradState(key)

    return gram_weighting("pcgrad", num_tasks, lambda: PCGradState(key0), weights_fn, degree=0.0)
