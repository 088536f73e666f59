"""SDMGrad: stochastic direction-oriented multi-objective gradient descent.

The direction-oriented problem keeps MGDA's common descent direction within a neighbourhood of
the average gradient ``g_0 = Jᵀ 1/T``. Its dual is ``min_{w∈Δ} ½ ‖Jᵀ w + λ g_0‖²`` and the update
is ``d = (Jᵀ w + λ g_0) / (1 + λ) = Jᵀ (w + λ/T) / (1 + λ)``. SDMGrad solves the dual by projected
SGD with *double sampling*: the stochastic gradient in ``w`` is
``J_ξ (J_ξ'ᵀ w + λ g_0(ξ')) = C (w + λ/T)`` with the cross Gram ``C = J_ξ J_ξ'ᵀ`` of two
independent mini-batches ``ξ, ξ'``, which is unbiased for ``J Jᵀ (w + λ/T)``; the update ``d``
uses a third batch ``ζ``. So a step needs three batches: the train step passes ``J_ζ`` as
``per_task_grads`` and ``(J_ξ, J_ξ')`` as ``extra_per_task_grads``.

λ = 0 is (stochastic) MGDA; λ → ∞ is gradient descent on the mean loss. Under a ``task_mask``
the inner solve runs on the simplex of the present tasks, from the present part of the last
``w`` (renormalised); absent tasks keep theirs.

References:
  Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
  Algorithms", NeurIPS 2023, arXiv:2305.18409.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mtljax import linalg
from mtljax.methods._base import (
    Method,
    MethodOutput,
    check_input_tasks,
    check_num_tasks,
    gradient_transform,
    hparam_aliases,
    scaled_rows,
    weights_dtype,
)
from mtljax.solvers import project_simplex
from mtljax.solvers._mask import (
    drop_absent,
    num_present,
    present_max,
    restrict,
    restrict_gram,
    restrict_simplex,
    task_support,
)


class SDMGradState(NamedTuple):
    weights: jax.Array  # [T] dual weights w on the simplex, warm start of the next inner solve


def cross_gram(per_task_a, per_task_b) -> jax.Array:
    """``A Bᵀ`` of two per-task trees with the same structure, ``[T, T]``, in ≥ float32.

    The only P-sized work of the double-sampling methods (SDMGrad, MoDo); ``linalg.gram`` is
    the special case ``A = B``.
    """
    dtype = jnp.promote_types(linalg.gram_dtype(per_task_a), linalg.gram_dtype(per_task_b))
    blocks = [
        lax.dot_general(
            a.reshape(a.shape[0], -1),
            b.reshape(b.shape[0], -1),
            (((1,), (1,)), ((), ())),
            precision=lax.Precision.HIGHEST,
            preferred_element_type=dtype,
        )
        for a, b in zip(jax.tree.leaves(per_task_a), jax.tree.leaves(per_task_b), strict=True)
    ]
    return sum(blocks[1:], blocks[0]).astype(dtype)


def extra_grads(name: str, num_tasks: int, per_task_grads, extra_per_task_grads, count: int):
    """Checks and returns the ``count`` extra batches' per-task gradients of a step."""
    if extra_per_task_grads is None or len(extra_per_task_grads) != count:
        got = None if extra_per_task_grads is None else len(extra_per_task_grads)
        raise ValueError(
            f"Method {name!r} needs extra_per_task_grads: a tuple of {count} per-task gradient "
            f"trees from independent mini-batches (got {got}). mtljax.make_train_step passes "
            f"them when the batch is a tuple of {count + 1} batches."
        )
    structure = jax.tree.structure(per_task_grads)
    for grads in extra_per_task_grads:
        if jax.tree.structure(grads) != structure:
            raise ValueError(f"Method {name!r}: every batch's gradients need the same tree.")
        check_input_tasks(name, num_tasks, grads)
    return tuple(extra_per_task_grads)


