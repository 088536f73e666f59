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
store ``float32``. tensorboardX is optional (``pip install -e '.[tb]'``); without it
:func:`open_tensorboard` returns ``None`` and nothing is written. View the files with
``tensorboard --logdir runs/`` (docs/workflow.md).

The events of one record go to the file at once, as one ``Event``, flushed to the operating
system before :meth:`TensorBoardWriter.write` returns, as each ``metrics.jsonl`` line is: a
killed run (SIGKILL included) loses at most the record it was writing when it died.
(tensorboardX's ``SummaryWriter`` queues events to a thread that flushes every
``flush_secs``, so a kill lost the last seconds, or left a 0-byte file.) The file is also
``fsync``-ed when it is closed; per record that would cost ~7 ms. The format is TensorBoard's:
a sequence of TFRecords (``uint64 length``, ``uint32 masked CRC-32C of it``, the serialized
``Event``, ``uint32 masked CRC-32C of it``), built with tensorboardX's protos and tag rules.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
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
    """Writes ``metrics.jsonl`` records as TensorBoard scalars at their ``step``, each record
    flushed as it is written (see the module docstring).

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
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self.task_names = tuple(task_names)
        os.makedirs(logdir, exist_ok=True)
        # TensorBoard's file name (it reads files whose name holds "tfevents"), plus the PID,
        # so that a run resumed within the same second does not share a file with its past.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(os.fspath(logdir), name)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._write_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            # A START at step s makes TensorBoard drop the earlier files' events from step s on.
            start = SessionLog(status=SessionLog.START)
            self._write_event(Event(wall_time=time.time(), step=purge_step, session_log=start))

    def write(self, record: Mapping[str, Any]) -> None:
        """Writes the scalars of one record (:func:`record_scalars`) as one flushed event."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import scalar

        values = [
            value
            for tag, number in record_scalars(record, self.task_names).items()
            for value in scalar(tag, number).value
        ]
        step = int(record["step"])
        self._write_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def _write_event(self, event: Any) -> None:
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        crcs = struct.pack("<I", masked_crc32c(header)), struct.pack("<I", masked_crc32c(data))
        self._file.write(header + crcs[0] + data + crcs[1])
        self._file.flush()

    def close(self) -> None:
        """Flushes, ``fsync``-s and closes the event file."""
        os.fsync(self._file.fileno())
        self._file.close()


def open_tensorboard(
    logdir: str | os.PathLike, task_names: Sequence[str], *, purge_step: int | None = None
) -> TensorBoardWriter | None:
    """A :class:`TensorBoardWriter`, or ``None`` when tensorboardX is not installed."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return None
    return TensorBoardWriter(logdir, task_names, purge_step=purge_step)
