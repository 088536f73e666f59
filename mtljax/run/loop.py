"""The training loop: one jitted step, with validation, logging and checkpoints on schedule.

Diagnostics are logged on step 1 and every ``diagnostics_every`` steps. A loss-only method
computes them only then (the step's ``diagnostics_every``: a ``lax.cond`` around the Gramian
engine's ``G``), so EW and friends stay one backward pass in between; other methods have
``G`` at every step, and the loop drops their diagnostics from the other steps' records.
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

DIAGNOSTIC_KEYS = ("grad_norms", "cosine", "conflict_fraction", "magnitude_similarity",
                   "update_norm", "update_cosine", "diagnosed")


def compile_step(experiment: Experiment, config: RunConfig):
    """The jitted train step (its state donated)."""
    every = config.schedule.diagnostics_every
    step = make_train_step(
        experiment.loss,
        experiment.tasks,
        experiment.method,
        experiment.optimizer,
        level=config.level,
        nonfinite=config.nonfinite,
        diagnostics=every > 0,
        diagnostics_every=every or None,
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
    step_fn = compile_step(experiment, config)
    num_batches = experiment.method.num_batches
    eval_time = 0.0
    start = time.perf_counter()
    for step in range(state.step + 1, schedule.steps + 1):
        batches = [next(experiment.batches) for _ in range(num_batches)]
        batch = batches[0] if num_batches == 1 else tuple(batches)
        state.train, metrics = step_fn(state.train, batch)
        every = schedule.diagnostics_every
        if not every or (step != 1 and step % every):
            metrics = {k: v for k, v in metrics.items() if k not in DIAGNOSTIC_KEYS}
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
