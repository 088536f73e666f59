"""A run's outputs while it trains: ``metrics.jsonl``, TensorBoard events, a progress bar.

Step metrics stay on the device until a flush (every ``log_every`` steps, before each
evaluation and checkpoint), so logging does not stall the step pipeline. A flush writes one
``metrics.jsonl`` line per logged step (every ``log_every``-th, the first, each diagnostics
step, and each step with a non-finite task), hands the same record to TensorBoard
(:mod:`mtljax.tensorboard`), and under ``nonfinite="raise"`` raises at the first non-finite
step it sees.

Progress: on a terminal, a tqdm bar; otherwise (a log file, a pipe, CI) one line on stderr
at the first step, every 10% of the steps, at least every 30 s (checked at each flush) and at
the last step:
``mtljax run ew: step 300/1000 (30%) · loss left 0.412, right 0.398 · 9 s elapsed · eta 21 s``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from mtljax.metrics_log import JsonlWriter, to_json
from mtljax.tasks import Tasks
from mtljax.tensorboard import open_tensorboard


def step_record(step: int, metrics: Mapping[str, Any], tasks: Tasks) -> dict:
    """One ``metrics.jsonl`` line from the host copy of a step's metrics.

    Keys: ``step``, per-task ``losses`` and ``weights``, ``skipped``; ``nonfinite`` and
    ``absent`` (task names) when some task was non-finite or had no labels in the batch; the
    diagnostics (``grad_norms``, ``update_cosine`` per task; ``cosine``,
    ``magnitude_similarity``, ``conflict_fraction``, ``update_norm``) on diagnostics steps;
    the loss's other ``aux`` values.
    """
    names = tasks.names

    def per_task(values):
        return dict(zip(names, to_json(values), strict=True))

    record = {
        "step": step,
        "losses": per_task(np.asarray(metrics["losses"])),
        "weights": per_task(metrics["weights"]),
        "skipped": bool(metrics["skipped"]),
    }
    for key, flags in (("nonfinite", metrics["nonfinite"]), ("absent", _absent(metrics))):
        flagged = [n for n, bad in zip(names, np.asarray(flags), strict=True) if bad]
        if flagged:
            record[key] = flagged
    for key in ("grad_norms", "update_cosine"):
        if key in metrics:
            record[key] = per_task(metrics[key])
    for key in ("cosine", "magnitude_similarity", "conflict_fraction", "update_norm"):
        if key in metrics:
            record[key] = to_json(metrics[key])
    aux = {k: v for k, v in (metrics.get("aux") or {}).items() if k not in ("present", "count")}
    if aux:
        record["aux"] = to_json(aux)
    return record


def _absent(metrics: Mapping[str, Any]) -> np.ndarray:
    present = metrics.get("present")
    if present is None:
        return np.zeros(np.shape(metrics["losses"]), bool)
    return ~np.asarray(present, bool)


def show_progress() -> bool:
    """A progress bar by default: on a terminal, outside CI."""
    return not os.environ.get("CI") and sys.stderr.isatty()


def _duration(seconds: float) -> str:
    """``"9 s"``, ``"2 min 05 s"``, ``"1 h 02 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLines:
    """Progress as plain lines, for output that is not a terminal (see the module docstring).

    The estimate of the time left uses the pace since the run's first step, so that the
    compilation, which the first step includes, does not inflate it.

    Args:
      total: the run's last step.
      desc: what runs (the method's name).
      first: the step the run starts after (a resumed run's checkpoint step, else 0).
      every_s: the most seconds between two lines (checked when steps arrive).
    """

    def __init__(self, total: int, desc: str, first: int, *, every_s: float = 30.0):
        self.total, self.desc, self.first, self.every_s = total, desc, first, every_s
        self.start = self.last_time = time.perf_counter()
        self.first_time = self.start
        self.last_tenth = 10 * first // total

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        """Writes a line to stderr for ``step`` if one is due: the run's first step, a new
        tenth of the steps, ``every_s`` seconds since the last line, or the last step."""
        now, tenth = time.perf_counter(), 10 * step // self.total
        due = tenth > self.last_tenth or now - self.last_time >= self.every_s
        if not (due or step == self.first + 1 or step == self.total):
            return
        self.last_tenth, self.last_time = tenth, now
        shown = ", ".join(f"{t} {v:.4g}" for t, v in losses.items())
        line = (
            f"mtljax run {self.desc}: step {step}/{self.total} ({100 * step // self.total}%) "
            f"· loss {shown} · {_duration(now - self.start)} elapsed"
        )
        if step == self.first + 1:
            self.first_time = now
        else:
            pace = (now - self.first_time) / (step - self.first - 1)
            line += f" · eta {_duration(pace * (self.total - step))}"
        print(line, file=sys.stderr, flush=True)


