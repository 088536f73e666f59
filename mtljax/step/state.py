"""The train state and the pure functions of a multi-task model."""

from __future__ import annotations

from collections.abc import Callable
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
        """Wraps ``fn(params, batch) -> losses`` or ``(losses, aux)``; parameter level only."""

        def decode(params, rep, batch):
            del rep
            out = fn(params, batch)
            return out if isinstance(out, tuple) else (out, {})

        return cls(lambda params, batch: None, decode)


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
