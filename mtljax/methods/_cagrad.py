"""CAGrad: conflict-averse gradient descent.

CAGrad looks for the update that maximises the worst task improvement in a ball around the mean
gradient ``g0 = (1/T) Σ_t g_t``: ``max_d min_t g_tᵀ d`` s.t. ``‖d − g0‖ ≤ c ‖g0‖``. Its dual is a
T-sized problem on the simplex,

    w* = argmin_{w∈Δ} g_wᵀ g0 + √φ ‖g_w‖,   g_w = Jᵀ w,  √φ = c ‖g0‖,

and the update is ``d = g0 + (√φ / ‖g_w*‖) g_w*``, divided by ``1 + c²`` (``rescale=1``) or
``1 + c`` (``rescale=2``). In Gram space ``g_wᵀ g0 = wᵀ G 1/T``, ``‖g_w‖² = wᵀ G w`` and
``‖g0‖² = 1ᵀ G 1 / T²``, so ``d = Jᵀ λ`` with ``λ = (1/T + (√φ/‖g_w*‖) w*) / rescale``. The dual
is solved on device by accelerated projected gradient on the Gram matrix divided by its largest
diagonal entry (the minimiser does not depend on that scale). ``c = 0`` gives the mean.

References:
  Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021, arXiv:2110.14048.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.solvers._mask import num_present, restrict_gram, task_support
from mtljax.solvers._simplex import normalize_gram
from mtljax.solvers._simplex_smooth import minimize_on_simplex

RESCALES = (0, 1, 2)


def cagrad(
    num_tasks: int,
    *,
    c: float = 0.4,
    rescale: int = 1,
    max_iters: int = 500,
    tol: float = 1e-7,
) -> Method:
    """Conflict-averse gradient descent, in Gram space.

    Args:
      num_tasks: T.
      c: radius of the ball around the mean gradient, relative to ``‖g0‖`` (``c ≥ 0``; the
        paper uses 0.4 on NYUv2, LibMTL defaults to 0.5).
      rescale: ``0`` (``d`` as is, torchjd's convention), ``1`` (``d / (1 + c²)``, the official
        code's and LibMTL's default) or ``2`` (``d / (1 + c)``).
      max_iters: iteration budget of the simplex solver.
      tol: tolerance on the solver's gradient-mapping norm (normalised Gram matrix).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` at the scale of the mean gradient. When
      ``‖g_w*‖`` vanishes (up to round-off; the conflict-averse direction is then undefined)
      the correction is dropped and ``d = g0`` divided by the ``rescale`` divisor; with every
      gradient zero, ``d = 0``.
      At extreme scales (entries beyond ``2^±32`` in float32) :meth:`Method.apply` solves on
      rows rescaled by a power of two (the weights do not depend on the scale), so ``d`` keeps
      its direction and stays finite; a row decades shorter than the longest may count as zero
      there.

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("cagrad", np.array([[1.0, 0.0], [0.0, 1.0]]), c=0.0).tolist()
      [0.5, 0.5]
    """
    num_tasks = check_num_tasks(num_tasks)
    if not c >= 0.0:
        raise ValueError(f"c must be non-negative, got {c!r}.")
    if rescale not in RESCALES:
        raise ValueError(f"rescale must be one of {RESCALES}, got {rescale!r}.")
    if max_iters < 1:
        raise ValueError(f"max_iters must be positive, got {max_iters!r}.")
    divisor = (1.0, 1.0 + c**2, 1.0 + c)[rescale]

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # Under a mask: the K present tasks' mean, ball and simplex (absent rows are 0 in g).
        g, _ = normalize_gram(restrict_gram(gram, mask))
        eps = jnp.finfo(g.dtype).eps
        count = num_present(mask, g.dtype)
        mean = jnp.where(mask, 1.0 / jnp.maximum(count, 1.0), 0.0)
        g0_dots = g @ mean  # G 1/T: g_t · g0
        radius = c * jnp.sqrt(jnp.clip(mean @ g0_dots, 0.0))  # √φ = c ‖g0‖

        def dual(w):
            # eps² smooths the norm at g_w = 0 without moving any minimiser noticeably.
            return w @ g0_dots + radius * jnp.sqrt(jnp.clip(w @ g @ w, 0.0) + eps**2)

        w = minimize_on_simplex(dual, mean, max_iters=max_iters, tol=tol, mask=mask)
        gw_sq = jnp.clip(w @ g @ w, 0.0)
        # Round-off of wᵀGw is eps (Σ_t w_t ‖g_t‖)² (times K): relative to it, not to the
        # largest gradient, so that g_w* made of gradients decades shorter stays defined.
        reach = w @ jnp.sqrt(jnp.clip(jnp.diagonal(g), 0.0))
        defined = gw_sq > count * eps * reach**2
        coef = jnp.where(defined, radius / jnp.sqrt(jnp.where(defined, gw_sq, 1.0)), 0.0)
        return (mean + coef * w) / divisor, state

    return gram_weighting("cagrad", num_tasks, optax.EmptyState, weights_fn, degree=0.0)
