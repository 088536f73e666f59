"""The experiment runner: one :class:`~mtljax.config.RunConfig` in, a trained model's metrics out.

:func:`run` loads the dataset (:mod:`mtljax.data.registry`), builds the model, loss, method
and optimizer (:mod:`mtljax.run.experiment`), trains with the jitted functional step
(:mod:`mtljax.run.loop`), and writes to ``config.workdir``:

* ``metrics.jsonl`` — one JSON object per logged step (:func:`mtljax.run.log.step_record`);
  evaluation lines carry ``val`` instead;
* ``summary.json`` — the config, per-task validation and test metrics at the selected step
  (:mod:`mtljax.run.summary`), wall time and steps per second;
* ``tb/`` — TensorBoard event files with the same scalars (:mod:`mtljax.tensorboard`);
* ``checkpoints/`` — with ``schedule.checkpoint_every = N``, the full run state every N steps
  and after the last (:mod:`mtljax.run.checkpointing`).

Non-finite losses or gradients: the step flags the task(s) in ``metrics["nonfinite"]``. With
``nonfinite="raise"`` the update is skipped and :func:`run` raises a ``RuntimeError`` naming
the step and task(s) at the next log flush (at most ``log_every`` steps later); with
``"skip_step"`` (the update is skipped) or ``"drop_task"`` (the non-finite tasks are left out
of that step's method) the event is logged to ``metrics.jsonl`` and counted in the summary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from mtljax.checkpoint import truncate_jsonl
from mtljax.config import RunConfig, as_config
from mtljax.run import checkpointing, experiment, outputs
from mtljax.run.log import RunLog
from mtljax.run.loop import train
from mtljax.run.summary import make_summary, selection_score, write_summary

__all__ = ["run"]


def run(
    config: RunConfig | Mapping[str, Any],
    *,
    data=None,
    progress: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Trains and evaluates one configuration; see the module docstring.

    Args:
      config: a :class:`RunConfig` or a mapping of its fields (:meth:`RunConfig.from_dict`).
      data: the dataset, already loaded (:func:`mtljax.run.experiment.load_data`) for this
        config; loaded from the config by default.
      progress: show a tqdm bar; by default only on a terminal and when ``CI`` is unset.
      resume: continue from the latest checkpoint in ``workdir/checkpoints`` (from scratch
        when there is none); the config may differ from the saved one only in
        :data:`~mtljax.config.RESUMABLE_FIELDS`.
      overwrite: replace a finished run in ``workdir`` (:func:`mtljax.run.outputs.prepare`).

    Returns:
      The summary (:func:`mtljax.run.summary.make_summary`), also written to
      ``workdir/summary.json``.

    Raises:
      RuntimeError: a non-finite loss or gradient under ``nonfinite="raise"``.
      ValueError: ``checkpoint_every`` or ``resume`` without a ``workdir``; a checkpoint
        saved with a different config.
      FileExistsError: ``workdir`` holds a finished run, without ``resume`` or ``overwrite``.
    """
    config = as_config(config)
    workdir, schedule = config.workdir, config.schedule
    if (schedule.checkpoint_every or resume) and not workdir:
        raise ValueError("schedule.checkpoint_every and resume need a workdir.")
    start = time.perf_counter()
    resuming = resume and checkpointing.checkpointer(config).latest_step() is not None
    if workdir:
        outputs.prepare(workdir, resume=resuming, overwrite=overwrite)
    exp = experiment.build_experiment(
        config, experiment.load_data(config) if data is None else data
    )
    ckpt = checkpointing.checkpointer(config) if schedule.checkpoint_every or resuming else None
    if resuming:
        state = checkpointing.restore(ckpt, exp.state, exp.batches, config)
        truncate_jsonl(os.path.join(workdir, "metrics.jsonl"), state.step)
    else:
        state = checkpointing.RunState(exp.state)
    resumed_from = state.step

    log = RunLog(
        workdir,
        exp.tasks,
        log_every=schedule.log_every,
        nonfinite=config.nonfinite,
        method=config.method.name,
        steps=schedule.steps,
        resumed_from=resumed_from,
        tensorboard=config.tensorboard,
        progress=progress,
    )

    def validate(state):
        metrics = exp.evaluate(state.train.params, "val")
        log.validation(state.step, metrics)
        state.validated(state.step, metrics, selection_score(metrics, exp.tasks))

    def save(state):
        checkpointing.save(ckpt, state, exp.batches, config)

    try:
        train_time = train(
            exp,
            config,
            state,
            log,
            validate=validate,
            checkpoint=save if schedule.checkpoint_every else None,
        )
    finally:
        log.close()
    test = exp.evaluate(state.best_params, "test")
    times = {"train": train_time, "wall": time.perf_counter() - start}
    summary = make_summary(
        config,
        exp.tasks,
        state,
        test,
        resumed_from=resumed_from,
        times=times,
        tensorboard=log.tb is not None,
    )
    if workdir:
        write_summary(workdir, summary)
    return summary
