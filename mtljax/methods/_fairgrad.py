"""FairGrad: α-fair allocation of the update among the tasks.

FairGrad sees ``g_tᵀ d`` as the utility task ``t`` gets from the update ``d = Jᵀ w`` and picks
the α-fair allocation: the weights solve ``G w = w^(−1/α)`` (element-wise power), ``w > 0``.
``α = 1`` is proportional fairness (the Nash bargaining solution of Nash-MTL, without its norm
clip); ``α → ∞`` tends to max-min fairness (equal ``g_tᵀ d``). The system is solved on device by
damped Newton on its convex potential (the paper's code calls ``scipy.optimize.least_squares``
from ``w = 1/T``; both return the unique solution).

References:
  Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, arXiv:2402.15638.
"""

from __future__ import annotations

import optax

from mtljax.methods._base import Method, check_num_tasks, gram_weighting
from mtljax.solvers._fair import alpha_fair_weights
from mtljax.solvers._mask import task_support


def fairgrad(
    num_tasks: int,
    *,
    alpha: float = 1.0,
    max_iters: int = 50,
    tol: float | None = None,
) -> Method:
    """FairGrad: ``w`` with ``G w = w^(−1/α)``, ``d = Jᵀ w``.

    Args:
      num_tasks: T.
      alpha: fairness exponent ``α > 0``.
      max_iters: Newton iteration budget (cold start at the orthogonal-gradient solution).
      tol: tolerance on the squared Newton decrement (default ``10 · T · eps``).

    Returns:
      A stateless Gram-space :class:`~mtljax.methods.Method`. The update is not normalised:
      ``‖d‖² = Σ_t w_t^(1−1/α)`` (``T`` at ``α = 1``). Zero gradients get weight 0; with a
      positive null vector of ``G`` (exactly opposite gradients) there is no solution and the
      regularised solve returns large finite weights whose combination cancels (see
      :func:`mtljax.solvers._fair.alpha_fair_weights`).
      At extreme scales :meth:`Method.apply` solves on rows rescaled by a power of two ``m`` and
      rescales ``w`` by ``m^(−2α/(1+α))`` and ``d`` by ``m^((1−α)/(1+α))``, each once, so ``d``
      stays finite (``w`` may underflow to 0).

    Example:
      >>> import numpy as np, mtljax
      >>> mtljax.aggregate("fairgrad", np.array([[2.0, 0.0], [0.0, 0.5]])).tolist()
      [1.0, 1.0]
    """
    num_tasks = check_num_tasks(num_tasks)
    if not alpha > 0.0:
        raise ValueError(f"alpha must be positive, got {alpha!r}.")
    if max_iters < 1:
        raise ValueError(f"max_iters must be positive, got {max_iters!r}.")
    alpha = float(alpha)

    def weights_fn(gram, state, *, task_losses=None, task_mask=None, **extra):
        del task_losses, extra
        mask = task_support(task_mask, num_tasks)
        weights = alpha_fair_weights(gram, alpha=alpha, max_iters=max_iters, tol=tol, mask=mask)
        return weights, state

    return gram_weighting("fairgrad", num_tasks, optax.EmptyState, weights_fn,
                          degree=-alpha / (1.0 + alpha))
