"""Nash-MTL: the Nash bargaining solution of the tasks' utilities.

Each task's utility of the update ``d = Jᵀ α`` is ``g_tᵀ d``; the Nash bargaining solution in
the ball of updates is ``d ∝ Jᵀ α`` with ``α > 0`` solving ``G α = 1/α`` (element-wise), i.e.
``α_t (g_tᵀ d) = 1`` for every task. Then ``‖d‖² = αᵀ G α = T``, and the update is clipped to
``‖d‖ ≤ max_norm`` (the official code calls ``clip_grad_norm_`` on the shared parameters).

The official code approaches the solution by a sequence of convex problems (cvxpy/ECOS,
``optim_niter`` rounds); here the same system is solved on device by damped Newton on its
convex potential ``½ αᵀGα − Σ log α`` (:func:`mtljax.solvers._fair.alpha_fair_weights`),
warm-started from the previous solution kept in the state. At ``T = 2`` the solution is
``d ∝ g_1/‖g_1‖ + g_2/‖g_2‖``, the normalised sum of the unit gradients.

References:
  Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
  Bargaining Game", ICML 2022, arXiv:2202.01017.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting, hparam_aliases
from mtljax.solvers._fair import alpha_fair_weights
from mtljax.solvers._mask import restrict, restrict_gram, task_support


class NashMTLState(NamedTuple):
    alpha: jax.Array  # [T] last solution of G α = 1/α, before the norm clip (0: none yet)
    step: jax.Array  # [] int32, calls so far


@hparam_aliases(optim_niter="max_iters")
def nash_mtl(
    num_tasks: int,
    *,
    max_norm: float = 1.0,
    update_weights_every: int = 1,
    max_iters: int = 20,
) -> Method:
    """Nash-MTL: ``α`` with ``G α = 1/α``, ``d = Jᵀ α`` clipped to ``‖d‖ ≤ max_norm``.

    Args:
      num_tasks: T.
      max_norm: clip the update's norm to this value; ``≤ 0`` disables the clip (as in the
        official code). With the exact solution ``‖d‖ = √T`` before the clip, so the default
        1.0 returns unit-norm updates for ``T ≥ 2``.
      update_weights_every: solve every k-th call; in between, the previous ``α`` is reused
        (and the clip recomputed on the current gradients), as in the official code.
      max_iters: Newton iteration budget per solve (old name: ``optim_niter``).

    Returns:
      A Gram-space :class:`~mtljax.methods.Method` whose state keeps ``α`` and the step.
      Zero gradients get weight 0. With a positive null vector of ``G`` (e.g. exactly opposite
      gradients) no solution exists: the regularised solve gives large finite weights whose
      combination cancels, and the clip bounds ``d``. With every gradient zero, ``d = 0``.
      At extreme scales :meth:`Method.apply` solves on rows rescaled by a power of two ``m`` and
      divides ``α`` by ``m`` (``α`` has degree −½ in ``G``), so ``d`` stays finite; the kept
      ``α`` is then the rescaled problem's (a warm start).

    Example:
      >>> import numpy as np, mtljax
      >>> d = mtljax.aggregate("nash_mtl", np.array([[2.0, 0.0], [0.0, 1.0]]))
      >>> np.round(np.asarray(d), 4).tolist()
      [0.7071, 0.7071]
    """
    num_tasks = check_num_tasks(num_tasks)
    if not isinstance(update_weights_every, int) or update_weights_every < 1:
        raise ValueError(
            f"update_weights_every must be a positive integer, got {update_weights_every!r}."
        )
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}.")
    max_norm = float(max_norm)

    def init_state():
        # Default float dtype: float64 when x64 is enabled, so the kept α loses nothing.
        return NashMTLState(jnp.zeros((num_tasks,)), jnp.zeros((), jnp.int32))

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        # The present tasks' bargaining problem; a reused α is restricted to them too.
        gram = restrict_gram(gram, mask)
        previous = state.alpha.astype(gram.dtype)
        alpha = lax.cond(
            state.step % update_weights_every == 0,
            lambda: alpha_fair_weights(
                gram, alpha=1.0, init=previous, max_iters=max_iters, mask=mask
            ),
            lambda: restrict(previous, mask),
        )
        weights = alpha
        if max_norm > 0:
            norm = jnp.sqrt(jnp.clip(alpha @ gram @ alpha, 0.0))
            weights = jnp.where(norm > max_norm, alpha * (max_norm / norm), alpha)
        # Absent tasks keep their last α (the warm start of their next solve).
        kept = jnp.where(mask, alpha.astype(state.alpha.dtype), state.alpha)
        return weights, NashMTLState(kept, state.step + 1)

    return gram_weighting("nash_mtl", num_tasks, init_state, weights_fn, degree=-0.5)
