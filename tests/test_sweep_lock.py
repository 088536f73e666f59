"""Two sweeps over one folder train each run once; a sweep never plans one run twice."""

import os
import runpy
import subprocess
import sys
import textwrap

import pytest

from mtljax.config import RunConfig
from mtljax.runlock import RunLock, lock_path
from mtljax.sweep import parse_grid, plan_sweep, run_sweep

# One sweep runs in a subprocess, the other in this process: `run` only records who trained
# what, and before returning waits until the *other* sweep has logged a line about that run, so
# the two always meet on each run. With the lock, the other one logs "being trained by another
# process"; without it, the other one would train the run as well (and the wait times out).
SWEEP_PROCESS = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    from mtljax import sweep
    from mtljax.config import RunConfig


    def sweep_as(root, me, other):
        def log(line):
            with open(root / f"log{me}", "a") as f:
                f.write(line + "\\n")

        def fake_run(config, **kwargs):
            name = os.path.relpath(config.workdir, root / "sweep")
            with open(root / "trained", "a") as f:
                f.write(f"{name} {me}\\n")
            end = time.monotonic() + 20
            while time.monotonic() < end:
                path = root / f"log{other}"
                if path.exists() and f"] {name}:" in path.read_text():
                    break
                time.sleep(0.02)
            os.makedirs(config.workdir, exist_ok=True)
            summary = {"config": config.to_dict(), "test": {}}
            Path(config.workdir, "summary.json").write_text(json.dumps(summary))
            return summary

        runs = sweep.plan_sweep(RunConfig(), methods=["ew"], seeds=[0, 1], workdir=root / "sweep")
        data = {sweep._dataset_key(runs[0].config): None}
        own, sweep.run = sweep.run, fake_run
        try:
            return sweep.run_sweep(runs, data=data, log=log)
        finally:
            sweep.run = own


    if __name__ == "__main__":
        sweep_as(Path(sys.argv[1]), "child", "parent")
    """
)


def test_two_sweeps_started_at_once_train_each_run_once(tmp_path):
    script = tmp_path / "sweep_process.py"
    script.write_text(SWEEP_PROCESS)
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stderr=subprocess.PIPE, text=True
    )
    sweep_as = runpy.run_path(str(script), run_name="helper")["sweep_as"]
    result = sweep_as(tmp_path, "parent", "child")
    assert child.wait(timeout=120) == 0, child.stderr.read()
    pairs = [line.split() for line in (tmp_path / "trained").read_text().splitlines()]
    assert sorted(name for name, _ in pairs) == ["ew/seed0", "ew/seed1"]  # once, by one sweep
    trained = dict(pairs)
    assert result.ran == [n for n, who in trained.items() if who == "parent"]
    assert result.busy == [n for n, who in trained.items() if who == "child"]
    for name, who in trained.items():
        other = "child" if who == "parent" else "parent"
        lines = (tmp_path / f"log{other}").read_text().splitlines()
        line = next(x for x in lines if f"] {name}:" in x)
        assert "being trained by another process (PID " in line and line.endswith("skipped")
    assert not list((tmp_path / "sweep").rglob("*.lock"))  # released and removed


def fake_run(calls):
    def run(config, **kwargs):
        calls.append(config.workdir)
        os.makedirs(config.workdir, exist_ok=True)
        return {"test": {}}

    return run


def test_a_locked_run_is_skipped_and_a_stale_lock_file_is_taken(tmp_path, monkeypatch):
    from mtljax import sweep

    calls = []
    monkeypatch.setattr(sweep, "run", fake_run(calls))
    monkeypatch.setattr(sweep.experiment, "load_data", lambda config: None)
    runs = plan_sweep(RunConfig(), methods=["ew"], seeds=[0, 1], workdir=tmp_path)
    held = RunLock(lock_path(runs[0].config.workdir))
    assert held.acquire()  # flock: a second open file is turned away, even in this process
    # A lock file left behind by a killed sweep: the file exists but nobody holds its lock.
    stale = tmp_path / "ew" / "seed1.lock"
    stale.write_text("999999\n")
    lines = []
    result = run_sweep(runs, log=lines.append)
    held.release()
    assert result.busy == ["ew/seed0"] and result.ran == ["ew/seed1"]
    assert lines[0] == (
        f"[1/2] ew/seed0: being trained by another process (PID {os.getpid()}), skipped"
    )
    assert calls == [runs[1].config.workdir] and not stale.exists()


def test_a_run_that_cannot_be_locked_fails_alone(tmp_path, monkeypatch):
    from mtljax import sweep

    calls = []
    monkeypatch.setattr(sweep, "run", fake_run(calls))
    monkeypatch.setattr(sweep.experiment, "load_data", lambda config: None)
    (tmp_path / "ew").write_text("a file where the sweep wants a folder")
    runs = plan_sweep(RunConfig(), methods=["ew", "uw"], seeds=[0], workdir=tmp_path)
    lines = []
    result = run_sweep(runs, log=lines.append)
    assert list(result.failed) == ["ew/seed0"] and result.ran == ["uw/seed0"]
    assert lines[0].startswith("[1/2] ew/seed0: FAILED cannot lock the run: [Errno")


def test_a_run_is_never_planned_twice(tmp_path):
    base = RunConfig()
    with pytest.raises(ValueError, match=r"^--seeds lists 0 twice; each value is one run\.$"):
        plan_sweep(base, methods=["ew"], seeds=[0, 1, 0], workdir=tmp_path)
    with pytest.raises(ValueError, match="--methods lists 'ew' twice"):
        plan_sweep(base, methods=["ew", "pcgrad", "ew"], seeds=[0], workdir=tmp_path)
    with pytest.raises(ValueError, match=r"--grid method.kw.c lists 0.2 twice"):
        parse_grid(["method.kw.c=0.2,0.4,0.20"])
    # Values that differ only in characters a folder name cannot hold.
    grid = {"method.kw.c": ["a b", "a/b"]}
    with pytest.raises(ValueError, match=r"differing in \['method.kw.c'\]\) would share"):
        plan_sweep(base, methods=["cagrad"], seeds=[0], workdir=tmp_path, grid=grid)
