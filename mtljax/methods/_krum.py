"""Krum: the task gradients closest to their neighbours, a Byzantine-robust aggregator.

Each gradient is scored by the sum of its squared distances to its ``T − f − 2`` nearest other
gradients, ``f`` being the number of Byzantine (arbitrary) gradients tolerated; the update is
the mean of the ``m`` lowest-scoring gradients (Krum for ``m = 1``, Multi-Krum otherwise).
Distances come from the Gram matrix: ``‖g_s − g_t‖² = G_ss + G_tt − 2 G_st``. Ties go to the
lower task index.

References:
  Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", NeurIPS 2017, arXiv:1703.02757.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.solvers._mask import restrict_gram, task_support


def krum(num_tasks: int, *, n_byzantine: int = 0, n_selected: int = 1) -> Method:
    """(Multi-)Krum: ``w_t = 1/m`` on the ``m`` gradients of lowest Krum score, 0 elsewhere.

    Args:
      num_tasks: T; needs ``T ≥ n_byzantine + 3`` so that every score sums at least one
        distance.
      n_byzantine: f, the number of arbitrary gradients to tolerate (``≥ 0``).
      n_selected: m, the number of gradients averaged (``1 ≤ m ≤ T``).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` (weights ``1/m`` on the selection, like
      torchjd's ``Krum``). Under a ``task_mask`` with K present tasks: Krum of the K present
      gradients; with ``K < f + 3`` no score sums a distance and Krum abstains (``w = 0``,
      ``d = 0``) rather than trust gradients it cannot vet; with ``K < m`` it averages the K.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.

    Example:
      >>> import numpy as np, mtljax
      >>> j = np.array([[1.0, 0.0], [1.1, 0.0], [0.9, 0.0], [9.0, 9.0]])
      >>> mtljax.aggregate("krum", j, n_byzantine=1).tolist()
      [1.0, 0.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    if n_byzantine < 0:
        raise ValueError(f"krum: n_byzantine must be >= 0, got {n_byzantine}.")
    if not 1 <= n_selected <= num_tasks:
        raise ValueError(f"krum: n_selected must be in [1, {num_tasks}], got {n_selected}.")
    if num_tasks < n_byzantine + 3:
        raise ValueError(
            f"krum needs num_tasks >= n_byzantine + 3 (got num_tasks={num_tasks}, "
            f"n_byzantine={n_byzantine}): each score sums the T - f - 2 nearest distances."
        )

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        count = jnp.sum(mask)
        gram = restrict_gram(gram, mask)
        sq_norms = jnp.diagonal(gram)
        distances = jnp.clip(sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram, 0.0)
        others = mask[:, None] & mask[None, :] & ~jnp.eye(num_tasks, dtype=bool)
        distances = jnp.where(others, distances, jnp.inf)
        # Each present task's score sums its K - f - 2 nearest present distances.
        nearest = jnp.sort(distances, axis=1)
        counted = jnp.arange(num_tasks) < count - n_byzantine - 2
        scores = jnp.where(mask, jnp.sum(jnp.where(counted, nearest, 0.0), axis=1), jnp.inf)
        rank = jnp.zeros((num_tasks,), int).at[jnp.argsort(scores, stable=True)].set(
            jnp.arange(num_tasks)
        )
        # Under K < f + 3 present tasks no score sums a distance: Krum abstains (w = 0) rather
        # than trust gradients it cannot vet. Under K < m it averages the K present ones.
        chosen = jnp.minimum(count, n_selected)
        selected = mask & (rank < chosen) & (count >= n_byzantine + 3)
        weights = jnp.where(selected, 1.0 / jnp.maximum(chosen, 1), 0.0).astype(gram.dtype)
        return weights, state

    return gram_weighting("krum", num_tasks, optax.EmptyState, weights_fn, degree=0.0)
