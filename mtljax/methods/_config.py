"""ConFIG: a conflict-free update with equal projections on the unit task gradients.

With unit gradients ``û_t = g_t / ‖g_t‖`` stacked as ``Û``, the direction solves ``Û x = p``
in the least-squares sense, ``x = Û⁺ p`` (``p = 1`` by default), so that every unit gradient
has the same projection on it; it is normalised to ``ū = x / ‖x‖`` and rescaled by the sum of
the projections of the gradients, ``d = (Σ_t g_t · ū) ū``.

In Gram space, with ``D = diag(G)`` and the cosine matrix ``Ĝ = D^{-1/2} G D^{-1/2} = Û Ûᵀ``:
``x = Ûᵀ c`` with ``c = Ĝ⁺ p``, i.e. ``x = Jᵀ a`` with ``a = D^{-1/2} c``; then
``‖x‖² = aᵀGa``, ``Σ_t g_t · x = 1ᵀGa`` and ``w = (1ᵀGa / aᵀGa) · a``.

When the gradients are linearly independent, ``g_t · d`` is the same positive multiple of
``‖g_t‖`` for every task (conflict-free).

References:
  Liu, Chen & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
  Networks", ICLR 2025, arXiv:2408.11104.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.solvers._mask import num_present, restrict, restrict_gram, task_support


def config(num_tasks: int, *, pref_vector=None, use_least_squares: bool = True) -> Method:
    """Conflict-free inverse gradients: ``d = (Σ_t g_t · ū) ū``, ``ū ∝ Û⁺ p``.

    Args:
      num_tasks: T.
      pref_vector: ``[T]`` positive targets ``p`` for the projections of the unit gradients on
        the direction (ones by default, the paper's equal weighting). The length is always the
        paper's ``Σ_t g_t · ū``.
      use_least_squares: how ``c = Ĝ⁺ p`` is computed: ``jnp.linalg.lstsq`` (default, like the
        reference implementation) or an explicit pseudo-inverse ``jnp.linalg.pinv``. Both give
        the minimum-norm least-squares solution; singular values of Ĝ under ``√eps`` of the
        largest are treated as zero (Ĝ squares the conditioning of Û).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method`. Zero gradients get weight 0 (their unit
      vector is taken as 0); when every gradient is zero, or no direction has the targeted
      projections (``p`` orthogonal to the range of Ĝ, e.g. two opposite gradients),
      ``w = 0`` and ``d = 0``.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("config", np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
      [1.0, 1.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    pref = np.ones(num_tasks) if pref_vector is None else np.asarray(pref_vector, np.float64)
    if pref.shape != (num_tasks,) or not np.all(np.isfinite(pref)) or np.any(pref <= 0):
        raise ValueError(
            f"config: pref_vector must be {num_tasks} finite positive numbers, got {pref_vector!r}."
        )

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # Absent tasks are zero rows with target 0: the minimum-norm least-squares solution
        # is the present tasks' one, with 0 on the absent tasks.
        gram = restrict_gram(gram, mask)
        tiny = jnp.finfo(gram.dtype).tiny
        norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram), 0.0))
        nonzero = norms > jnp.sqrt(tiny)
        inv_norms = jnp.where(nonzero, 1.0 / jnp.where(nonzero, norms, 1.0), 0.0)
        cosines = gram * jnp.outer(inv_norms, inv_norms)
        target = restrict(jnp.asarray(pref, gram.dtype), mask)
        rcond = float(np.sqrt(np.finfo(gram.dtype).eps))
        if use_least_squares:
            coeffs = jnp.linalg.lstsq(cosines, target, rcond=rcond)[0]
        else:
            coeffs = jnp.linalg.pinv(cosines, rtol=rcond, hermitian=True) @ target
        a = coeffs * inv_norms
        sq_norm = a @ gram @ a
        length = jnp.sum(gram @ a)
        # ‖x‖² = cᵀĜc is scale-free and, when p has a component in the range of Ĝ, at least
        # ‖P p‖² / T. Under rcond · ‖p‖² / T it is the round-off of a zero solution (p ⟂ range
        # Ĝ, e.g. two opposite gradients), which normalising x would blow up to full length.
        count = jnp.maximum(num_present(mask, gram.dtype), 1.0)
        defined = coeffs @ cosines @ coeffs > rcond * (target @ target) / count
        scale = jnp.where(defined, length / jnp.where(defined, sq_norm, 1.0), 0.0)
        return scale * a, state

    return gram_weighting("config", num_tasks, optax.EmptyState, weights_fn, degree=0.0)
