"""Multi-process data parallelism: two local JAX processes equal one, a dead peer fails fast.

Each test starts ``tests/multihost_worker.py`` twice as child processes joined by
``jax.distributed`` on 127.0.0.1 (a fresh port per run, 2 CPU devices each, the parent's
8-device ``XLA_FLAGS`` removed from their environment), and bounds every wait with a timeout.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from multihost_worker import METHODS, train

from mtljax import parallel

WORKER = Path(__file__).with_name("multihost_worker.py")
NUM_PROCESSES = 2
RUN_TIMEOUT = 120  # seconds; a normal run takes ~10 s on 2 busy cores
HEARTBEAT = 3  # seconds, the heartbeat timeout in the dead-peer test
ABORT_MARGIN = 30  # seconds allowed beyond the heartbeat timeout for the survivor to exit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(out_dir: Path, *args: str) -> list[subprocess.Popen]:
    """Starts the workers of one job; worker i writes ``out_dir/process{i}.npz``."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    port = str(free_port())
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--process-id",
                str(i),
                "--num-processes",
                str(NUM_PROCESSES),
                "--port",
                port,
                "--devices-per-process",
                "2",
                "--out",
                str(out_dir / f"process{i}.npz"),
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(NUM_PROCESSES)
    ]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.communicate()


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """Waits for every process; returns (exit code, output) each, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 0.0))
            results.append((p.returncode, out))
    except subprocess.TimeoutExpired:
        stop(procs)
        pytest.fail(f"the workers did not finish within {timeout} s")
    return results


def test_two_processes_equal_one_process(tmp_path):
    for code, out in finish(start_workers(tmp_path), RUN_TIMEOUT):
        assert code == 0, out[-3000:]

    mesh = parallel.data_mesh(jax.devices()[:1])
    single = {}
    for name in METHODS:
        single.update(train(mesh, name))
    for i in range(NUM_PROCESSES):
        multi = dict(np.load(tmp_path / f"process{i}.npz"))
        assert set(multi) == set(single)
        for key, value in single.items():
            np.testing.assert_allclose(multi[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("dead", [0, 1], ids=["coordinator_dies", "peer_dies"])
def test_dead_peer_aborts_survivor(tmp_path, dead):
    """Killing one process makes the other exit non-zero within the heartbeat timeout + margin.

    JAX aborts the survivor (SIGABRT, not a Python exception) once the coordination service
    misses the dead process's heartbeats, so a lost host cannot hang a job.
    """
    procs = start_workers(tmp_path, "--hold", "--heartbeat-timeout", str(HEARTBEAT))
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not all((tmp_path / f"process{i}.npz").exists() for i in range(NUM_PROCESSES)):
            assert all(p.poll() is None for p in procs), "a worker exited before the job was up"
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.1)
        procs[dead].send_signal(signal.SIGKILL)
        start = time.monotonic()
        [(code, out)] = finish([procs[1 - dead]], HEARTBEAT + ABORT_MARGIN)
        elapsed = time.monotonic() - start
    finally:
        stop(procs)
    assert code != 0, out[-3000:]
    assert elapsed < HEARTBEAT + ABORT_MARGIN
