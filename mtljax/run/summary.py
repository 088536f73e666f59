"""Model selection and a run's summary (``summary.json``).

Model selection uses the validation split only: the parameters with the best mean headline
metric over the primary tasks (each task's first metric, negated when lower is better; every
task is primary unless ``data.primary`` or ``data.levels`` say otherwise) are kept, and the
test split is evaluated once, at that checkpoint. Auxiliary tasks do not count: they exist to
help the primary ones, and a deliberately unlearnable one would only add noise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mtljax.config import RunConfig
from mtljax.metrics_log import to_json
from mtljax.run.checkpointing import RunState
from mtljax.run.outputs import SUMMARY
from mtljax.tasks import Tasks


def selection_score(metrics: Mapping[str, Mapping[str, float]], tasks: Tasks) -> float:
    """The mean over the primary tasks of each one's headline metric, signed so that higher
    is better."""
    scores = []
    for task in (tasks[i] for i in tasks.primary):
        headline = task.metrics[0]
        value = metrics[task.name][headline.name]
        scores.append(value if headline.higher_is_better else -value)
    return float(np.mean(scores))


def higher_is_better(tasks: Tasks) -> dict[str, dict[str, bool]]:
    """``{task: {metric: higher is better}}``, for :func:`mtljax.evaluation.delta_m`."""
    return {t.name: {m.name: m.higher_is_better for m in t.metrics} for t in tasks}


def make_summary(
    config: RunConfig,
    tasks: Tasks,
    state: RunState,
    test: dict,
    *,
    resumed_from: int,
    times: Mapping[str, float],
    tensorboard: bool,
) -> dict:
    """The summary of a finished run.

    Keys: ``config`` (nested, :meth:`RunConfig.to_dict`), ``tasks``, ``levels`` (``{task:
    priority level}``; level 0 is primary, any other auxiliary), ``higher_is_better``,
    ``best_step``, ``val`` and ``test`` (``{task: {metric: value}}`` at ``best_step``),
    ``final_val``, ``nonfinite_steps``, ``wall_time_s``, ``train_time_s`` (the training loop
    without evaluation, compilation included), ``steps_per_s`` (steps run by this call over
    ``train_time_s``), ``resumed_from`` (the checkpoint's step, 0 for a fresh run) and
    ``tensorboard`` (whether event files were written).
    """
    train_time = times["train"]
    return {
        "config": config.to_dict(),
        "tasks": list(tasks.names),
        "levels": dict(zip(tasks.names, tasks.levels, strict=True)),
        "higher_is_better": higher_is_better(tasks),
        "best_step": state.best_step,
        "val": state.best_val,
        "test": test,
        "final_val": state.last_val,
        "nonfinite_steps": state.nonfinite_steps,
        "wall_time_s": times["wall"],
        "train_time_s": train_time,
        "steps_per_s": (config.schedule.steps - resumed_from) / train_time,
        "resumed_from": resumed_from,
        "tensorboard": tensorboard,
    }


def write_summary(workdir: str, summary: Mapping[str, Any]) -> None:
    """Writes ``workdir/summary.json`` (NaN and ±Inf as ``null``) atomically: a kill leaves
    the old file or the new one, never half of one (``os.replace``)."""
    path = os.path.join(workdir, SUMMARY)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(to_json(summary), f, indent=2)
    os.replace(f"{path}.tmp", path)