@hparam_aliases(niter="max_iters")
def sdmgrad(
    num_tasks: int,
    *,
    lamda: float = 0.3,
    max_iters: int = 20,
    lr: float = 5.0,
    momentum: float = 0.0,
) -> Method:
    """Stochastic direction-oriented MGDA with double sampling.

    Each step runs ``max_iters`` projected SGD steps on the dual weights, warm-started from the last
    step's ``w``: ``v ← μ v + Ĉ (w + λ/T)``, ``w ← Π_Δ(w − lr v)``, where ``Ĉ = C / s²`` is the
    cross Gram ``C = J_ξ J_ξ'ᵀ`` divided by the squared mean gradient norm
    ``s = mean_t sqrt(max(C_tt, 0))`` (so ``lr`` does not depend on the gradients' scale).
    The returned weights ``(w + λ/T) / (1 + λ)`` apply to the update batch: ``d = J_ζᵀ weights``.

    Args:
      num_tasks: T.
      lamda: λ ≥ 0, the pull towards the mean gradient (0: MGDA-like; large: mean loss).
      max_iters: inner projected-SGD iterations per step (old name: ``niter``).
      lr: inner step size on the normalised cross Gram.
      momentum: heavy-ball momentum μ of the inner SGD, restarted every step (0: the paper's
        projected SGD; 0.5: the official code and LibMTL).

    Returns:
      A :class:`~mtljax.methods.Method` with ``num_batches=3``. Weights sum to 1 and are at
      least ``λ/(T(1+λ))`` each. With zero or degenerate gradients the cross Gram is left
      unscaled and the weights stay finite.
      The cross Gram is formed from rows rescaled by a common power of two (``Ĉ`` is
      scale-free), so a row scaled by 1e30 or every row by 1e±20 gives finite weights in
      float32.
    """
    num_tasks = check_num_tasks(num_tasks)
    if not lamda >= 0:
        raise ValueError(f"lamda must be >= 0, got {lamda!r}.")
    if not isinstance(max_iters, int) or max_iters < 0:
        raise ValueError(f"max_iters must be a non-negative integer, got {max_iters!r}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}.")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")

    def init(params):
        dtype = weights_dtype(params)
        return SDMGradState(jnp.full((num_tasks,), 1.0 / num_tasks, dtype))

    def apply(
        per_task_grads, state, params=None, *, task_losses=None, extra_per_task_grads=None,
        task_mask=None, **extra,
    ):
        del params, task_losses, extra
        check_input_tasks("sdmgrad", num_tasks, per_task_grads)
        xi, xi_prime = extra_grads(
            "sdmgrad", num_tasks, per_task_grads, extra_per_task_grads, 2
        )
        mask = task_support(task_mask, num_tasks)
        dtype = weights_dtype(per_task_grads)
        # Under a mask: the present tasks' cross Gram, mean gradient and simplex, from the
        # present part of the last w; absent tasks keep their w.
        count = jnp.maximum(num_present(mask, dtype), 1.0)
        # Rows rescaled by a common power of two: Ĉ is scale-free, so nothing is undone.
        rows, _ = scaled_rows(drop_absent((xi, xi_prime), task_mask))
        cross = restrict_gram(cross_gram(*rows).astype(dtype), mask)
        scale = (jnp.sum(jnp.sqrt(jnp.clip(jnp.diagonal(cross), 0.0))) / count) ** 2
        cross = cross / jnp.where(scale > jnp.finfo(dtype).tiny, scale, 1.0)
        shift = restrict(jnp.full((num_tasks,), lamda, dtype) / count, mask)

        def body(_, carry):
            w, velocity = carry
            velocity = momentum * velocity + cross @ (w + shift)
            step = w - lr * velocity
            # Π_Δ(v) = Π_Δ(v − c·1): shifting by the max keeps the projection exact.
            return project_simplex(step - present_max(step, mask), mask=mask), velocity

        w0 = restrict_simplex(state.weights.astype(dtype), mask)
        w, _ = lax.fori_loop(0, max_iters, body, (w0, jnp.zeros_like(w0)))
        weights = (w + shift) / (1.0 + lamda)
        kept = jnp.where(mask, w.astype(state.weights.dtype), state.weights)
        update = linalg.combine(drop_absent(per_task_grads, task_mask), weights)
        return MethodOutput(update, SDMGradState(kept), weights)

    return gradient_transform("sdmgrad", num_tasks, init, apply, num_batches=3)
