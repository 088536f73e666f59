"""TensorBoard event files: the same scalars as ``metrics.jsonl``, and nothing without the extra."""

import math
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mtljax.config import RunConfig
from mtljax.metrics_log import read_jsonl
from mtljax.run import run
from mtljax.tensorboard import open_tensorboard, record_scalars

SMALL = RunConfig().replace(
    {
        "schedule": {"steps": 20, "eval_every": 10, "log_every": 5, "diagnostics_every": 10},
        "schedule.batch_size": 64,
        "model.kwargs.hidden": [16],
        "data.kwargs.pairs_per_image": 1,
    }
)


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # CRC-32C, reflected polynomial
        table.append(crc)
    return table


CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated right by 15 bits plus a constant."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(logdir) -> list:
    """Every ``Event`` of the event files in ``logdir``, in file order.

    An event file is a sequence of TFRecords: ``uint64 length``, ``uint32 masked_crc(length
    bytes)``, ``length`` bytes of a serialized ``Event`` proto, ``uint32 masked_crc(data)``,
    all little-endian.
    """
    from tensorboardX.proto.event_pb2 import Event

    events = []
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        raw = path.read_bytes()
        offset = 0
        while offset < len(raw):
            header = raw[offset : offset + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", raw[offset + 8 : offset + 12])
            data = raw[offset + 12 : offset + 12 + length]
            (data_crc,) = struct.unpack("<I", raw[offset + 12 + length : offset + 16 + length])
            assert header_crc == masked_crc32c(header) and data_crc == masked_crc32c(data)
            offset += 16 + length
            events.append(Event.FromString(data))
    return events


def read_scalars(logdir) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from every event file in ``logdir``."""
    scalars: dict[str, dict[int, float]] = {}
    for event in read_events(logdir):
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_masked_crc32c_known_answer():
    # CRC-32C of "123456789" is 0xE3069283 (RFC 3720, B.4).
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_record_scalars_tags():
    record = {
        "step": 7,
        "losses": {"a": 0.5, "b": None, "c": 2.0},
        "weights": {"a": 1.0, "b": 1.0, "c": 1.0},
        "skipped": True,
        "nonfinite": ["b"],
        "cosine": [[1.0, 0.1, 0.2], [0.1, 1.0, -0.3], [0.2, -0.3, 1.0]],
        "conflict_fraction": 1 / 3,
        "val": {"a": {"accuracy": 0.75}},
    }
    out = record_scalars(record, ["a", "b", "c"])
    assert math.isnan(out.pop("loss/b"))
    assert out == {
        "loss/a": 0.5,
        "loss/c": 2.0,
        "weight/a": 1.0,
        "weight/b": 1.0,
        "weight/c": 1.0,
        "skipped": 1.0,
        "cosine/a-b": 0.1,
        "cosine/a-c": 0.2,
        "cosine/b-c": -0.3,
        "conflict_fraction": 1 / 3,
        "val/a/accuracy": 0.75,
    }


def test_event_file_holds_the_metrics_jsonl_values(tmp_path, small_data):
    pytest.importorskip("tensorboardX")
    # Diagnostics at every step: one compiled step (the plain one is never called).
    schedule = {"steps": 6, "eval_every": 3, "log_every": 3, "diagnostics_every": 1}
    config = SMALL.replace({"schedule": schedule, "method.name": "ew"})
    summary = run(config.replace({"workdir": str(tmp_path)}), data=small_data)
    assert summary["tensorboard"] is True
    tb = read_scalars(tmp_path / "tb")
    records = read_jsonl(tmp_path / "metrics.jsonl")
    tasks = summary["tasks"]
    steps = [r for r in records if "losses" in r]
    evals = [r for r in records if "val" in r]
    diag = [r for r in records if "cosine" in r]
    assert len(tasks) >= 2 and steps and evals and diag
    f32 = lambda v: float(np.float32(v))
    for task in tasks:
        # Event files store float32: the jsonl value rounded to float32 is written exactly.
        assert tb[f"loss/{task}"] == {r["step"]: f32(r["losses"][task]) for r in steps}
        assert tb[f"weight/{task}"] == {r["step"]: f32(r["weights"][task]) for r in steps}
        assert tb[f"grad_norm/{task}"] == {r["step"]: f32(r["grad_norms"][task]) for r in diag}
        for metric in evals[0]["val"][task]:
            expected = {r["step"]: f32(r["val"][task][metric]) for r in evals}
            assert tb[f"val/{task}/{metric}"] == expected
    for i, a in enumerate(tasks):
        for j in range(i + 1, len(tasks)):
            expected = {r["step"]: f32(r["cosine"][i][j]) for r in diag}
            assert tb[f"cosine/{a}-{tasks[j]}"] == expected
    for key in ("conflict_fraction", "update_norm"):
        assert tb[key] == {r["step"]: f32(r[key]) for r in diag}


def test_disabled_or_without_tensorboardx_no_tb_folder(tmp_path, small_data, monkeypatch):
    tiny = {"schedule": {"steps": 2, "eval_every": 2, "log_every": 1, "diagnostics_every": 0}}
    config = SMALL.replace({**tiny, "tensorboard": False, "workdir": str(tmp_path / "off")})
    summary = run(config, data=small_data)
    assert summary["tensorboard"] is False
    assert (tmp_path / "off" / "metrics.jsonl").is_file()
    assert not (tmp_path / "off" / "tb").exists()
    # Without tensorboardX the runner gets no writer (and records "tensorboard": false).
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` fail
    assert open_tensorboard(tmp_path / "tb", ["a", "b"]) is None
    assert not (tmp_path / "tb").exists()


# Writes records through both writers, as the runner does, then dies by SIGKILL. Loaded from
# their files, the two modules need neither JAX nor the rest of mtljax: the process is quick.
KILLED_WRITER = """
import importlib.util, os, signal, sys

def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(sys.argv[1], name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

tensorboard, metrics_log = load("tensorboard"), load("metrics_log")
out = sys.argv[2]
jsonl = metrics_log.JsonlWriter(os.path.join(out, "metrics.jsonl"))
tb = tensorboard.TensorBoardWriter(os.path.join(out, "tb"), ["a", "b"], purge_step=int(sys.argv[3]))
for step in range(1, 12):
    record = {"step": step, "losses": {"a": 1 / step, "b": None}, "cosine": [[1, -0.5], [-0.5, 1]]}
    jsonl.write(record)
    tb.write(record)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_keeps_every_logged_step_in_its_event_file(tmp_path):
    """SIGKILL right after the last write: the event file holds what metrics.jsonl holds."""
    pytest.importorskip("tensorboardX")
    package = Path(__file__).parents[1] / "mtljax"
    command = [sys.executable, "-c", KILLED_WRITER, str(package), str(tmp_path), "3"]
    assert subprocess.run(command, timeout=60).returncode == -signal.SIGKILL
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 12))
    tb = read_scalars(tmp_path / "tb")
    assert tb["loss/a"] == {r["step"]: float(np.float32(r["losses"]["a"])) for r in records}
    assert sorted(tb["loss/b"]) == list(range(1, 12))
    assert all(math.isnan(v) for v in tb["loss/b"].values())
    assert tb["cosine/a-b"] == dict.fromkeys(range(1, 12), -0.5)
    start = read_events(tmp_path / "tb")[1]
    assert (start.step, start.session_log.status) == (3, 1)  # SessionLog.START: purge from 3
