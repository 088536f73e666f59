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
    task_mask=None, **extra) -> (w [T], state)``.

    ``degree`` is the method's promise ``w(c G) = c^degree w(G)`` for every ``c > 0``
    (``None``: no promise). With a degree, :meth:`Method.apply` forms ``G`` from rows rescaled
    by a power of two when their entries would square out of the float range (see
    :func:`scaled_rows`) and rescales ``w`` and ``d`` back; a state that depends on the scale
    (Nash-MTL's warm start) is then kept in the rescaled problem's units.
    """

    weights_fn: Callable[..., tuple[jax.Array, Any]]
    degree: float | None = None

    def __post_init__(self):
        _check_callable("GramWeighting", "weights_fn", self.weights_fn)
        if self.degree is not None and not isinstance(self.degree, int | float):
            raise ValueError(f"GramWeighting.degree must be a number or None, got "
                             f"{self.degree!r}.")


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
        if isinstance(core, GramWeighting) and core.degree is not None:
            return _scaled_gram_apply(core, per_task_grads, state, task_losses, extra)
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


def scaled_rows(per_task_grads) -> tuple[Any, jax.Array]:
    """``(J / m, m)``: the rows rescaled by a power of two ``m`` when needed for ``J Jᵀ``.

    ``m = 1`` unless the largest entry ``a = max |J|`` lies outside ``[2^-e, 2^e]`` with ``e``
    a quarter of the dtype's exponent range (``2^±32`` in float32): beyond it ``‖g‖²`` and the
    solvers' products leave the float range (float32 overflows at ``‖g‖ ≈ 1.8e19`` and
    flushes squares under ``1e-38`` to 0). Then ``m`` is the power of two nearest ``a``, so
    that ``J / m`` is exact and its entries are at most 2 in magnitude; rows many decades
    shorter than the longest can still underflow to 0 in ``(J / m)(J / m)ᵀ``. A zero or
    non-finite Jacobian keeps ``m = 1`` (its non-finite entries are the caller's to flag).

    Returns:
      The rescaled tree (equal to the input when ``m = 1``) and ``m`` (a scalar of the Gram
      dtype).

    Example:
      >>> import jax.numpy as jnp
      >>> rows, m = scaled_rows(jnp.array([[3e20, 0.0], [0.0, 1e20]], jnp.float32))
      >>> float(m) == 2.0**68, rows.max().item() <= 2.0
      (True, True)
    """
    dtype = linalg.gram_dtype(per_task_grads)
    top = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(leaf)).astype(dtype)
                                         for leaf in jax.tree.leaves(per_task_grads)])
    usable = jnp.isfinite(top) & (top > 0)
    exponent = jnp.round(jnp.log2(jnp.where(usable, top, 1.0))).astype(jnp.int32)
    limit = jnp.finfo(dtype).maxexp // 4
    exponent = jnp.where(usable & (jnp.abs(exponent) > limit), exponent, 0)
    scale = jnp.ldexp(jnp.ones((), dtype), exponent)
    rows = jax.tree.map(lambda leaf: (leaf / scale.astype(leaf.dtype)).astype(leaf.dtype),
                        per_task_grads)
    return rows, scale


def unscaled_gram(gram: jax.Array, scale: jax.Array) -> jax.Array:
    """``scale² · gram``, the Gram matrix of the rows from that of the rows ``/ scale`` (see
    :func:`scaled_rows`), for methods whose weights depend on the Gram matrix's scale.

    Where ``scale² · max |gram|`` would pass ``finfo.max / (4 T)`` (float32: Gram entries
    beyond ``≈ 8e36`` at ``T = 10``) the matrix is scaled down uniformly to that bound instead:
    the same direction, the largest Gram matrix whose products with a simplex vector stay
    finite. Tiny matrices underflow to 0 as they would unscaled.
    """
    dtype = gram.dtype
    cap = jnp.finfo(dtype).max / (4.0 * gram.shape[0])
    top = jnp.maximum(jnp.max(jnp.abs(gram)), jnp.finfo(dtype).tiny)
    factor = jnp.minimum(scale, jnp.sqrt(cap / top))
    return gram * factor * factor


def row_norms(per_task_grads) -> jax.Array:
    """``‖g_t‖`` of every row, ``[T]`` in the Gram dtype, without over- or underflow.

    Each row is divided by its largest entry before squaring (as BLAS's ``nrm2`` does), so a
    norm is finite whenever the row's entries are; zero rows give 0.
    """
    dtype = linalg.gram_dtype(per_task_grads)
    leaves = [leaf.reshape(leaf.shape[0], -1).astype(dtype)
              for leaf in jax.tree.leaves(per_task_grads)]
    top = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(x), axis=1) for x in leaves])
    safe = jnp.where((top > 0) & jnp.isfinite(top), top, 1.0)
    total = sum(jnp.sum(jnp.square(x / safe[:, None]), axis=1) for x in leaves)
    return safe * jnp.sqrt(total)


def _scaled_gram_apply(core: GramWeighting, per_task_grads, state, task_losses, extra):
    """:meth:`Method.apply` of a Gram core with a degree ``k``: the weights of ``G / m²``
    (``w = m^(2k) w(G / m²)``) and ``d = m^(2k+1) (J / m)ᵀ w(G / m²)``, each factor applied
    once so that neither under- nor overflows on its own."""
    rows, scale = scaled_rows(per_task_grads)
    weights, state = core.weights_fn(linalg.gram(rows), state, task_losses=task_losses, **extra)
    k = core.degree
    # A power of two to an integer power is exact; k = 0 (most methods) stays bit for bit.
    lift = scale if k == 0 else scale ** (2 * k + 1)
    direction = jax.tree.map(lambda x: (x * lift).astype(x.dtype), linalg.combine(rows, weights))
    return MethodOutput(direction, state, weights if k == 0 else weights * scale ** (2 * k))


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
    degree: float | None = None,
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
      degree: ``k`` with ``w(c G) = c^k w(G)`` for ``c > 0``, when the method promises one:
        :meth:`Method.apply` then solves on rows rescaled by a power of two at extreme scales
        (see :class:`GramWeighting`). ``None`` (default): ``G`` as is.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> def weights_fn(gram, state, *, task_losses=None, **extra):
      ...     return 1.0 / jnp.sqrt(jnp.diagonal(gram)), state
      >>> m = gram_weighting("unit_sum", 2, optax.EmptyState, weights_fn)
      >>> m.apply(jnp.array([[2.0, 0.0], [0.0, 4.0]]), m.init(None)).updates.tolist()
      [1.0, 1.0]
    """
    return Method(name, num_tasks, _stateless_init(init_state),
                  GramWeighting(weights_fn, degree), level=level)


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
