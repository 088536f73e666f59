"""The Jacobian engine: per-task gradients from one forward pass and T backward passes.

``jax.vjp`` runs the forward pass once and returns the pullback; pulling back the T rows of the
identity gives the T per-task gradients. How the T pullbacks run is a strategy:

* ``"vmap"`` — batched into one large backward pass (fastest on accelerators, T× the memory);
* ``"map"`` — one after the other with ``lax.map`` (least memory; fastest on CPU, measured);
* ``"auto"`` — ``"map"`` on CPU, ``"vmap"`` elsewhere;
* ``chunk_size=k`` — ``lax.map`` over chunks of k rows, each chunk vmapped: bounds peak memory
  for large T at a cost between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

STRATEGIES = ("auto", "vmap", "map")


def resolve_strategy(strategy: str) -> str:
    """Maps ``"auto"`` to the strategy measured fastest on the default backend."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Jacobian strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if strategy == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return strategy


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
      strategy: ``"auto"``, ``"vmap"`` or ``"map"``.
      chunk_size: if set, ``lax.map`` over chunks of this many rows (overrides strategy).

    Returns:
      The pullback's output with a leading task axis on every leaf.
    """
    eye = jnp.eye(num_tasks, dtype=dtype)
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
        return lax.map(vjp_fn, eye, batch_size=min(chunk_size, num_tasks))
    if resolve_strategy(strategy) == "vmap":
        return jax.vmap(vjp_fn)(eye)
    return lax.map(vjp_fn, eye)


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
