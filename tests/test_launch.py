"""The multi-process launcher and the multi-host recipe (``experiments/multihost_train.py``)."""

import signal
import subprocess
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
    lines = []
    codes = launch.launch_local([sys.executable, "-c", code], 2, timeout=JOB_TIMEOUT,
                                log=lines.append)
    assert codes == [-signal.SIGTERM, 3]
    assert time.monotonic() - start < 30
    assert lines == ["process 1 failed first (exit code 3); stopping the others"]


# A launcher in a subprocess, its two processes sleeping (each writes its PID first). launch.py
# is loaded from its file: it needs nothing else from mtljax, so the launcher starts quickly.
LAUNCHER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("launch", sys.argv[1])
launch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch)
child = "import os, sys, time; open(sys.argv[1] + os.getenv('MTLJAX_PROCESS_ID'), 'w').write("
child += "str(os.getpid())); time.sleep(60)"
try:
    launch.launch_local([sys.executable, "-c", child, sys.argv[2]], 2, grace_seconds=2)
except launch.LaunchInterrupted as error:
    print(f"{type(error).__name__}: {error}")
"""


def start_launcher(tmp_path):
    """The launcher process and its children's PIDs, once both children run."""
    module = Path(launch.__file__)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(module), str(tmp_path / "pid")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    paths = [tmp_path / f"pid{i}" for i in range(2)]
    end = time.monotonic() + 60
    while not all(p.exists() and p.read_text() for p in paths) and time.monotonic() < end:
        time.sleep(0.05)
    return proc, [int(p.read_text()) for p in paths]


def alive(pid):
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def gone_within(pids, seconds):
    end = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < end:
        time.sleep(0.05)
    return not any(map(alive, pids))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_processes_die_with_a_launcher_killed_by_sigkill(tmp_path, cpu_children):
    proc, pids = start_launcher(tmp_path)
    assert all(map(alive, pids))
    proc.kill()
    proc.wait(timeout=10)
    assert gone_within(pids, 5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(("signum", "what"), [(signal.SIGINT, "interrupted (Ctrl-C)"),
                                               (signal.SIGTERM, "interrupted by SIGTERM")])
def test_interrupted_launcher_stops_its_processes_and_says_so(tmp_path, cpu_children, signum,
                                                              what):
    proc, pids = start_launcher(tmp_path)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert gone_within(pids, 5)
    assert out == f"LaunchInterrupted: {what}: stopped the job's 2 processes\n"
    assert err == "" and proc.returncode == 0  # quiet processes: SIGTERM, not a traceback


def test_cli_prints_one_line_when_interrupted(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise launch.LaunchInterrupted("interrupted (Ctrl-C): stopped the job's 2 processes")

    monkeypatch.setattr(launch, "launch_local", interrupted)
    assert main(["launch", "-n", "2", "--", "true"]) == 130
    assert capsys.readouterr().err == (
        "mtljax: interrupted (Ctrl-C): stopped the job's 2 processes\n"
    )


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
    with pytest.raises(ValueError, match="no program 'no-such-program' "):
        launch.launch_local(["no-such-program", "--flag"], 2)
