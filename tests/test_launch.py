"""The multi-process launcher and the multi-host recipe (``experiments/multihost_train.py``)."""

import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mtljax import launch
from mtljax.cli import main

RECIPE = Path(__file__).parents[1] / "experiments" / "multihost_train.py"
JOB_TIMEOUT = 180  # seconds; a recipe run takes ~10 s on 2 busy cores


@pytest.fixture
def cpu_children(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for var in (launch.ENV_COORDINATOR, launch.ENV_NUM_PROCESSES, launch.ENV_PROCESS_ID,
                launch.ENV_LOCAL_DEVICES):
        monkeypatch.delenv(var, raising=False)


def test_recipe_two_processes_equal_one(tmp_path, cpu_children):
    """2 processes × 2 devices train to the same parameters as 1 process × 4 devices."""
    def recipe(out):
        return [sys.executable, str(RECIPE), "--steps", "3", "--method", "mgda", "--out", str(out)]

    assert launch.launch_local(recipe(tmp_path / "two.npz"), 2, devices_per_process=2,
                               timeout=JOB_TIMEOUT) == [0, 0]
    assert launch.launch_local(recipe(tmp_path / "one.npz"), 1, devices_per_process=4,
                               timeout=JOB_TIMEOUT) == [0]
    two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert sorted(two.files) == sorted(one.files) and len(one.files) == 6
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_failed_process_stops_its_peers(cpu_children):
    code = ("import os, sys, time\n"
            "if os.environ['MTLJAX_PROCESS_ID'] == '1': sys.exit(3)\n"
            "time.sleep(60)")
    start = time.monotonic()
    codes = launch.launch_local([sys.executable, "-c", code], 2, timeout=JOB_TIMEOUT)
    assert codes == [-signal.SIGTERM, 3]
    assert time.monotonic() - start < 30


def test_timeout_stops_every_process(cpu_children):
    with pytest.raises(TimeoutError, match="timeout of 1.0 s"):
        launch.launch_local([sys.executable, "-c", "import time; time.sleep(60)"], 2, timeout=1.0)


def test_children_see_their_place_in_the_job(cpu_children, monkeypatch):
    """The job variables reach each process; a forced device count leaves XLA_FLAGS."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_dump_to=x")
    code = ("import os, sys\n"
            "e = os.environ\n"
            "ok = (e['MTLJAX_NUM_PROCESSES'] == '3' and e['MTLJAX_LOCAL_DEVICES'] == '2'\n"
            "      and e['MTLJAX_COORDINATOR'].startswith('127.0.0.1:')\n"
            "      and e['XLA_FLAGS'] == '--xla_dump_to=x')\n"
            "sys.exit(0 if ok else 1)")
    assert launch.launch_local([sys.executable, "-c", code], 3, devices_per_process=2,
                               timeout=JOB_TIMEOUT) == [0, 0, 0]


def test_cli_launch_returns_the_failing_exit_code(cpu_children):
    code = "import os, sys; sys.exit(2 * int(os.environ['MTLJAX_PROCESS_ID']))"
    assert main(["launch", "-n", "2", "--", sys.executable, "-c", code]) == 2
    assert main(["launch", "-n", "2", "--", sys.executable, "-c", "pass"]) == 0


def test_initialize_from_env(cpu_children, monkeypatch):
    assert launch.initialize_from_env() is False  # no job: a single process
    monkeypatch.setenv(launch.ENV_COORDINATOR, "127.0.0.1:1")
    with pytest.raises(ValueError, match="MTLJAX_NUM_PROCESSES, MTLJAX_PROCESS_ID is not"):
        launch.initialize_from_env()


def test_launch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_processes must be ≥ 1, got 0"):
        launch.launch_local(["true"], 0)
    with pytest.raises(ValueError, match="needs a command"):
        launch.launch_local([], 2)
