"""The training loop: jitted steps, with validation, logging and checkpoints on schedule.

Diagnostics need the Jacobian, which a loss-only method otherwise skips (one backward pass):
on step 1 and every ``diagnostics_every`` steps a second compiled step with
``diagnostics=True`` runs, the cheap one otherwise, so EW and friends stay one-backward in
between.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax

from mtljax.config import RunConfig
from mtljax.run.checkpointing import RunState
from mtljax.run.experiment import Experiment
from mtljax.run.log import RunLog
from mtljax.train import make_train_step


def compile_step(experiment: Experiment, config: RunConfig, *, diagnostics: bool):
    """The jitted train step (its state donated)."""
    step = make_train_step(
        experiment.loss,
        experiment.tasks,
        experiment.method,
        experiment.optimizer,
        level=config.level,
        nonfinite=config.nonfinite,
        diagnostics=diagnostics,
    )
    return jax.jit(step, donate_argnums=0)


def train(
    experiment: Experiment,
    config: RunConfig,
    state: RunState,
    log: RunLog,
    *,
    validate: Callable[[RunState], None],
    checkpoint: Callable[[RunState], None] | None,
) -> float:
    """Trains from ``state.step + 1`` to ``config.schedule.steps``, updating ``state``.

    Args:
      experiment: what to train.
      config: the run's config (its schedule, level and non-finite policy).
      state: updated in place.
      log: receives every step's metrics; flushed every ``log_every`` steps and before each
        validation and checkpoint.
      validate: called every ``eval_every`` steps and after the last.
      checkpoint: called every ``checkpoint_every`` steps and after the last (``None``: no
        checkpoints).

    Returns:
      The seconds spent outside ``validate``.
    """
    schedule = config.schedule
    cheap = compile_step(experiment, config, diagnostics=False)
    diag = (
        compile_step(experiment, config, diagnostics=True) if schedule.diagnostics_every else None
    )
    num_batches = experiment.method.num_batches
    eval_time = 0.0
    start = time.perf_counter()
    for step in range(state.step + 1, schedule.steps + 1):
        batches = [next(experiment.batches) for _ in range(num_batches)]
        batch = batches[0] if num_batches == 1 else tuple(batches)
        diagnose = diag is not None and (step == 1 or step % schedule.diagnostics_every == 0)
        state.train, metrics = (diag if diagnose else cheap)(state.train, batch)
        state.step = step
        log.step(step, metrics)
        last = step == schedule.steps
        if step % schedule.log_every == 0 or last:
            state.nonfinite_steps += log.flush()
        if step % schedule.eval_every == 0 or last:
            state.nonfinite_steps += log.flush()
            tick = time.perf_counter()
            validate(state)
            eval_time += time.perf_counter() - tick
        if checkpoint is not None and (step % schedule.checkpoint_every == 0 or last):
            state.nonfinite_steps += log.flush()
            checkpoint(state)
        log.advance()
    return time.perf_counter() - start - eval_time
