"""The method contract: an optax-shaped transform of per-task gradients.

A method maps per-task gradients (a pytree whose leaves have a leading task axis, ``[T, *p]``)
and keyword inputs such as ``task_losses`` to one update shaped like a single gradient. It is an
``optax.GradientTransformationExtraArgs``, so it chains in front of any optax optimizer::

    tx = optax.chain(mtljax.methods.pcgrad(num_tasks=3), optax.adam(1e-3))
    updates, state = tx.update(per_task_grads, state, params, task_losses=losses)

Besides ``init`` and ``update`` a :class:`Method` carries ``apply``, which also returns the
task weights ``w`` with ``update = Jᵀ w`` (``None`` for methods that are no weighting, such as
GradDrop), and metadata the train step uses: ``kind`` (``"loss"`` for methods that only read the
losses and so need one backward pass, ``"gradient"`` otherwise), the preferred ``level`` (the
shared parameters or the shared representation), the number of independent batches a step
needs, and an optional ``after_step`` hook that sees the losses after the update.

Three constructors build methods from their T-sized core:

* :func:`loss_weighting` — ``weights_fn(state, task_losses) -> (w, state)``;
* :func:`gram_weighting` — ``weights_fn(G, state, task_losses) -> (w, state)`` with ``G = J Jᵀ``;
* :func:`Method` directly, for methods that act on the gradients elementwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtljax import linalg

KINDS = ("loss", "gradient")
LEVELS = ("parameters", "representation")


class MethodOutput(NamedTuple):
    """What :attr:`Method.apply` returns."""

    updates: Any  # shaped like one task's gradient, [*p]
    state: Any
    weights: jax.Array | None  # [T], update = Jᵀ w; None when the method is no weighting


class Method(optax.GradientTransformationExtraArgs):
    """An optax transform of per-task gradients ``[T, *p]`` into one update ``[*p]``.

    Attributes (besides ``init`` and ``update``):
      name: registry name.
      num_tasks: T.
      apply: ``(per_task_grads, state, params=None, *, task_losses=None, **extra)
        -> MethodOutput``.
      kind: ``"loss"`` (weights from losses only) or ``"gradient"``.
      level: the level the method is defined at by its paper (``"parameters"`` or
        ``"representation"``); the train step uses it unless told otherwise.
      loss_weights: for ``kind == "loss"``: ``(state, *, task_losses, **extra) -> (w, state)``,
        which lets the train step do one backward pass of ``Σ w_t L_t`` instead of T.
      num_batches: independent mini-batches a step needs (SDMGrad, MoDo: 2 or 3). Extra
        batches' per-task gradients arrive as ``extra_per_task_grads=(J_2, ...)``.
      after_step: optional ``(state, *, task_losses_after) -> state`` called by the train
        step with the losses at the updated parameters on the same batch (FAMO).
      gram_weights: for Gram-space methods (:func:`gram_weighting`): their
        ``(gram, state, *, task_losses, **extra) -> (w, state)``, which lets the task-sharded
        train step run them from the Gram matrix alone.
    """

    def __new__(
        cls,
        init: Callable[[Any], Any],
        apply: Callable[..., MethodOutput],
        *,
        name: str,
        num_tasks: int,
        kind: str = "gradient",
        level: str = "parameters",
        loss_weights: Callable[..., tuple[jax.Array, Any]] | None = None,
        num_batches: int = 1,
        after_step: Callable[..., Any] | None = None,
        gram_weights: Callable[..., tuple[jax.Array, Any]] | None = None,
    ) -> Method:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")
        if kind == "loss" and loss_weights is None:
            raise ValueError("A loss-only method needs loss_weights.")

        def update(per_task_grads, state, params=None, **extra):
            out = apply(per_task_grads, state, params, **extra)
            return out.updates, out.state

        self = super().__new__(cls, init, update)
        self.name = name
        self.num_tasks = num_tasks
        self.apply = apply
        self.kind = kind
        self.level = level
        self.loss_weights = loss_weights
        self.num_batches = num_batches
        self.after_step = after_step
        self.gram_weights = gram_weights
        return self

    def __repr__(self) -> str:
        return f"Method({self.name!r}, num_tasks={self.num_tasks}, kind={self.kind!r})"


def check_num_tasks(num_tasks: int) -> int:
    """Validates the number of tasks a method is built for."""
    if not isinstance(num_tasks, int | jnp.integer) or int(num_tasks) < 1:
        raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}.")
    return int(num_tasks)


def check_input_tasks(name: str, num_tasks: int, per_task_grads) -> None:
    """Raises if the per-task gradients do not have ``num_tasks`` rows (trace time)."""
    got = linalg.num_tasks(per_task_grads)
    if got != num_tasks:
        raise ValueError(
            f"Method {name!r} was built for {num_tasks} tasks but received per-task gradients "
            f"with a leading task axis of {got}."
        )


def require_losses(name: str, num_tasks: int, task_losses) -> jax.Array:
    """Returns ``task_losses`` as a ``[T]`` array, or raises naming the method."""
    if task_losses is None:
        raise ValueError(f"Method {name!r} needs the per-task losses: pass task_losses=[T].")
    losses = jnp.asarray(task_losses)
    if losses.shape != (num_tasks,):
        raise ValueError(
            f"Method {name!r} needs task_losses of shape ({num_tasks},), got {losses.shape}."
        )
    return losses


def losses_dtype(task_losses) -> jnp.dtype:
    """The dtype of loss weights: the losses' dtype, at least float32 (float32 without losses)."""
    if task_losses is None:
        return jnp.dtype(jnp.float32)
    return jnp.promote_types(jnp.asarray(task_losses).dtype, jnp.float32)


