"""Checkpoints: exact round trips in both formats, and a killed run that resumes exactly."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures.checkpoints import (
    BACKENDS,
    assert_same_final_checkpoint,
    assert_trees_equal,
    fresh_state,
)

from mtljax import checkpoint
from mtljax.checkpoint import Checkpointer, CheckpointMismatchError, truncate_jsonl
from mtljax.config import RunConfig
from mtljax.metrics_log import read_jsonl
from mtljax.run import experiment

ROOT = Path(__file__).resolve().parents[1]


def advanced_state():
    """A state whose adam moments differ (mu ≠ nu, same shapes) and whose key has moved."""
    config = RunConfig().replace(
        {"model.kwargs.hidden": [16], "method.name": "pcgrad", "method.kw.key": 3}
    )
    state = fresh_state(config)
    tx = experiment.build_optimizer(config.optimizer)
    opt_state = state.opt_state
    for i in range(2):
        grads = jax.tree.map(lambda p, i=i: jnp.full_like(p, 0.1 * (i + 1)), state.params)
        _, opt_state = tx.update(grads, opt_state, state.params)
    key = jax.random.split(state.method_state.key)[0]
    return config, state._replace(
        step=jnp.asarray(7, jnp.int32),
        opt_state=opt_state,
        method_state=state.method_state._replace(key=key),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_state_round_trip(tmp_path, backend):
    config, state = advanced_state()
    extra = {"x64": np.linspace(0, 1, 5, dtype=np.float64)}
    ckpt = Checkpointer(tmp_path, keep=2, backend=backend)
    meta = {"score": math.nan, "low": -math.inf, "iterator": {"epoch": 1, "position": 2}}
    for step in (1, 2, 3):
        ckpt.save(step, {"train_state": state, "extra": extra}, {**meta, "at": step})
    assert ckpt.steps() == [2, 3] and ckpt.latest_step() == 3

    target = {"train_state": fresh_state(config, seed=1), "extra": {"x64": np.zeros(5)}}
    arrays, saved = Checkpointer(tmp_path, backend=backend).restore(target)
    assert_trees_equal(arrays, {"train_state": state, "extra": extra})
    restored_key = arrays["train_state"].method_state.key
    assert jax.dtypes.issubdtype(restored_key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.uniform(restored_key, (3,)), jax.random.uniform(state.method_state.key, (3,))
    )
    assert math.isnan(saved["score"]) and saved["low"] == -math.inf
    assert saved["at"] == 3 and saved["iterator"] == meta["iterator"]
    assert Checkpointer(tmp_path).restore(target, step=2)[1]["at"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_restore_checks_the_target_and_ignores_partial_saves(tmp_path, backend):
    ckpt = Checkpointer(tmp_path, backend=backend)
    ckpt.save(5, {"w": jnp.ones((2, 3)), "k": jax.random.key(0)}, {})
    # What a save killed halfway leaves behind: folders whose names are not integers.
    (tmp_path / ".tmp-9-abc").mkdir()
    (tmp_path / "9.orbax-checkpoint-tmp-123").mkdir()
    assert ckpt.steps() == [5]
    with pytest.raises(CheckpointMismatchError, match=r"step 5 .* \[.w.\]: saved float\d+\[2, 3\]"):
        ckpt.restore({"w": jnp.ones((3, 2)), "k": jax.random.key(0)})
    with pytest.raises(
        CheckpointMismatchError, match=r"step 5 .* at \['k'\]: saved uint32\[2\] \("
    ):
        ckpt.restore({"w": jnp.ones((2, 3)), "k": jnp.zeros(2, jnp.uint32)})
    with pytest.raises(CheckpointMismatchError, match=r"only in the target: \['v'\]"):
        ckpt.restore({"w": jnp.ones((2, 3)), "k": jax.random.key(0), "v": jnp.ones(1)})
    with pytest.raises(FileNotFoundError):
        ckpt.restore({"w": jnp.ones((2, 3))}, step=4)
    with pytest.raises(FileNotFoundError):
        Checkpointer(tmp_path / "empty").restore({})


def test_auto_backend(tmp_path, monkeypatch):
    Checkpointer(tmp_path / "a", backend="npz").save(1, {"w": jnp.ones(2)}, {})
    assert Checkpointer(tmp_path / "a").backend == "npz"  # the directory's format wins
    if checkpoint.orbax_available():
        assert Checkpointer(tmp_path / "b").backend == "orbax"
        with pytest.raises(ValueError, match="npz checkpoints"):
            Checkpointer(tmp_path / "a", backend="orbax")
    monkeypatch.setattr(checkpoint, "orbax_available", lambda: False)
    assert Checkpointer(tmp_path / "c").backend == "npz"
    with pytest.raises(ValueError, match="orbax-checkpoint"):
        Checkpointer(tmp_path / "c", backend="orbax")


def test_truncate_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s}) for s in (1, 10, 20)] + [json.dumps({"step": 20, "val": 1})]
    lines += [json.dumps({"step": 30}), '{"step": 40, "los']  # the last line cut by a kill
    path.write_text("\n".join(lines))
    truncate_jsonl(path, 20)
    assert read_jsonl(path) == [{"step": 1}, {"step": 10}, {"step": 20}, {"step": 20, "val": 1}]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    """The issue's test: SIGKILL ``mtljax run`` mid-training, ``--resume``, compare."""
    steps, every = 150, 50
    args = [
        sys.executable, "-m", "mtljax.cli", "run", "multidigits:pcgrad",
        "--set", f"schedule.steps={steps}", "--set", f"schedule.checkpoint_every={every}",
        "--set", "schedule.eval_every=50", "--set", "model.kwargs.hidden=[64]",
        "--set", "schedule.batch_size=64", "--set", "schedule.diagnostics_every=0",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    procs = []

    def start(workdir, *extra):
        stderr = open(tmp_path / f"{workdir.name}{len(procs)}.err", "w+")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [*args, "--workdir", str(workdir), *extra],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )  # fmt: skip
        )
        return procs[-1], stderr

    def finish(proc, stderr, timeout=120):
        assert proc.wait(timeout=timeout) == 0, (stderr.seek(0), stderr.read()[-2000:])[1]

    try:
        # The reference trains alongside the run that gets killed.
        uninterrupted = start(reference)
        proc, _ = start(killed)
        deadline = time.monotonic() + 120
        while not (killed / "checkpoints" / str(every)).is_dir():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert not (killed / "summary.json").exists()
        assert Checkpointer(killed / "checkpoints").latest_step() < steps
        finish(*start(killed, "--resume"))
        finish(*uninterrupted)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    got = json.loads((killed / "summary.json").read_text())
    want = json.loads((reference / "summary.json").read_text())
    assert 0 < got["resumed_from"] < steps and want["resumed_from"] == 0
    for key in ("val", "test", "best_step", "final_val", "nonfinite_steps"):
        assert got[key] == want[key], key
    assert {**got["config"], "workdir": None} == {**want["config"], "workdir": None}
    records = read_jsonl(killed / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "losses" in r]
    assert len(train_steps) == len(set(train_steps))  # no step logged twice
    assert records == read_jsonl(reference / "metrics.jsonl")
    assert_same_final_checkpoint(reference, killed, RunConfig.from_dict(want["config"]))
