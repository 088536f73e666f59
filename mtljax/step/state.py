"""The train state and the pure functions of a multi-task model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtljax.methods import Method


class TrainState(NamedTuple):
    step: jax.Array  # [] int32
    params: Any  # {"shared": ..., "heads": ...}
    opt_state: Any
    method_state: Any


class MultiTaskLoss(NamedTuple):
    """The pure functions of a multi-task model.

    * ``encode(params, batch) -> rep`` — the shared trunk (reads ``params["shared"]``);
    * ``decode(params, rep, batch) -> (losses, aux)`` — task heads and losses (reads
      ``params["heads"]``); ``losses`` is a dict keyed by task name or a ``[T]`` array, and
      ``aux`` a dict that may carry ``"present"`` (``[T]`` bool or ``{task: bool}``: which
      tasks have a labelled example in the batch).
    """

    encode: Callable[[Any, Any], Any]
    decode: Callable[[Any, Any, Any], tuple[Any, Any]]

    @classmethod
    def from_fn(cls, fn: Callable[[Any, Any], Any]) -> MultiTaskLoss:
        """Wraps ``fn(params, batch) -> losses`` or ``(losses, aux)``; parameter level only.

        ``losses`` is a dict keyed by task name or a ``[T]`` array; a tuple is read as
        ``(losses, aux)`` and must have two items with ``aux`` a dict, so a tuple of per-task
        scalars raises instead of being taken for a pair.
        """

        def decode(params, rep, batch):
            del rep
            out = fn(params, batch)
            if not isinstance(out, tuple):
                return out, {}
            if len(out) != 2 or not isinstance(out[1], Mapping):
                raise TypeError(
                    f"The loss function returned {_kinds(out)}; expected the losses (a dict "
                    "keyed by task name or a [T] array, e.g. jnp.stack([...])) or a pair "
                    "(losses, aux) with aux a dict."
                )
            return out

        return cls(lambda params, batch: None, decode)


def losses_and_aux(out, *, source: str = "decode") -> tuple[Any, Any]:
    """Checks that ``source`` returned the pair ``(losses, aux)`` and returns it.

    Without this check a bare losses dict of two tasks would unpack into its two *keys*.
    """
    if isinstance(out, tuple) and len(out) == 2:
        return out
    if isinstance(out, Mapping):
        hint = (
            f"it returned the losses dict alone (keys {sorted(out)}): return (losses, {{}}), "
            "or wrap a function of (params, batch) with MultiTaskLoss.from_fn"
        )
    else:
        hint = f"it returned {_kinds(out) if isinstance(out, tuple) else type(out).__name__}"
    raise TypeError(
        f"{source} must return a pair (losses, aux): losses a dict keyed by task name or a [T] "
        f"array, aux a dict (may be empty); {hint}."
    )


def _kinds(items: tuple) -> str:
    """``"a tuple of (array (), array (), dict)"``: what a wrong return held (shapes, as
    tracers' type names say nothing), for error messages."""
    kinds = [f"array {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__ for x in items]
    return f"a tuple of ({', '.join(kinds)})"


def init_train_state(params, optimizer: optax.GradientTransformation, method: Method) -> TrainState:
    """The initial :class:`TrainState` for ``params = {"shared": ..., "heads": ...}``."""
    check_params(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        method_state=method.init(params["shared"]),
    )


def check_params(params) -> None:
    """Raises unless ``params`` is a dict with exactly the keys ``shared`` and ``heads``."""
    if not isinstance(params, dict) or set(params) != {"shared", "heads"}:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f'params must be a dict with keys "shared" and "heads", got {keys}.')
