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


def krum(num_tasks: int, *, n_byzantine: int = 0, n_selected: int = 1) -> Method:
    """(Multi-)Krum: ``w_t = 1/m`` on the ``m`` gradients of lowest Krum score, 0 elsewhere.

    Args:
      num_tasks: T; needs ``T ≥ n_byzantine + 3`` so that every score sums at least one
        distance.
      n_byzantine: f, the number of arbitrary gradients to tolerate (``≥ 0``).
      n_selected: m, the number of gradients averaged (``1 ≤ m ≤ T``).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` (weights ``1/m`` on the selection, like
      torchjd's ``Krum``).

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
    num_neighbours = num_tasks - n_byzantine - 2

    def weights_fn(gram, state, *, task_losses=None, **extra):
        del task_losses, extra
        sq_norms = jnp.diagonal(gram)
        distances = jnp.clip(sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram, 0.0)
        distances = jnp.where(jnp.eye(num_tasks, dtype=bool), jnp.inf, distances)
        scores = jnp.sum(jnp.sort(distances, axis=1)[:, :num_neighbours], axis=1)
        selected = jnp.argsort(scores, stable=True)[:n_selected]
        weights = jnp.zeros((num_tasks,), gram.dtype).at[selected].set(1.0 / n_selected)
        return weights, state

    return gram_weighting("krum", num_tasks, optax.EmptyState, weights_fn)
