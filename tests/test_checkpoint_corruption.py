"""Corrupt checkpoints: detected by their checksums, skipped for the newest intact step.

Issue 13: a damaged newest checkpoint (a truncated, missing or bit-flipped data chunk, cut or
emptied metadata, an empty step folder) must not crash a resume nor load silently; the run
resumes from the newest intact step with a one-line warning naming the bad step, and gives the
result of an uninterrupted run. A checkpoint that is intact but belongs to another run (a
different method) is refused with a message that says what changed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures.checkpoints import (
    BACKENDS,
    DAMAGES,
    assert_same_final_checkpoint,
    data_file,
    truncate,
)

from mtljax import checkpoint
from mtljax.checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    CorruptCheckpointError,
    CorruptCheckpointWarning,
)
from mtljax.cli import main
from mtljax.config import RunConfig
from mtljax.metrics_log import read_jsonl
from mtljax.run import run

TARGET = {"w": jnp.zeros(64), "key": jax.random.key(0)}


def saved(step: int) -> dict:
    """The arrays saved at ``step``: they record it."""
    return {"w": jnp.full(64, float(step)), "key": jax.random.key(step)}


def save_steps(directory: Path, backend: str, steps=(10, 20, 30)) -> Checkpointer:
    ckpt = Checkpointer(directory, keep=len(steps), backend=backend)
    for step in steps:
        ckpt.save(step, saved(step), {"step": step})
    return ckpt


def restore_warned(ckpt: Checkpointer, target=TARGET) -> tuple[dict, dict, list[str]]:
    """``restore(target)`` and the messages of the corrupt-checkpoint warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arrays, meta = ckpt.restore(target)
    return arrays, meta, [str(w.message) for w in caught if w.category is CorruptCheckpointWarning]


def assert_restored(arrays: dict, meta: dict, step: int) -> None:
    assert meta["step"] == step
    np.testing.assert_array_equal(arrays["w"], saved(step)["w"])
    np.testing.assert_array_equal(
        jax.random.key_data(arrays["key"]), jax.random.key_data(saved(step)["key"])
    )


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_corrupt_newest_step_falls_back_to_the_newest_intact_one(tmp_path, backend, damage):
    save_steps(tmp_path, backend)
    DAMAGES[damage](tmp_path / "30")
    ckpt = Checkpointer(tmp_path, keep=3, backend=backend)
    arrays, meta, messages = restore_warned(ckpt)
    assert_restored(arrays, meta, 20)
    [message] = messages
    assert "\n" not in message
    assert message.startswith(f"checkpoint step 30 in {tmp_path} is corrupt (")
    assert message.endswith("); resuming from step 20")
    # A resumed run reaches step 30 again: the new save replaces the damaged folder.
    ckpt.save(30, saved(30), {"step": 30})
    arrays, meta, messages = restore_warned(Checkpointer(tmp_path, keep=3, backend=backend))
    assert_restored(arrays, meta, 30)
    assert messages == [] and ckpt.steps() == [10, 20, 30]


