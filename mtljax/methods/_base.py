"""The method value: per-task gradients in, one update out, built from a T-sized core.

A method maps per-task gradients (a pytree whose leaves have a leading task axis, ``[T, *p]``)
and keyword inputs such as ``task_losses`` to one update shaped like a single gradient. A
:class:`Method` is a plain frozen value: its name, its number of tasks, ``init(params)`` and a
*core*, one of

* :class:`LossWeighting` — ``weights_fn(state, *, task_losses, task_mask=None, **extra)
  -> (w, state)``: the weights read only the losses, and the train step back-propagates
  ``Σ_t w_t L_t`` once;
* :class:`GramWeighting` — ``weights_fn(G, state, *, task_losses, task_mask=None, **extra)
  -> (w, state)`` with ``G = J Jᵀ`` (``[T, T]``): the shared wrapper does the only P-sized
  work, ``J Jᵀ`` and ``Jᵀ w``;
* :class:`GradientTransform` — ``apply_fn(per_task_grads, state, params=None, *, task_losses,
  task_mask=None, **extra) -> MethodOutput``, for methods that need the gradients themselves.

``task_mask`` (``[T]`` bool, ``None``: every task present) leaves out the tasks absent from a
batch: they get weight exactly 0, the present tasks get the weights of the method run on them
alone, and the absent tasks' per-task state is left unchanged.

A method chains with optax through :meth:`Method.as_optax`::

    tx = optax.chain(mtljax.get_method("pcgrad", 3).as_optax(), optax.adam(1e-3))
    updates, opt_state = tx.update(per_task_grads, opt_state, params, task_losses=losses)

Three constructors build methods: :func:`loss_weighting`, :func:`gram_weighting` and
:func:`gradient_transform`. :func:`hparam_aliases` lets a factory accept the old spellings of
renamed hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtljax import linalg
from mtljax.solvers._mask import drop_absent

LEVELS = ("parameters", "representation")


class MethodOutput(NamedTuple):
    """What :meth:`Method.apply` returns."""

    updates: Any  # shaped like one task's gradient, [*p]
    state: Any
    weights: jax.Array | None  # [T], update = Jᵀ w; None when the method is no weighting


def _check_callable(owner: str, field: str, value) -> None:
    if not callable(value):
        raise ValueError(f"{owner}.{field} must be callable, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class LossWeighting:
    """Core of a loss-only method: ``weights_fn(state, *, task_losses, task_mask=None, **extra)
    -> (w [T], state)``."""

    weights_fn: Callable[..., tuple[jax.Array, Any]]

    def __post_init__(self):
        _check_callable("LossWeighting", "weights_fn", self.weights_fn)


@dataclasses.dataclass(frozen=True)
class GramWeighting:
    """Core of a Gram-space method: ``weights_fn(G [T, T], state, *, task_losses,
    task_mask=None, **extra) -> (w [T], state)``."""

    weights_fn: Callable[..., tuple[jax.Array, Any]]

    def __post_init__(self):
        _check_callable("GramWeighting", "weights_fn", self.weights_fn)


@dataclasses.dataclass(frozen=True)
class GradientTransform:
    """Core of a method on the gradients themselves: ``apply_fn(per_task_grads, state,
    params=None, *, task_losses=None, task_mask=None, **extra) -> MethodOutput``."""

    apply_fn: Callable[..., MethodOutput]

    def __post_init__(self):
        _check_callable("GradientTransform", "apply_fn", self.apply_fn)


CORES = (LossWeighting, GramWeighting, GradientTransform)


@dataclasses.dataclass(frozen=True, repr=False)
class Method:
    """A multi-task method: per-task gradients ``[T, *p]`` to one update ``[*p]``.

    A frozen value (not a pytree: ``jax.tree.map`` treats it as a leaf), so
    ``dataclasses.replace(method, level="representation")`` gives the same method at another
    level. Two methods are equal when they hold the same fields (the same functions).

    Attributes:
      name: registry name.
      num_tasks: T.
      init: ``init(params) -> state``; ``params`` is one task's gradient tree (the shared
        parameters), which methods with a ``[T, *p]`` state need.
      core: a :class:`LossWeighting`, :class:`GramWeighting` or :class:`GradientTransform`.
      level: the level the method is defined at by its paper, ``"parameters"`` (the Jacobian
        of the shared parameters) or ``"representation"`` (of the shared encoder's output);
        the train step uses it unless told otherwise.
      num_batches: independent mini-batches a step needs (SDMGrad, MoDo: 3). The extra
        batches' per-task gradients arrive as ``extra_per_task_grads=(J_2, ...)``.
      after_step: optional ``(state, *, task_losses_after, task_mask=None) -> state`` called by
        the train step with the losses at the updated parameters on the same batch (FAMO).
    """

    name: str
    num_tasks: int
    init: Callable[[Any], Any]
    core: LossWeighting | GramWeighting | GradientTransform
    level: str = "parameters"
    num_batches: int = 1
    after_step: Callable[..., Any] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Method name must be a non-empty string, got {self.name!r}.")
        object.__setattr__(self, "num_tasks", check_num_tasks(self.num_tasks))
        _check_callable("Method", "init", self.init)
        if not isinstance(self.core, CORES):
            raise ValueError(
                f"Method {self.name!r}: core must be a LossWeighting, GramWeighting or "
                f"GradientTransform, got {self.core!r}."
            )
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}.")
        if (
            not isinstance(self.num_batches, int)
            or isinstance(self.num_batches, bool)
            or self.num_batches < 1
        ):
            raise ValueError(f"num_batches must be a positive integer, got {self.num_batches!r}.")
        if self.after_step is not None:
            _check_callable("Method", "after_step", self.after_step)

    @property
    def kind(self) -> str:
        """``"loss"`` (weights from the losses only: one backward pass) or ``"gradient"``."""
        return "loss" if isinstance(self.core, LossWeighting) else "gradient"

    @property
    def loss_weights(self) -> Callable[..., tuple[jax.Array, Any]] | None:
        """A loss method's ``(state, *, task_losses, **extra) -> (w, state)``, else None."""
        return self.core.weights_fn if isinstance(self.core, LossWeighting) else None

    @property
    def gram_weights(self) -> Callable[..., tuple[jax.Array, Any]] | None:
        """A Gram-space method's ``(G, state, *, task_losses, **extra) -> (w, state)``, else
        None; it lets a task-sharded train step run the method from the Gram matrix alone."""
        return self.core.weights_fn if isinstance(self.core, GramWeighting) else None

    def apply(
        self, per_task_grads, state, params=None, *, task_losses=None, **extra
    ) -> MethodOutput:
        """The update, the new state and the weights ``w`` (``update = Jᵀ w``) of one step.

        A loss or Gram core's ``w`` combines the gradients here, ``Jᵀ w``; the train step
        instead back-propagates ``Σ_t w_t L_t`` for a loss core, the same by linearity.
        """
        check_input_tasks(self.name, self.num_tasks, per_task_grads)
        core = self.core
        if isinstance(core, GradientTransform):
            return core.apply_fn(per_task_grads, state, params, task_losses=task_losses, **extra)
        # Absent tasks' rows may hold anything (NaN): select them away before J Jᵀ and Jᵀ w.
        per_task_grads = drop_absent(per_task_grads, extra.get("task_mask"))
        if isinstance(core, GramWeighting):
            g = linalg.gram(per_task_grads)
            weights, state = core.weights_fn(g, state, task_losses=task_losses, **extra)
        else:
            weights, state = core.weights_fn(state, task_losses=task_losses, **extra)
        return MethodOutput(linalg.combine(per_task_grads, weights), state, weights)

    def update(self, per_task_grads, state, params=None, **extra):
        """``(updates, state)``: :meth:`apply` without the weights, optax's signature."""
        out = self.apply(per_task_grads, state, params, **extra)
        return out.updates, out.state

    def as_optax(self) -> optax.GradientTransformationExtraArgs:
        """This method as an optax transform, to chain in front of an optimizer.

        ``optax.chain(method.as_optax(), optax.adam(1e-3))`` forwards keyword inputs such as
        ``task_losses`` to the method (``optax.chain`` drops them for transforms that are not
        ``GradientTransformationExtraArgs``). The ``after_step`` hook is not part of optax's
        interface: a method that has one (FAMO) must be stepped by its caller.
        """
        return optax.GradientTransformationExtraArgs(self.init, self.update)

    def __repr__(self) -> str:
        return (
            f"Method({self.name!r}, num_tasks={self.num_tasks}, "
            f"core={type(self.core).__name__}, level={self.level!r})"
        )


def check_num_tasks(num_tasks: int) -> int:
    """Validates the number of tasks a method is built for."""
    if (
        not isinstance(num_tasks, int | jnp.integer)
        or isinstance(num_tasks, bool)
        or int(num_tasks) < 1
    ):
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
        raise ValueError(
            f"Method {name!r} needs the per-task losses: pass task_losses=[T] (in optax.chain, "
            f"chain method.as_optax(), which forwards them)."
        )
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


def _stateless_init(init_state: Callable[[], Any]) -> Callable[[Any], Any]:
    """``init(params)`` for a method whose state does not depend on the parameters."""
    _check_callable("method", "init_state", init_state)

    def init(params):
        del params
        return init_state()

    return init


def loss_weighting(
    name: str,
    num_tasks: int,
    init_state: Callable[[], Any],
    weights_fn: Callable[..., tuple[jax.Array, Any]],
    *,
    after_step: Callable[..., Any] | None = None,
) -> Method:
    """A loss-only method from ``weights_fn(state, *, task_losses, task_mask=None, **extra)``.

    ``apply`` returns ``Jᵀ w``; the train step instead back-propagates ``Σ_t w_t L_t`` once,
    which gives the same update by linearity at the cost of one backward pass.

    Args:
      name: the method's name.
      num_tasks: T.
      init_state: ``() -> state``.
      weights_fn: ``(state, *, task_losses, task_mask=None, **extra) -> (w [T], state)``.
      after_step: optional ``(state, *, task_losses_after, **extra) -> state`` hook.
    """
    return Method(name, num_tasks, _stateless_init(init_state), LossWeighting(weights_fn),
                  after_step=after_step)


def gram_weighting(
    name: str,
    num_tasks: int,
    init_state: Callable[[], Any],
    weights_fn: Callable[..., tuple[jax.Array, Any]],
    *,
    level: str = "parameters",
) -> Method:
    """A Gram-space method from ``weights_fn(G, state, *, task_losses, task_mask=None, **extra)``.

    The wrapper does the only P-sized work, ``G = J Jᵀ`` and ``Jᵀ w``; ``weights_fn`` sees the
    ``[T, T]`` Gram matrix (in at least float32) and returns ``[T]`` weights.

    Args:
      name: the method's name.
      num_tasks: T.
      init_state: ``() -> state``.
      weights_fn: ``(G [T, T], state, *, task_losses, task_mask=None, **extra)
        -> (w [T], state)``.
      level: ``"parameters"`` or ``"representation"``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> def weights_fn(gram, state, *, task_losses=None, **extra):
      ...     return 1.0 / jnp.sqrt(jnp.diagonal(gram)), state
      >>> m = gram_weighting("unit_sum", 2, optax.EmptyState, weights_fn)
      >>> m.apply(jnp.array([[2.0, 0.0], [0.0, 4.0]]), m.init(None)).updates.tolist()
      [1.0, 1.0]
    """
    return Method(name, num_tasks, _stateless_init(init_state), GramWeighting(weights_fn),
                  level=level)


def gradient_transform(
    name: str,
    num_tasks: int,
    init: Callable[[Any], Any],
    apply_fn: Callable[..., MethodOutput],
    *,
    level: str = "parameters",
    num_batches: int = 1,
    after_step: Callable[..., Any] | None = None,
) -> Method:
    """A method on the gradients themselves, from ``apply_fn`` (see :class:`GradientTransform`).

    Args:
      name: the method's name.
      num_tasks: T.
      init: ``init(params) -> state``, with ``params`` one task's gradient tree (for a
        ``[T, *p]`` state).
      apply_fn: ``(per_task_grads, state, params=None, *, task_losses=None, task_mask=None,
        **extra) -> MethodOutput``.
      level, num_batches, after_step: see :class:`Method`.
    """
    return Method(name, num_tasks, init, GradientTransform(apply_fn), level=level,
                  num_batches=num_batches, after_step=after_step)


def resolve_aliases(owner: str, hparams: dict[str, Any], aliases: dict[str, str]) -> dict:
    """``hparams`` with old spellings renamed to their current names.

    Args:
      owner: the factory's name, for messages.
      hparams: keyword arguments as given.
      aliases: ``{old name: current name}``.

    Returns:
      A new dict; each old name used gives a ``DeprecationWarning``.

    Raises:
      ValueError: an old name given together with its current name.
    """
    resolved = dict(hparams)
    for old, new in aliases.items():
        if old not in resolved:
            continue
        if new in resolved:
            raise ValueError(
                f"{owner}: {old!r} is the old name of {new!r}; pass only {new!r}."
            )
        warnings.warn(
            f"{owner}: the hyper-parameter {old!r} is now called {new!r} (same meaning).",
            DeprecationWarning,
            stacklevel=3,
        )
        resolved[new] = resolved.pop(old)
    return resolved


def hparam_aliases(**aliases: str) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Lets a factory accept the old spellings of renamed hyper-parameters.

    ``@hparam_aliases(niter="max_iters")`` on a factory maps ``niter=`` to ``max_iters=`` (with
    a ``DeprecationWarning``) before the call. ``inspect.signature`` of the decorated factory is
    the factory's own, with the current names only.

    Args:
      **aliases: ``old name="current name"``; the old name keeps the current name's meaning.
    """

    def wrap(factory):
        @functools.wraps(factory)
        def build(*args, **hparams):
            return factory(*args, **resolve_aliases(factory.__name__, hparams, aliases))

        return build

    return wrap