def as_key(key) -> jax.Array:
    """A typed PRNG key from an int seed or a key."""
    return jax.random.key(key) if isinstance(key, int) else key


def weights_dtype(per_task_grads) -> jnp.dtype:
    """The dtype of T-sized computations for these gradients (at least float32)."""
    return linalg.gram_dtype(per_task_grads)


def loss_weighting(
    name: str,
    num_tasks: int,
    init_state: Callable[[], Any],
    weights_fn: Callable[..., tuple[jax.Array, Any]],
    *,
    after_step: Callable[..., Any] | None = None,
) -> Method:
    """Builds a loss-only method from ``weights_fn(state, *, task_losses, **extra)``.

    ``apply`` returns ``Jᵀ w``; the train step instead back-propagates ``Σ_t w_t L_t`` once,
    which gives the same update by linearity at the cost of one backward pass.
    """
    num_tasks = check_num_tasks(num_tasks)

    def init(params):
        del params
        return init_state()

    def apply(per_task_grads, state, params=None, *, task_losses=None, **extra):
        del params
        check_input_tasks(name, num_tasks, per_task_grads)
        weights, state = weights_fn(state, task_losses=task_losses, **extra)
        return MethodOutput(linalg.combine(per_task_grads, weights), state, weights)

    return Method(
        init,
        apply,
        name=name,
        num_tasks=num_tasks,
        kind="loss",
        loss_weights=weights_fn,
        after_step=after_step,
    )


def gram_weighting(
    name: str,
    num_tasks: int,
    init_state: Callable[[], Any],
    weights_fn: Callable[..., tuple[jax.Array, Any]],
    *,
    level: str = "parameters",
) -> Method:
    """Builds a Gram-space method from ``weights_fn(gram, state, *, task_losses, **extra)``.

    The wrapper does the only P-sized work, ``G = J Jᵀ`` and ``Jᵀ w``; ``weights_fn`` sees the
    ``[T, T]`` Gram matrix (in at least float32) and returns ``[T]`` weights.
    """
    num_tasks = check_num_tasks(num_tasks)

    def init(params):
        del params
        return init_state()

    def apply(per_task_grads, state, params=None, *, task_losses=None, **extra):
        del params
        check_input_tasks(name, num_tasks, per_task_grads)
        g = linalg.gram(per_task_grads)
        weights, state = weights_fn(g, state, task_losses=task_losses, **extra)
        return MethodOutput(linalg.combine(per_task_grads, weights), state, weights)

    return Method(init, apply, name=name, num_tasks=num_tasks, kind="gradient", level=level,
                  gram_weights=weights_fn)
