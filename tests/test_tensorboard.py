"""TensorBoard event files: the same scalars as ``metrics.jsonl``, and nothing without the extra."""

import math
import struct
import sys

import numpy as np
import pytest

from mtljax.config import RunConfig
from mtljax.metrics_log import read_jsonl
from mtljax.run import run
from mtljax.tensorboard import record_scalars

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


def read_scalars(logdir) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` from every event file in ``logdir``.

    An event file is a sequence of TFRecords: ``uint64 length``, ``uint32 masked_crc(length
    bytes)``, ``length`` bytes of a serialized ``Event`` proto, ``uint32 masked_crc(data)``,
    all little-endian.
    """
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
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
            event = Event.FromString(data)
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
    summary = run(
        SMALL.replace({"method.name": "pcgrad", "workdir": str(tmp_path)}), data=small_data
    )
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


def test_disabled_writes_no_tb_folder(tmp_path, small_data):
    summary = run(SMALL.replace({"tensorboard": False, "workdir": str(tmp_path)}), data=small_data)
    assert summary["tensorboard"] is False
    assert (tmp_path / "metrics.jsonl").is_file()
    assert not (tmp_path / "tb").exists()


def test_without_tensorboardx_the_run_goes_on(tmp_path, small_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes `import tensorboardX` fail
    summary = run(SMALL.replace({"workdir": str(tmp_path)}), data=small_data)
    assert summary["tensorboard"] is False
    assert read_jsonl(tmp_path / "metrics.jsonl")
    assert not (tmp_path / "tb").exists()
