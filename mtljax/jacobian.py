"""The Jacobian engine: per-task gradients from one forward pass and T backward passes.

``jax.vjp`` runs the forward pass once and returns the pullback; pulling back the T rows of the
identity gives the T per-task gradients. How the T pullbacks run is a strategy:

* ``"vmap"`` — batched into one large backward pass (fastest on accelerators, T× the memory);
* ``"unroll"`` — T separate backward passes written out in the traced program (no loop, no
  batching); compile time grows with T;
* ``"map"`` — one after the other with ``lax.map`` (least memory);
* ``"auto"`` — ``"unroll"`` on CPU, ``"vmap"`` on other backends. Measured on CPU (jax 0.10,
  2 cores, ``docs/benchmarks.md``): the batched pullback writes each weight gradient with the
  task axis inside it, and XLA:CPU then transposes the whole ``[T, P]`` Jacobian; the
  unrolled passes write every row in place and run the MLP workload's Jacobian in half the
  time (T = 40). ``"map"`` is as fast on an MLP but ~100× slower on a conv trunk, since
  XLA:CPU runs convolutions inside a loop body without its fast kernels;
* ``chunk_size=k`` — ``lax.map`` over chunks of k rows, each chunk vmapped: bounds peak memory
  for large T at a cost between the two. :func:`chunk_size_for_budget` picks k from a memory
  budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

STRATEGIES = ("auto", "vmap", "unroll", "map")


def resolve_strategy(strategy: str) -> str:
    """Maps ``"auto"`` to the strategy measured fastest on the default backend."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Jacobian strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if strategy == "auto":
        return "unroll" if jax.default_backend() == "cpu" else "vmap"
    return strategy


def pull_back(
    vjp_fn: Callable[[jax.Array], Any],
    cotangents: jax.Array,
    *,
    strategy: str = "auto",
    chunk_size: int | None = None,
):
    """Applies a pullback to every row of ``cotangents`` (``[K, T]``).

    Args:
      vjp_fn: the pullback of a function with a ``[T]`` output, from ``jax.vjp``.
      cotangents: the ``[K, T]`` rows to pull back.
      strategy: ``"auto"``, ``"vmap"``, ``"unroll"`` or ``"map"``.
      chunk_size: if set, ``lax.map`` over chunks of this many rows (overrides strategy).

    Returns:
      The pullback's output with a leading axis of size K on every leaf.
    """
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
        return lax.map(vjp_fn, cotangents, batch_size=min(chunk_size, cotangents.shape[0]))
    strategy = resolve_strategy(strategy)
    if strategy == "vmap":
        return jax.vmap(vjp_fn)(cotangents)
    if strategy == "unroll":
        return stack_tasks(pull_back_each(vjp_fn, cotangents))
    return lax.map(vjp_fn, cotangents)


def pull_back_each(vjp_fn: Callable[[jax.Array], Any], cotangents: jax.Array) -> list:
    """The ``"unroll"`` strategy before stacking: one pullback output per row of ``cotangents``."""
    return [vjp_fn(row) for row in cotangents]


def stack_tasks(pulled: list, axis: int = 0):
    """Stacks per-task pytrees into one pytree with a task axis at ``axis`` on every leaf."""
    return jax.tree.map(lambda *rows: jnp.stack(rows, axis=axis), *pulled)


def pull_back_rows(
    vjp_fn: Callable[[jax.Array], Any],
    num_tasks: int,
    dtype,
    *,
    strategy: str = "auto",
    chunk_size: int | None = None,
):
    """Applies a pullback to every row of the ``T×T`` identity: the per-task gradients.

    Args:
      vjp_fn: the pullback of a function with a ``[T]`` output, from ``jax.vjp``.
      num_tasks: T.
      dtype: the dtype of the ``[T]`` output (the cotangent dtype).
      strategy, chunk_size: see :func:`pull_back`.

    Returns:
      The pullback's output with a leading task axis on every leaf.
    """
    eye = jnp.eye(num_tasks, dtype=dtype)
    return pull_back(vjp_fn, eye, strategy=strategy, chunk_size=chunk_size)


