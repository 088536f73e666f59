"""A run's folder: what it holds, and when a new run may write into it.

A run writes ``metrics.jsonl``, ``summary.json`` (once finished), ``tb/`` and ``checkpoints/``
into its workdir, and ``mtljax plot`` adds ``plot_*.png``. A fresh run (one that does not
resume from a checkpoint) starts from a folder without them, so no stale file of an earlier
run stays beside the new ones; but a *finished* run (its ``summary.json`` exists) is kept
unless the caller asks to overwrite it. A run that resumes a finished one moves its
``summary.json`` aside to ``summary.previous.json`` before training on (:func:`set_aside`), so
a folder holds a ``summary.json`` only while that file describes the folder's latest run:
an interrupted resume never looks finished.
"""

from __future__ import annotations

import glob
import os
import shutil

from mtljax.config import ConfigError

SUMMARY, PREVIOUS = "summary.json", "summary.previous.json"
OUTPUTS = (SUMMARY, PREVIOUS, "metrics.jsonl", "tb", "checkpoints")


def is_finished(workdir: str) -> bool:
    """Whether ``workdir`` holds a finished run (a ``summary.json``)."""
    return os.path.isfile(os.path.join(workdir, SUMMARY))


def check(workdir: str) -> None:
    """Checks, before anything is written, that ``workdir`` is or can become a writable folder.

    Raises:
      ConfigError: ``workdir`` (or a folder above it) is a file, or the nearest existing
        folder is not writable; the message names the path and says what to do.
    """
    path = os.path.abspath(workdir)
    while not os.path.isdir(path):
        if os.path.lexists(path):
            where = "" if path == os.path.abspath(workdir) else f" ({path})"
            raise ConfigError(
                f"workdir {workdir}{where} is a file, not a folder; choose another --workdir."
            )
        path = os.path.dirname(path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"workdir {workdir}: {path} is not writable; choose another --workdir or fix its "
            "permissions."
        )


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
      ConfigError: ``workdir`` is not a writable folder (:func:`check`), or it holds a
        finished run and neither ``resume`` nor ``overwrite`` is set; the message says how to
        continue or overwrite it.
    """
    check(workdir)
    if not resume:
        refuse_finished(workdir, overwrite=overwrite)
        clear(workdir)
    os.makedirs(workdir, exist_ok=True)


def refuse_finished(workdir: str, *, overwrite: bool) -> None:
    """Raises a ``ConfigError`` when a fresh run would replace the finished run in ``workdir``
    without ``overwrite``; the message says how to continue or overwrite it."""
    if is_finished(workdir) and not overwrite:
        raise ConfigError(
            f"{workdir} holds a finished run (summary.json). Pass --resume to continue it "
            "from its last checkpoint (e.g. with more schedule.steps; it needs "
            "schedule.checkpoint_every > 0), --overwrite to replace it, or choose another "
            "--workdir."
        )


def set_aside(workdir: str) -> None:
    """Renames a finished run's ``summary.json`` to ``summary.previous.json`` (replacing an
    older one): called when a run resumes, so that until it finishes the folder does not
    claim a result its log and checkpoints no longer lead to."""
    path = os.path.join(workdir, SUMMARY)
    if os.path.isfile(path):
        os.replace(path, os.path.join(workdir, PREVIOUS))
