"""Solvers over the probability simplex Δ = {w ∈ R^T : w ≥ 0, Σ w = 1}.

``min_norm_simplex`` finds the min-norm point of the convex hull of the task gradients,
``argmin_{w∈Δ} wᵀ G w``, by Frank-Wolfe with exact line search (Sener & Koltun, NeurIPS 2018,
Algorithm 2 run in Gram space). ``project_simplex`` is the Euclidean projection onto Δ
(Duchi et al., ICML 2008).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def normalize_gram(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(G / s, s)`` with ``s`` the largest diagonal entry (1 when G is zero).

    Simplex-constrained minimisers of ``wᵀ G w`` do not change under positive scaling of G;
    dividing by ``s`` keeps huge and tiny gradients in a range where tolerances mean the same.
    """
    scale = jnp.max(jnp.diagonal(gram))
    tiny = jnp.finfo(gram.dtype).tiny
    scale = jnp.where(scale > tiny, scale, jnp.ones_like(scale))
    return gram / scale, scale


def min_norm_simplex(
    gram: jax.Array,
    *,
    max_iters: int = 250,
    tol: float = 1e-7,
    init: jax.Array | None = None,
) -> jax.Array:
    """Min-norm point of the convex hull of the rows of J, from ``G = J Jᵀ``.

    Solves ``min_{w ∈ Δ} wᵀ G w`` by Frank-Wolfe. Each iteration moves towards the vertex
    ``e_t`` with ``t = argmin_i (G w)_i`` with the exact step
    ``γ = clip((a − b) / (a − 2b + c), 0, 1)``, ``a = wᵀGw, b = (Gw)_t, c = G_tt``.
    Stops when the Frank-Wolfe gap ``wᵀGw − min_i (Gw)_i`` falls under ``tol`` (on the
    Gram matrix normalised by its largest diagonal entry) or after ``max_iters`` iterations.

    Args:
      gram: ``[T, T]`` positive semi-definite matrix.
      max_iters: iteration budget.
      tol: tolerance on the normalised Frank-Wolfe gap.
      init: optional starting weights on the simplex (warm start); uniform by default.

    Returns:
      ``[T]`` weights on the simplex.
    """
    g, _ = normalize_gram(gram)
    t = g.shape[0]
    w0 = jnp.full((t,), 1.0 / t, g.dtype) if init is None else init.astype(g.dtype)

    def gap(w, gw):
        return jnp.dot(w, gw) - jnp.min(gw)

    def cond(carry):
        i, w, gw = carry
        return (i < max_iters) & (gap(w, gw) > tol)

    def body(carry):
        i, w, gw = carry
        k = jnp.argmin(gw)
        a, b, c = jnp.dot(w, gw), gw[k], g[k, k]
        denom = a - 2.0 * b + c
        step = jnp.where(denom > 0, (a - b) / jnp.where(denom > 0, denom, 1.0), 0.0)
        step = jnp.clip(step, 0.0, 1.0)
        w = (1.0 - step) * w + step * jax.nn.one_hot(k, t, dtype=g.dtype)
        gw = (1.0 - step) * gw + step * g[:, k]
        return i + 1, w, gw

    _, w, _ = lax.while_loop(cond, body, (0, w0, g @ w0))
    return w


def project_simplex(v: jax.Array, radius: float = 1.0) -> jax.Array:
    """Euclidean projection of ``v`` onto ``{w ≥ 0, Σ w = radius}`` (sort-based, O(T log T))."""
    t = v.shape[0]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - radius
    idx = jnp.arange(1, t + 1, dtype=v.dtype)
    rho = jnp.max(jnp.where(u - css / idx > 0, jnp.arange(t), 0))
    theta = css[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)
