"""The train step's public names, kept importable from ``mtljax.train``; see :mod:`mtljax.step`."""

from mtljax.step import (
    NONFINITE_POLICIES,
    MultiTaskLoss,
    TrainState,
    TrainStep,
    init_train_state,
    make_train_step,
)

__all__ = [
    "NONFINITE_POLICIES",
    "MultiTaskLoss",
    "TrainState",
    "TrainStep",
    "init_train_state",
    "make_train_step",
]
