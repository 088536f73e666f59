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

Before anything is loaded or written, the config's names and method hyper-parameters are
checked (:func:`mtljax.run.experiment.check`) and so is the workdir
(:func:`mtljax.run.outputs.check`). A run that resumes a finished one moves its
``summary.json`` aside (:func:`mtljax.run.outputs.set_aside`) once the checkpoint is restored,
so the folder never shows an old result beside a new, partial log. An interrupt (Ctrl-C)
during training becomes a :class:`RunInterrupted` that says where the run stopped and whether
``--resume`` can continue it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from mtljax.checkpoint import truncate_jsonl
from mtljax.config import ConfigError, RunConfig, as_config
from mtljax.run import checkpointing, experiment, outputs
from mtljax.run.log import RunLog
from mtljax.run.loop import train
from mtljax.run.summary import make_summary, selection_score, write_summary

__all__ = ["RunInterrupted", "run"]


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by an interrupt; its message says at which step and how to go on.

    Attributes:
      step: the last step taken.
      checkpoint: the latest checkpoint's step, ``None`` when there is none.
    """

    def __init__(self, step: int, steps: int, checkpoint: int | None):
        self.step, self.checkpoint = step, checkpoint
        if checkpoint is None:
            how = (
                "no checkpoint was written, so rerunning starts again (--set "
                "schedule.checkpoint_every=N makes a run resumable)"
            )
        else:
            how = f"rerun with --resume to continue from the checkpoint of step {checkpoint}"
        super().__init__(f"interrupted at step {step} of {steps}; {how}")


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
      progress: ``True``: a tqdm bar; ``False``: no progress output; ``None``: a bar on a
        terminal outside CI, else a line on stderr every 10% of the steps
        (:class:`mtljax.run.log.ProgressLines`).
      resume: continue from the latest checkpoint in ``workdir/checkpoints`` (from scratch
        when there is none); the config may differ from the saved one only in
        :data:`~mtljax.config.RESUMABLE_FIELDS`.
      overwrite: replace a finished run in ``workdir`` (:func:`mtljax.run.outputs.prepare`).

    Returns:
      The summary (:func:`mtljax.run.summary.make_summary`), also written to
      ``workdir/summary.json``.

    Raises:
      RuntimeError: a non-finite loss or gradient under ``nonfinite="raise"``.
      ConfigError: ``checkpoint_every`` or ``resume`` without a ``workdir``; a workdir that
        is not a writable folder, or holds a finished run without ``resume`` or
        ``overwrite``; a method hyper-parameter the method does not take.
      ValueError: a checkpoint saved with a different config.
      RunInterrupted: an interrupt (Ctrl-C) while training or testing.
    """
    config = as_config(config)
    workdir, schedule = config.workdir, config.schedule
    resuming = _check(config, resume=resume, overwrite=overwrite)
    start = time.perf_counter()
    # Built before the workdir is cleared: a config the experiment refuses changes no file.
    exp = experiment.build_experiment(
        config, experiment.load_data(config) if data is None else data
    )
    if workdir:
        outputs.prepare(workdir, resume=resuming, overwrite=overwrite)
    ckpt = checkpointing.checkpointer(config) if schedule.checkpoint_every or resuming else None
    if resuming:
        state = checkpointing.restore(ckpt, exp.state, exp.batches, config)
        outputs.set_aside(workdir)
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
        test = exp.evaluate(state.best_params, "test")
    except KeyboardInterrupt:
        latest = ckpt.latest_step() if ckpt is not None else None
        raise RunInterrupted(state.step, schedule.steps, latest) from None
    finally:
        log.close()
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


def _check(config: RunConfig, *, resume: bool, overwrite: bool) -> bool:
    """Checks ``config`` and its workdir before anything is loaded or written; returns whether
    the run resumes from a checkpoint (``resume`` and one exists).

    Raises:
      ConfigError: see :func:`run`.
    """
    workdir = config.workdir
    if (config.schedule.checkpoint_every or resume) and not workdir:
        raise ConfigError(
            "schedule.checkpoint_every and --resume need a workdir; pass --workdir DIR."
        )
    experiment.check(config)
    if not workdir:
        return False
    outputs.check(workdir)
    resuming = resume and checkpointing.checkpointer(config).latest_step() is not None
    if not resuming:
        outputs.refuse_finished(workdir, overwrite=overwrite)
    return resuming