@pytest.mark.parametrize("backend", BACKENDS)
def test_reasons_name_the_damaged_file(tmp_path, backend):
    save_steps(tmp_path, backend)
    DAMAGES["truncated data chunk"](tmp_path / "30")
    DAMAGES["truncated metadata"](tmp_path / "20")
    _, meta, messages = restore_warned(Checkpointer(tmp_path, backend=backend))
    assert meta["step"] == 10
    meta_name = "meta.json" if backend == "npz" else "meta/metadata"
    assert [m.split(" is corrupt ")[0] for m in messages] == [
        f"checkpoint step {s} in {tmp_path}" for s in (30, 20)
    ]
    assert "bytes, " in messages[0] and "were saved); resuming from step 10" in messages[0]
    assert f"({meta_name} has 100 bytes, " in messages[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_intact_step_raises_one_clear_error(tmp_path, backend):
    ckpt = save_steps(tmp_path, backend, steps=(10, 20))
    DAMAGES["empty step folder"](tmp_path / "20")
    DAMAGES["flipped bytes in data chunk"](tmp_path / "10")
    with pytest.raises(CorruptCheckpointError) as error:
        ckpt.restore(TARGET)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"No intact checkpoint in {tmp_path} (")
    assert "step 20: the step folder is empty; step 10: " in message
    assert "checksum" in message
    assert list(error.value.reasons) == [20, 10]
    with pytest.raises(CorruptCheckpointError, match="Checkpoint step 10 is corrupt"):
        ckpt.restore(TARGET, step=10)  # an explicit step never falls back


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoints_without_checksums_still_load(tmp_path, backend):
    """Steps saved before checksums existed are read unverified; a read failure is damage."""
    save_steps(tmp_path, backend)
    for step in (10, 20, 30):
        os.remove(tmp_path / str(step) / "checksums.json")
    arrays, meta, messages = restore_warned(Checkpointer(tmp_path, backend=backend))
    assert_restored(arrays, meta, 30)
    assert messages == []
    truncate(data_file(tmp_path / "30"), data_file(tmp_path / "30").stat().st_size // 2)
    arrays, meta, [message] = restore_warned(Checkpointer(tmp_path, backend=backend))
    assert_restored(arrays, meta, 20)
    assert "is unreadable: " in message and message.endswith("resuming from step 20")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_checkpoint_is_an_error_not_a_fallback(tmp_path, backend):
    ckpt = save_steps(tmp_path, backend, steps=(10, 20))

    def check(meta):
        if meta["step"] == 20:
            raise CheckpointMismatchError("refused step 20")

    with pytest.raises(CheckpointMismatchError, match="refused step 20"):
        ckpt.restore(TARGET, check=check)
    with pytest.raises(CheckpointMismatchError, match=r"only in the checkpoint: \['key'\]"):
        ckpt.restore({"w": jnp.zeros(64)})


def test_a_run_resumes_past_a_corrupt_checkpoint_exactly(tmp_path, monkeypatch, small_data):
    """A run stopped at step 20 whose last checkpoint is then damaged: resuming with more steps
    warns, continues from step 10, and ends with the metrics, log and parameters of an
    uninterrupted longer run. A changed config is refused, naming each field and both values."""
    monkeypatch.setattr(checkpoint, "orbax_available", lambda: False)
    schedule = {"steps": 30, "batch_size": 32, "eval_every": 10, "log_every": 5}
    config = RunConfig().replace(
        {
            "data.kwargs.pairs_per_image": 1,
            "model.kwargs.hidden": [16],
            "method.name": "pcgrad",
            "schedule": {**schedule, "diagnostics_every": 0, "checkpoint_every": 10},
        }
    )
    full = run(config.replace({"workdir": str(tmp_path / "full")}), data=small_data)
    part = tmp_path / "part"
    config = config.replace({"workdir": str(part)})
    run(config.replace({"schedule.steps": 20}), data=small_data)
    changed = config.replace({"method.name": "mgda", "optimizer.lr": 0.1})
    with pytest.raises(CheckpointMismatchError) as error:
        run(changed, data=small_data, resume=True)
    assert str(error.value).startswith(f"checkpoint step 20 in {part / 'checkpoints'} was saved")
    assert "method.name: 'pcgrad' in the checkpoint, 'mgda' in this run" in str(error.value)
    assert "optimizer.lr: 0.001 in the checkpoint, 0.1 in this run" in str(error.value)

    DAMAGES["flipped bytes in data chunk"](part / "checkpoints" / "20")
    with pytest.warns(CorruptCheckpointWarning, match=r"step 20 in .*resuming from step 10$"):
        resumed = run(config, data=small_data, resume=True)
    assert resumed["resumed_from"] == 10
    for key in ("val", "test", "best_step", "final_val", "nonfinite_steps"):
        assert resumed[key] == full[key], key
    assert read_jsonl(part / "metrics.jsonl") == read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert Checkpointer(part / "checkpoints").steps() == [10, 20, 30]
    assert_same_final_checkpoint(tmp_path / "full", part, config)
    assert main(["run", "multidigits", "--resume"]) == 2  # no workdir: a usage error
