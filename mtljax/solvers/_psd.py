"""Eigen-decompositions of positive semi-definite T×T matrices with a rank tolerance.

``psd_eigh`` marks the eigenvalues above ``rtol · λ_max`` as kept (the numerical rank, as in
``numpy.linalg.matrix_rank``); ``psd_pinv`` is the Moore-Penrose pseudo-inverse built from the
kept part only, so it stays finite on rank-deficient Gram matrices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def default_rtol(gram: jax.Array) -> float:
    """``T · eps`` of the Gram matrix's dtype (``numpy.linalg.matrix_rank``'s rank tolerance)."""
    return gram.shape[0] * float(jnp.finfo(gram.dtype).eps)


def psd_eigh(
    gram: jax.Array, *, rtol: float | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eigenvalues (ascending), eigenvectors and the mask of the numerically non-zero ones.

    Args:
      gram: ``[T, T]`` symmetric positive semi-definite matrix.
      rtol: relative tolerance; eigenvalue ``λ_i`` is kept when ``λ_i > rtol · max(λ)``.
        Defaults to :func:`default_rtol`. A zero matrix keeps nothing.

    Returns:
      ``(λ [T], V [T, T], keep [T] bool)`` with ``gram ≈ V diag(λ) Vᵀ``.
    """
    rtol = default_rtol(gram) if rtol is None else rtol
    lam, vec = jnp.linalg.eigh(0.5 * (gram + gram.T))
    keep = lam > rtol * jnp.max(lam)
    return lam, vec, keep


def psd_pinv(gram: jax.Array, *, rtol: float | None = None) -> jax.Array:
    """Pseudo-inverse ``G⁺ = V_r diag(1/λ_r) V_rᵀ`` of a PSD matrix, over the kept eigenvalues."""
    lam, vec, keep = psd_eigh(gram, rtol=rtol)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return (vec * inv) @ vec.T
