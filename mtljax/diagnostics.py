"""Gradient-conflict diagnostics from the Gram matrix (T-sized, no extra P-sized work).

Given ``G = J Jᵀ`` of the shared-parameter Jacobian and the update ``d``:

* ``grad_norms[t] = ‖g_t‖ = √G_tt``;
* ``cosine[s, t] = G_st / (‖g_s‖ ‖g_t‖)``;
* ``conflict_fraction``: the fraction of task pairs s < t with ``cosine[s, t] < 0``;
* ``magnitude_similarity[s, t] = 2 ‖g_s‖ ‖g_t‖ / (‖g_s‖² + ‖g_t‖²)`` (GMS; Yu et al. 2020);
* ``update_norm = ‖d‖`` and ``update_cosine[t] = g_t · d / (‖g_t‖ ‖d‖)``. When ``d = Jᵀ w``,
  ``J d = G w`` and ``‖d‖² = wᵀ G w``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtljax.linalg import cosine_matrix


def _safe_div(num, den, eps=1e-30):
    return jnp.where(den > eps, num / jnp.where(den > eps, den, 1.0), 0.0)


def gram_diagnostics(gram: jax.Array, task_dots: jax.Array, update_sq_norm: jax.Array) -> dict:
    """Conflict statistics from ``G``, ``J d`` (``[T]``) and ``‖d‖²``."""
    t = gram.shape[0]
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram), 0.0))
    cos = cosine_matrix(gram)
    upper = jnp.triu(jnp.ones((t, t), bool), k=1)
    pairs = max(t * (t - 1) // 2, 1)
    update_norm = jnp.sqrt(jnp.clip(update_sq_norm, 0.0))
    return {
        "grad_norms": norms,
        "cosine": cos,
        "conflict_fraction": jnp.sum((cos < 0) & upper) / pairs,
        "magnitude_similarity": _safe_div(
            2.0 * jnp.outer(norms, norms), norms[:, None] ** 2 + norms[None, :] ** 2
        ),
        "update_norm": update_norm,
        "update_cosine": _safe_div(task_dots, norms * update_norm),
    }
