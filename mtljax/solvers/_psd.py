"""Eigen-decompositions of positive semi-definite T×T matrices with a rank tolerance.

``psd_eigh`` marks the eigenvalues above ``rtol · λ_max`` as kept (the numerical rank, as in
``numpy.linalg.matrix_rank``); ``psd_pinv`` is the Moore-Penrose pseudo-inverse built from the
kept part only, so it stays finite on rank-deficient Gram matrices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtljax.solvers._mask import restrict_gram


def default_rtol(gram: jax.Array) -> float:
    """``T · eps`` of the Gram matrix's dtype (``numpy.linalg.matrix_rank``'s rank tolerance)."""
    return gram.shape[0] * float(jnp.finfo(gram.dtype).eps)


def psd_eigh(
    gram: jax.Array, *, rtol: float | None = None, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eigenvalues (ascending), eigenvectors and the mask of the numerically non-zero ones.

    Args:
      gram: ``[T, T]`` symmetric positive semi-definite matrix.
      rtol: relative tolerance; eigenvalue ``λ_i`` is kept when ``λ_i > rtol · max(λ)``.
        Defaults to :func:`default_rtol` (``K · eps`` under a mask with K present tasks). A
        zero matrix keeps nothing.
      mask: optional ``[T]`` bool: decompose the present tasks' block only. Absent rows and
        columns are set to 0, which adds ``T − K`` zero eigenvalues that are never kept, so
        the kept eigenpairs are those of the ``[K, K]`` block (eigenvectors 0 on the absent
        tasks, up to round-off).

    Returns:
      ``(λ [T], V [T, T], keep [T] bool)`` with ``gram ≈ V diag(λ) Vᵀ``.
    """
    if mask is not None:
        gram = restrict_gram(gram, mask)
        if rtol is None:
            rtol = jnp.sum(mask) * jnp.finfo(gram.dtype).eps
    rtol = default_rtol(gram) if rtol is None else rtol
    lam, vec = jnp.linalg.eigh(0.5 * (gram + gram.T))
    keep = lam > rtol * jnp.max(lam)
    return lam, vec, keep


def psd_pinv(gram: jax.Array, *, rtol: float | None = None) -> jax.Array:
    """Pseudo-inverse ``G⁺ = V_r diag(1/λ_r) V_rᵀ`` of a PSD matrix, over the kept eigenvalues."""
    lam, vec, keep = psd_eigh(gram, rtol=rtol)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return (vec * inv) @ vec.T
