"""The only P-sized operations of the library: the Gram matrix and task combinations.

A Jacobian is a pytree whose leaves have a leading task axis, ``[T, *p]``. Every method reduces
it to T-sized quantities through these functions and never touches P-sized data otherwise:

* ``gram(J) = J Jᵀ``  (``[T, T]``), accumulated leaf by leaf with no flattening copy
  (``gram_of_columns`` for a Jacobian stored task-last);
* ``combine(J, w) = Jᵀ w``  (a pytree shaped like one task's gradient; ``combine_columns``
  for a Jacobian stored task-last);
* ``zero_rows(J, keep)``: the rows of absent or non-finite tasks set to 0 (by ``where``).

Gram matrices are computed in at least float32 (bf16 Jacobians give float32 Grams), so that
the T×T solves downstream are well conditioned under mixed precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def num_tasks(per_task) -> int:
    """The size of the leading task axis shared by every leaf of ``per_task``."""
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(per_task)}
    if not sizes:
        raise ValueError("The per-task gradient tree has no leaves.")
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"Every leaf of a per-task gradient tree needs the same leading task axis; "
            f"got leading sizes {sorted(s for s in sizes if s is not None)}"
            + (" and scalars" if None in sizes else "")
            + "."
        )
    return sizes.pop()


def gram_dtype(per_task) -> jnp.dtype:
    """The dtype Gram matrices are computed in: the leaves' dtype, at least float32."""
    leaf_dtype = jnp.result_type(*jax.tree.leaves(per_task))
    return jnp.promote_types(leaf_dtype, jnp.float32)


def _as_rows(leaf: jax.Array) -> jax.Array:
    return leaf.reshape(leaf.shape[0], -1)


def _summed_grams(matrices, contracting: int, dtype) -> jax.Array:
    """``Σ_k M_k M_kᵀ`` (``contracting=1``) or ``Σ_k M_kᵀ M_k`` (``0``), accumulated in dtype."""
    blocks = [
        lax.dot_general(
            m,
            m,
            (((contracting,), (contracting,)), ((), ())),
            precision=lax.Precision.HIGHEST,
            preferred_element_type=dtype,
        )
        for m in matrices
    ]
    return sum(blocks[1:], blocks[0]).astype(dtype)


def gram(per_task) -> jax.Array:
    """Gram matrix ``G = J Jᵀ`` of a per-task gradient tree, ``[T, T]``."""
    rows = map(_as_rows, jax.tree.leaves(per_task))
    return _summed_grams(rows, 1, gram_dtype(per_task))


def gram_of_columns(per_task_columns) -> jax.Array:
    """``G = J Jᵀ`` from a Jacobian stored task-last: leaves ``[*p, T]``.

    The same matrix as :func:`gram` of the task-first Jacobian. On XLA:CPU a dot that contracts
    the leading axis of a tall ``[P, T]`` matrix runs about 3× faster than one that contracts
    the trailing axis of ``[T, P]`` (jax 0.10, ``docs/benchmarks.md``), and the unrolled
    Jacobian engine writes its rows task-last at no extra cost.
    """
    columns = (leaf.reshape(-1, leaf.shape[-1]) for leaf in jax.tree.leaves(per_task_columns))
    return _summed_grams(columns, 0, gram_dtype(per_task_columns))


def combine_columns(per_task_columns, weights: jax.Array):
    """:func:`combine` of a Jacobian stored task-last (leaves ``[*p, T]``): ``Jᵀ w``."""

    def one(leaf):
        w = weights.astype(jnp.promote_types(leaf.dtype, weights.dtype))
        out = jnp.tensordot(leaf.astype(w.dtype), w, axes=(-1, 0),
                            precision=lax.Precision.HIGHEST)
        return out.astype(leaf.dtype)

    return jax.tree.map(one, per_task_columns)


def combine(per_task, weights: jax.Array):
    """Combination ``Jᵀ w`` of a per-task gradient tree, shaped like one task's gradient.

    The result keeps each leaf's dtype.
    """

    def one(leaf):
        w = weights.astype(jnp.promote_types(leaf.dtype, weights.dtype))
        out = jnp.tensordot(w, leaf.astype(w.dtype), axes=(0, 0), precision=lax.Precision.HIGHEST)
        return out.astype(leaf.dtype)

    return jax.tree.map(one, per_task)


def squared_norms(per_task) -> jax.Array:
    """Per-task squared norms ``‖g_t‖²``, ``[T]`` (the diagonal of the Gram matrix)."""
    dtype = gram_dtype(per_task)
    parts = [
        jnp.sum(jnp.square(_as_rows(leaf).astype(dtype)), axis=1)
        for leaf in jax.tree.leaves(per_task)
    ]
    return sum(parts[1:], parts[0])


def cosine_matrix(gram_matrix: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Pairwise cosine similarities from a Gram matrix; rows of zero norm give 0."""
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(gram_matrix), 0.0))
    denom = jnp.outer(norms, norms)
    return jnp.where(denom > eps, gram_matrix / jnp.where(denom > eps, denom, 1.0), 0.0)


def dots(per_task, direction) -> jax.Array:
    """``J d``: the inner product of each task gradient with one direction ``d``, ``[T]``."""
    dtype = gram_dtype(per_task)
    parts = [
        _as_rows(leaf).astype(dtype) @ d.reshape(-1).astype(dtype)
        for leaf, d in zip(jax.tree.leaves(per_task), jax.tree.leaves(direction), strict=True)
    ]
    return sum(parts[1:], parts[0])


def zero_rows(per_task, keep: jax.Array):
    """``per_task`` with the rows (leading task axis) where ``keep`` is false set to 0.

    ``where``, not a product: a dropped row holding NaN or Inf must not leak (``0 · NaN``).
    """

    def one(x):
        return jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.zeros_like(x))

    return jax.tree.map(one, per_task)
