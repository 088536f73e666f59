"""TensorBoard event files beside ``metrics.jsonl``, when tensorboardX is installed.

The runner hands every ``metrics.jsonl`` record (:func:`mtljax.run.log.step_record` and the
evaluation lines) to :meth:`TensorBoardWriter.write` as well, which writes one scalar per
number under these tags:

* ``loss/<task>``, ``weight/<task>``, ``grad_norm/<task>``, ``update_cosine/<task>``;
* ``conflict_fraction``, ``update_norm``, ``skipped`` (0 or 1);
* ``cosine/<a>-<b>`` and ``magnitude_similarity/<a>-<b>`` for each pair ``a`` before ``b`` in
  task order (the matrices are symmetric, so the upper triangle holds all of them);
* ``val/<task>/<metric>`` from the evaluation lines, ``aux/<name>/<task>`` from a loss's aux.

A value that ``metrics.jsonl`` holds as ``null`` (NaN or ±Inf) is written as NaN. Event files
store ``float32``. tensorboardX is optional (``pip install mtljax[tb]``); without it
:func:`open_tensorboard` returns ``None`` and nothing is written. View the files with
``tensorboard --logdir runs/`` (docs/workflow.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

# Record keys renamed to singular tag prefixes; keys not listed keep their name.
TAG_NAMES = {"losses": "loss", "weights": "weight", "grad_norms": "grad_norm"}
# [T, T] symmetric matrices, written per pair of tasks.
PAIRWISE = ("cosine", "magnitude_similarity")
# Record keys that are not scalars: the step itself and the list of flagged task names.
NOT_SCALARS = ("step", "nonfinite")


def _flatten(tag: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{tag}/{key}", sub, out)
    elif isinstance(value, list | tuple):
        for i, sub in enumerate(value):
            _flatten(f"{tag}/{i}", sub, out)
    else:
        out[tag] = math.nan if value is None else float(value)


def record_scalars(record: Mapping[str, Any], task_names: Sequence[str]) -> dict[str, float]:
    """The ``{tag: value}`` scalars of one ``metrics.jsonl`` record (tags in the module
    docstring).

    Example:
      >>> record_scalars({"step": 5, "losses": {"a": 0.5, "b": None},
      ...                 "cosine": [[1.0, -0.25], [-0.25, 1.0]]}, ["a", "b"])
      {'loss/a': 0.5, 'loss/b': nan, 'cosine/a-b': -0.25}
    """
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in NOT_SCALARS:
            continue
        if key in PAIRWISE:
            for i, a in enumerate(task_names):
                for j in range(i + 1, len(task_names)):
                    _flatten(f"{key}/{a}-{task_names[j]}", value[i][j], out)
        else:
            _flatten(TAG_NAMES.get(key, key), value, out)
    return out


class TensorBoardWriter:
    """Writes ``metrics.jsonl`` records as TensorBoard scalars at their ``step``.

    Args:
      logdir: the folder of the event files (created if missing).
      task_names: the run's tasks, in order (names the pairs of the matrices).
      purge_step: on resume, the first step run again; TensorBoard hides the events of the
        earlier files from this step on, as ``metrics.jsonl`` is truncated there.
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        task_names: Sequence[str],
        *,
        purge_step: int | None = None,
    ):
        from tensorboardX import SummaryWriter

        self.task_names = tuple(task_names)
        self._writer = SummaryWriter(os.fspath(logdir), purge_step=purge_step, flush_secs=10)

    def write(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in record_scalars(record, self.task_names).items():
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self._writer.close()


def open_tensorboard(
    logdir: str | os.PathLike, task_names: Sequence[str], *, purge_step: int | None = None
) -> TensorBoardWriter | None:
    """A :class:`TensorBoardWriter`, or ``None`` when tensorboardX is not installed."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return None
    return TensorBoardWriter(logdir, task_names, purge_step=purge_step)
