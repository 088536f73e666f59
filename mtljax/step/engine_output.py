"""What every engine returns (:mod:`mtljax.step.engines`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from mtljax.step import status as st
from mtljax.step.context import StepContext


class EngineOutput(NamedTuple):
    """What an engine returns (per device in the local mode, else global)."""

    losses: jax.Array  # [T]
    aux: Any  # the loss function's aux, without "present"
    status: st.TaskStatus
    weights: jax.Array  # [T]; NaN for a method that is no weighting
    method_state: Any
    shared_update: Any  # shaped like params["shared"]
    head_update: Any  # shaped like params["heads"]
    metrics: dict  # diagnostics, when asked for
    row_weights: Any = None  # instance-wise: the [T, B] row weights (weights are their sums)


Engine = Callable[[StepContext, Any, Any, tuple], EngineOutput]