def chunk_size_for_budget(
    budget_bytes: int,
    num_params: int,
    dtype,
    num_tasks: int,
    *,
    activation_bytes: int = 0,
) -> int:
    """The largest ``chunk_size`` whose in-flight pullbacks fit in ``budget_bytes``.

    A chunk of k rows runs k pullbacks at once; each holds one parameter-sized cotangent
    (``P·b`` bytes, b the itemsize of ``dtype``) plus the activation cotangents of one backward
    pass (``activation_bytes``, model and batch dependent: measure it, or leave 0 to budget the
    parameter cotangents only). So

        k = clip(⌊budget / (P·b + activation_bytes)⌋, 1, T).

    The ``[T, P]`` Jacobian the chunks fill (``T·P·b`` bytes) and the forward pass's residuals
    are held whatever k is and are not part of the budget. k = 1 is the least memory the
    chunked mode can use; a budget below one row's cost still gives 1.

    Args:
      budget_bytes: bytes allowed for the chunk's pullbacks.
      num_params: P, the number of differentiated (shared) parameters.
      dtype: the gradients' dtype.
      num_tasks: T.
      activation_bytes: extra bytes per in-flight pullback.

    Returns:
      The chunk size, in ``[1, T]``.

    Example:
      >>> chunk_size_for_budget(4 * 10**6, 10**6, "float32", 8)
      1
      >>> chunk_size_for_budget(10**8, 10**6, "bfloat16", 8)
      8
    """
    if budget_bytes <= 0 or num_params < 1 or num_tasks < 1 or activation_bytes < 0:
        raise ValueError(
            "chunk_size_for_budget needs budget_bytes > 0, num_params ≥ 1, num_tasks ≥ 1 and "
            f"activation_bytes ≥ 0; got {budget_bytes}, {num_params}, {num_tasks}, "
            f"{activation_bytes}."
        )
    row_bytes = num_params * jnp.dtype(dtype).itemsize + activation_bytes
    return int(min(max(budget_bytes // row_bytes, 1), num_tasks))


def per_task_gradients(
    fun: Callable[..., jax.Array],
    primals,
    *,
    has_aux: bool = False,
    strategy: str = "auto",
    chunk_size: int | None = None,
):
    """Per-task gradients of ``fun(primals) -> [T]`` with respect to ``primals``.

    Equivalent to stacking ``jax.grad(lambda p: fun(p)[t])(primals)`` for t = 1..T, with one
    forward pass instead of T.

    Args:
      fun: function of one pytree argument returning the ``[T]`` losses (and aux if
        ``has_aux``).
      primals: the point to differentiate at.
      has_aux: whether ``fun`` returns ``(losses, aux)``.
      strategy, chunk_size: see :func:`pull_back_rows`.

    Returns:
      ``(losses, per_task_grads)`` or ``(losses, per_task_grads, aux)``; every leaf of
      ``per_task_grads`` has shape ``[T, *leaf.shape]``.

    Example:
      >>> import jax.numpy as jnp
      >>> losses, jac = per_task_gradients(lambda w: jnp.stack([w[0] ** 2, 3 * w[1]]),
      ...                                  jnp.array([1.0, 2.0]))
      >>> jac.tolist()
      [[2.0, 0.0], [0.0, 3.0]]
    """
    if has_aux:
        losses, vjp_fn, aux = jax.vjp(fun, primals, has_aux=True)
    else:
        losses, vjp_fn = jax.vjp(fun, primals)
    if losses.ndim != 1:
        raise ValueError(f"The function must return a [T] vector of losses, got {losses.shape}.")
    (jac,) = pull_back_rows(
        vjp_fn, losses.shape[0], losses.dtype, strategy=strategy, chunk_size=chunk_size
    )
    return (losses, jac, aux) if has_aux else (losses, jac)
