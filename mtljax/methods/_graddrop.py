"""GradDrop: keep, per element, only the gradients of one randomly chosen sign.

At every element of the shared representation, the positive sign purity
``P = ½ (1 + Σ_t g_t / Σ_t |g_t|) ∈ [0, 1]`` is the chance of keeping the positive gradients.
With ``U ~ Uniform(0, 1)`` drawn per element, task t keeps its gradient where
``M_t = [P > U][g_t > 0] + [P < U][g_t < 0]`` and the update is
``d = Σ_t (ℓ_t + (1 − ℓ_t) M_t) g_t`` with leak ``ℓ_t`` (``ℓ = 1`` gives the sum).

The gradients at the representation are per example (``[T, B, ...]``): as in the paper, P is
computed on the batch-summed gradients ``Σ_b g_t[b]`` and the same P and U are tiled over the
batch, while the sign tests use each example's own gradient. At ``level="parameters"`` there is
no batch axis and P, U and the masks are per parameter.

GradDrop is no combination ``Jᵀw`` of the task gradients, so it is, with the trimmed mean, one
of the two documented exceptions to the Gram-only rule: it is built with
:class:`~mtljax.methods.Method` directly, works elementwise on every leaf (P-sized work) and
returns ``weights=None``. Elements where every gradient is zero get ``P = ½`` and ``d = 0``.

References:
  Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing Deep
  Multitask Models with Gradient Sign Dropout", NeurIPS 2020, arXiv:2010.06808.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtljax.methods._base import (
    LEVELS,
    Method,
    MethodOutput,
    as_key,
    check_input_tasks,
    check_num_tasks,
    gradient_transform,
)
from mtljax.solvers._mask import drop_absent


class GradDropState(NamedTuple):
    key: jax.Array  # PRNG key for the uniform thresholds U


def graddrop(
    num_tasks: int,
    *,
    leak=0.0,
    key: jax.Array | int = 0,
    level: str = "representation",
) -> Method:
    """Gradient sign dropout.

    Args:
      num_tasks: T.
      leak: ``ℓ`` in ``[0, 1]``, a scalar or ``[T]``: the fraction of each task's gradient that
        passes whatever the mask (0, the paper's default: pure GradDrop).
      key: PRNG key or integer seed for the thresholds U (kept in the state).
      level: ``"representation"`` (the paper; leaves ``[T, B, ...]`` with a batch axis) or
        ``"parameters"`` (leaves ``[T, *p]``, no batch axis).

    Returns:
      An elementwise :class:`~mtljax.methods.Method` with ``weights=None``.
    """
    num_tasks = check_num_tasks(num_tasks)
    leaks = np.broadcast_to(np.asarray(leak, np.float64), (num_tasks,))
    if not np.all((leaks >= 0) & (leaks <= 1)):
        raise ValueError(f"graddrop: leak must lie in [0, 1] (scalar or [T]), got {leak!r}.")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")
    key0 = as_key(key)

    def init(params):
        del params
        return GradDropState(key0)

    def drop(leaf, key):
        dtype = jnp.promote_types(leaf.dtype, jnp.float32)
        g = leaf.astype(dtype)
        batched = level == "representation" and g.ndim > 1
        signal = g.sum(1) if batched else g
        total, mass = signal.sum(0), jnp.abs(signal).sum(0)
        ratio = jnp.where(mass > 0, total / jnp.where(mass > 0, mass, 1.0), 0.0)
        purity = 0.5 * (1.0 + ratio)
        threshold = jax.random.uniform(key, purity.shape, dtype)
        if batched:
            purity, threshold = purity[None], threshold[None]
        mask = ((purity > threshold) & (g > 0)) | ((purity < threshold) & (g < 0))
        ell = jnp.asarray(leaks, dtype).reshape((num_tasks,) + (1,) * (g.ndim - 1))
        return jnp.sum((ell + (1.0 - ell) * mask) * g, axis=0).astype(leaf.dtype)

    def apply(per_task_grads, state, params=None, *, task_losses=None, task_mask=None, **extra):
        del params, task_losses, extra
        check_input_tasks("graddrop", num_tasks, per_task_grads)
        # Absent tasks' rows are zero gradients: no sign mass, no share of the sum. The
        # thresholds U do not depend on T, so this is the K-task GradDrop's draw exactly.
        leaves, treedef = jax.tree.flatten(drop_absent(per_task_grads, task_mask))
        key, *subs = jax.random.split(state.key, len(leaves) + 1)
        dropped = [drop(x, k) for x, k in zip(leaves, subs, strict=True)]
        updates = jax.tree.unflatten(treedef, dropped)
        return MethodOutput(updates, GradDropState(key), None)

    return gradient_transform("graddrop", num_tasks, init, apply, level=level)