class RunLog:
    """Collects step metrics and writes them (see the module docstring).

    Args:
      workdir: the run folder (``None``: nothing is written).
      tasks: the run's tasks.
      log_every: a line every this many steps.
      nonfinite: the run's policy; ``"raise"`` makes :meth:`flush` raise.
      method: the method's name (for the error message).
      steps: the total number of steps (the progress bar's length).
      resumed_from: the checkpoint's step (0 for a fresh run): the log is appended to from it.
      tensorboard: also write ``workdir/tb`` when tensorboardX is installed.
      progress: ``True``: a tqdm bar; ``False``: no progress; ``None``: a bar when
        :func:`show_progress`, else :class:`ProgressLines`.
    """

    def __init__(
        self,
        workdir,
        tasks: Tasks,
        *,
        log_every: int,
        nonfinite: str,
        method: str,
        steps: int,
        resumed_from: int,
        tensorboard: bool,
        progress: bool | None,
    ):
        self.tasks, self.log_every, self.method = tasks, log_every, method
        self.raise_nonfinite = nonfinite == "raise"
        self.warned_zero_update = False
        self._pending: list[tuple[int, Any]] = []
        path = os.path.join(workdir, "metrics.jsonl") if workdir else None
        self.writer = JsonlWriter(path, append=bool(resumed_from)) if path else None
        self.tb = None
        if workdir and tensorboard:
            purge = resumed_from + 1 if resumed_from else None  # hide the resumed steps' events
            self.tb = open_tensorboard(os.path.join(workdir, "tb"), tasks.names, purge_step=purge)
        auto = progress is None
        self.bar = _progress_bar(steps, method) if (show_progress() if auto else progress) else None
        if self.bar is not None:
            self.bar.update(resumed_from)
        self.lines = ProgressLines(steps, method, resumed_from) if auto and not self.bar else None

    def step(self, step: int, metrics: Any) -> None:
        """Queues a step's (device) metrics."""
        self._pending.append((step, metrics))

    def flush(self) -> int:
        """Writes the queued steps; returns how many had a non-finite task.

        Raises:
          RuntimeError: under ``nonfinite="raise"``, naming the step and task(s).
        """
        count = 0
        for step, metrics in jax.device_get(self._pending):
            bad = np.asarray(metrics["nonfinite"])
            if bad.any():
                count += 1
                if self.raise_nonfinite:
                    names = [n for n, b in zip(self.tasks.names, bad, strict=True) if b]
                    raise RuntimeError(
                        f"Non-finite loss or gradient at step {step} in task(s) {names} "
                        f"(method {self.method!r}); the update was skipped. Set --set "
                        "nonfinite=skip_step or nonfinite=drop_task to continue past it."
                    )
            self._check_zero_update(step, metrics)
            if step % self.log_every == 0 or step == 1 or "cosine" in metrics or bad.any():
                self._write(step_record(step, metrics, self.tasks))
            losses = dict(
                zip(self.tasks.names, np.asarray(metrics["losses"]).tolist(), strict=True)
            )
            if self.bar is not None:
                self.bar.set_postfix({t: f"{v:.3f}" for t, v in losses.items()}, refresh=False)
            if self.lines is not None:
                self.lines.update(step, losses)
        self._pending.clear()
        return count

    def _check_zero_update(self, step: int, metrics) -> None:
        """Warns once when an applied step's update is exactly zero (MGDA's min-norm point
        when some task's gradient is zero or the gradients cancel): the run goes on, but the
        parameters did not move."""
        norm = metrics.get("update_norm")
        if self.warned_zero_update or norm is None or bool(metrics["skipped"]):
            return
        if float(norm) == 0.0:
            self.warned_zero_update = True
            warnings.warn(
                f"step {step}: the update of method {self.method!r} is exactly zero (the "
                "min-norm point of the task gradients is 0: a task's gradient is zero or the "
                "gradients cancel); the parameters did not move. Warned once per run.",
                stacklevel=2,
            )

    def validation(self, step: int, metrics: Mapping[str, Mapping[str, float]]) -> None:
        """Writes an evaluation line ``{"step", "val"}``."""
        self._write({"step": step, "val": metrics})

    def advance(self) -> None:
        """Moves the progress bar one step."""
        if self.bar is not None:
            self.bar.update(1)

    def _write(self, record: dict) -> None:
        if self.writer:
            self.writer.write(record)
        if self.tb:
            self.tb.write(record)

    def close(self) -> None:
        for out in (self.bar, self.writer, self.tb):
            if out is not None:
                out.close()


def _progress_bar(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
