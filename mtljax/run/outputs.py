"""A run's folder: what it holds, and when a new run may write into it.

A run writes ``metrics.jsonl``, ``summary.json`` (once finished), ``tb/`` and ``checkpoints/``
into its workdir, and ``mtljax plot`` adds ``plot_*.png``. A fresh run (one that does not
resume from a checkpoint) starts from a folder without them, so no stale file of an earlier
run stays beside the new ones; but a *finished* run (its ``summary.json`` exists) is kept
unless the caller asks to overwrite it.
"""

from __future__ import annotations

import glob
import os
import shutil

OUTPUTS = ("summary.json", "metrics.jsonl", "tb", "checkpoints")


def is_finished(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished run (a ``summary.json``)."""
    return os.path.isfile(os.path.join(workdir, "summary.json"))


def clear(workdir: str) -> None:
    """Deletes a run's outputs from ``workdir`` (:data:`OUTPUTS` and ``plot_*.png``); the
    folder and any other file in it stay."""
    paths = [os.path.join(workdir, name) for name in OUTPUTS]
    for path in paths + glob.glob(os.path.join(workdir, "plot_*.png")):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def prepare(workdir: str, *, resume: bool, overwrite: bool) -> None:
    """Makes ``workdir`` ready for a run.

    Args:
      workdir: the run folder (created if missing).
      resume: the run continues from a checkpoint in it: nothing is cleared.
      overwrite: clear a finished run's outputs instead of refusing.

    Raises:
      FileExistsError: ``workdir`` holds a finished run, and neither ``resume`` nor
        ``overwrite`` is set; the message says how to continue or overwrite it.
    """
    if not resume:
        if is_finished(workdir) and not overwrite:
            raise FileExistsError(
                f"{workdir} holds a finished run (summary.json). Pass --resume to continue it "
                "from its last checkpoint (e.g. with more schedule.steps; it needs "
                "schedule.checkpoint_every > 0), --overwrite to replace it, or choose another "
                "--workdir."
            )
        clear(workdir)
    os.makedirs(workdir, exist_ok=True)
