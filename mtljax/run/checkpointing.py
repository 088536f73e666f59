"""A run's state between steps, and its checkpoints (:mod:`mtljax.checkpoint`).

:class:`RunState` is everything the loop carries from one step to the next besides the batch
iterator: the train state, the step, the parameters selected on validation so far and the
counters of the summary. A checkpoint stores it with the iterator's position and the config, so
a resumed run takes the same steps as an uninterrupted one (docs/checkpoints.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import jax

from mtljax.checkpoint import Checkpointer, CheckpointMismatchError
from mtljax.config import RESUMABLE_FIELDS, RunConfig, changed_fields, flatten, stored_config
from mtljax.data.loader import BatchIterator
from mtljax.train import TrainState


@dataclasses.dataclass
class RunState:
    """The loop's state.

    Attributes:
      train: parameters, optimizer and method state.
      step: the last step taken.
      best_score, best_step, best_params, best_val: the validation selection so far
        (``best_params`` on the host; ``None`` before the first evaluation).
      last_val: the latest validation metrics.
      nonfinite_steps: steps that had a non-finite task.
    """

    train: TrainState
    step: int = 0
    best_score: float = -math.inf
    best_step: int = 0
    best_params: Any = None
    best_val: dict | None = None
    last_val: dict | None = None
    nonfinite_steps: int = 0

    def validated(self, step: int, metrics: dict, score: float) -> None:
        """Records a validation; keeps the parameters when ``score`` is the best so far.

        The first evaluation always counts, so a run whose scores are all NaN still has one.
        """
        self.last_val = metrics
        if self.best_params is None or score > self.best_score:
            self.best_score, self.best_step, self.best_val = score, step, metrics
            self.best_params = jax.device_get(self.train.params)


def checkpointer(config: RunConfig) -> Checkpointer:
    """The checkpoints of ``config``'s run, in ``workdir/checkpoints``."""
    return Checkpointer(
        os.path.join(config.workdir, "checkpoints"), keep=config.schedule.keep_checkpoints
    )


def save(ckpt: Checkpointer, state: RunState, batches: BatchIterator, config: RunConfig) -> None:
    """Checkpoints ``state`` at its step, with the iterator's position and the config."""
    has_best = state.best_params is not None
    meta = {
        "step": state.step,
        "config": config.to_dict(),
        "iterator": batches.state(),
        "best": {"score": state.best_score, "step": state.best_step, "val": state.best_val},
        "has_best": has_best,
        "nonfinite_steps": state.nonfinite_steps,
        "last_val": state.last_val,
    }
    best = state.best_params if has_best else state.train.params
    ckpt.save(state.step, {"train_state": state.train, "best_params": best}, meta)


def restore(
    ckpt: Checkpointer, fresh: TrainState, batches: BatchIterator, config: RunConfig
) -> RunState:
    """The :class:`RunState` of the newest intact checkpoint (``batches`` moved to its position).

    A corrupt newest checkpoint is skipped, with a warning, for the newest intact one
    (:meth:`Checkpointer.restore <mtljax.checkpoint.Checkpointer.restore>`). The saved config
    is compared with ``config`` before any array is read, so a changed method or model is
    reported as such rather than as arrays that do not fit.

    Raises:
      CheckpointMismatchError: the checkpoint was saved with a config that differs outside
        :data:`~mtljax.config.RESUMABLE_FIELDS` (a ``ValueError``).
      CorruptCheckpointError: no checkpoint is intact (a ``ValueError``).
    """

    def check(meta: dict) -> None:
        check_resumable(
            meta["config"], config, f"checkpoint step {meta['step']} in {ckpt.directory}"
        )

    arrays, meta = ckpt.restore({"train_state": fresh, "best_params": fresh.params}, check=check)
    batches.restore(meta["iterator"])
    best = meta["best"]
    return RunState(
        train=arrays["train_state"],
        step=int(meta["step"]),
        best_score=best["score"],
        best_step=best["step"],
        best_params=jax.device_get(arrays["best_params"]) if meta["has_best"] else None,
        best_val=best["val"],
        last_val=meta["last_val"],
        nonfinite_steps=meta["nonfinite_steps"],
    )


def check_resumable(
    saved: Mapping[str, Any], config: RunConfig, where: str = "the checkpoint"
) -> None:
    """Raises a :class:`~mtljax.checkpoint.CheckpointMismatchError` naming each field outside
    :data:`~mtljax.config.RESUMABLE_FIELDS` where ``saved`` and ``config`` differ, with both
    values (e.g. ``method.name: 'pcgrad' in the checkpoint, 'mgda' in this run``).

    Args:
      saved: the config stored in the checkpoint (its JSON form).
      config: this run's config.
      where: the checkpoint, for the message.
    """
    changed = changed_fields(saved, config.to_dict(), RESUMABLE_FIELDS)
    if not changed:
        return
    old, new = flatten(stored_config(saved)), flatten(config.to_dict())
    details = "; ".join(
        f"{field}: {_shown(old, field)} in the checkpoint, {_shown(new, field)} in this run"
        for field in changed
    )
    raise CheckpointMismatchError(
        f"{where} was saved with a different config (fields {changed}): {details}. Only "
        f"{list(RESUMABLE_FIELDS)} may change on resume; use another workdir to start afresh."
    )


def _shown(flat: Mapping[str, Any], field: str) -> str:
    return repr(flat[field]) if field in flat else "unset"
