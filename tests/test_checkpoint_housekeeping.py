"""Checkpoint housekeeping across digit boundaries: ordering, pruning with ``keep``, latest.

Step folders are named by their decimal step, so any code that orders them as strings puts
``10`` before ``9`` and ``100`` before ``99``. For both formats (orbax and the npz fallback):
``steps()`` is numerically ascending, ``latest_step()`` is the largest step, a restore without
``step`` reads the newest checkpoint, and pruning with ``keep`` deletes the oldest steps and
never the newest, including across 9 → 10 and 99 → 100.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from fixtures.checkpoints import BACKENDS

from mtljax.checkpoint import Checkpointer

TARGET = {"w": jnp.zeros(3)}


def save_steps(directory, backend, steps, keep):
    """Saves ``steps`` in order (arrays and meta record the step); returns the Checkpointer."""
    ckpt = Checkpointer(directory, keep=keep, backend=backend)
    for step in steps:
        ckpt.save(step, {"w": jnp.full(3, float(step))}, {"step": step})
    return ckpt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "steps, keep",
    [
        ([8, 9, 10, 11], 2),
        ([7, 8, 9, 10], 3),
        ([98, 99, 100, 101], 2),
        ([9, 10, 99, 100, 101], 3),
    ],
)
def test_pruning_keeps_the_newest_across_digit_boundaries(tmp_path, backend, steps, keep):
    ckpt = save_steps(tmp_path, backend, steps, keep)
    kept = sorted(steps)[-keep:]
    assert ckpt.steps() == kept
    assert ckpt.latest_step() == max(steps)
    reopened = Checkpointer(tmp_path, keep=keep, backend=backend)
    assert reopened.steps() == kept and reopened.latest_step() == max(steps)
    arrays, meta = reopened.restore(TARGET)
    assert meta["step"] == max(steps)
    assert arrays["w"].tolist() == [float(max(steps))] * 3
    arrays, meta = reopened.restore(TARGET, step=kept[0])
    assert meta["step"] == kept[0] and arrays["w"].tolist() == [float(kept[0])] * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_one_never_deletes_the_newest(tmp_path, backend):
    ckpt = Checkpointer(tmp_path, keep=1, backend=backend)
    for step in (1, 5, 9, 10, 99, 100, 1000):
        ckpt.save(step, {"w": jnp.full(3, float(step))}, {"step": step})
        assert ckpt.steps() == [step]
        assert ckpt.latest_step() == step
        assert ckpt.restore(TARGET)[1]["step"] == step


@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_are_numerically_ordered(tmp_path, backend):
    """Saved out of order and without pruning, ``steps()`` is numerically ascending."""
    ckpt = save_steps(tmp_path, backend, [100, 9, 10, 99, 2], keep=10)
    assert ckpt.steps() == [2, 9, 10, 99, 100]
    assert ckpt.latest_step() == 100
    assert Checkpointer(tmp_path, backend=backend).restore(TARGET)[1]["step"] == 100


def test_empty_directory(tmp_path):
    ckpt = Checkpointer(tmp_path / "none", backend="npz")
    assert ckpt.steps() == [] and ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError):
        ckpt.restore(TARGET)
