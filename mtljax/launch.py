"""Multi-process jobs: a local launcher and the matching initialisation from the environment.

A multi-host run is one Python program started once per process; the processes find each other
through a coordinator (``jax.distributed``). Each process learns its place from four
environment variables:

* ``MTLJAX_COORDINATOR`` — ``host:port`` of process 0's coordinator service;
* ``MTLJAX_NUM_PROCESSES`` and ``MTLJAX_PROCESS_ID`` (0-based);
* ``MTLJAX_LOCAL_DEVICES`` — optional: force that many CPU devices in each process.

:func:`launch_local` sets them for N processes on this machine (a CPU rehearsal of a cluster
job, or one process per GPU of a node); on a cluster, set them per host, or let JAX read the
scheduler's own variables (SLURM, Open MPI, Cloud TPU pods) with ``auto=True``.
:func:`initialize_from_env` is the one call a training script makes before any other JAX call.
See ``docs/performance.md`` ("Multi-host") and ``experiments/multihost_train.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

ENV_COORDINATOR = "MTLJAX_COORDINATOR"
ENV_NUM_PROCESSES = "MTLJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MTLJAX_PROCESS_ID"
ENV_LOCAL_DEVICES = "MTLJAX_LOCAL_DEVICES"
_FORCED_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def initialize_from_env(
    *, auto: bool = False, heartbeat_timeout_seconds: int = 10, initialization_timeout: int = 60
) -> bool:
    """Joins the multi-process job the environment describes; returns whether there is one.

    With ``MTLJAX_COORDINATOR`` set, joins through
    :func:`mtljax.parallel.initialize_distributed`. Otherwise, with ``auto=True``, calls
    ``jax.distributed.initialize()`` without arguments, which reads a cluster scheduler's
    variables (SLURM, Open MPI, Cloud TPU). Otherwise the program runs as a single process.
    A dead peer aborts the survivors after ``heartbeat_timeout_seconds``.
    """
    import jax

    from mtljax import parallel

    if ENV_COORDINATOR in os.environ:
        missing = [v for v in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if v not in os.environ]
        if missing:
            raise ValueError(f"{ENV_COORDINATOR} is set but {', '.join(missing)} is not.")
        devices = os.environ.get(ENV_LOCAL_DEVICES)
        parallel.initialize_distributed(
            os.environ[ENV_COORDINATOR],
            int(os.environ[ENV_NUM_PROCESSES]),
            int(os.environ[ENV_PROCESS_ID]),
            local_device_count=None if devices is None else int(devices),
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )
        return True
    if auto:
        jax.distributed.initialize(
            initialization_timeout=initialization_timeout,
            heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        )
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_env(
    process_id: int,
    num_processes: int,
    coordinator: str,
    *,
    devices_per_process: int | None = None,
    base: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of process ``process_id``: ``base`` (default: this one's) plus the job.

    With ``devices_per_process``, a forced host device count in ``XLA_FLAGS`` is removed: the
    process sets its own device count (``jax_num_cpu_devices``), and the two must not disagree.
    """
    env = dict(os.environ if base is None else base)
    env.update({
        ENV_COORDINATOR: coordinator,
        ENV_NUM_PROCESSES: str(num_processes),
        ENV_PROCESS_ID: str(process_id),
    })
    if devices_per_process is not None:
        env[ENV_LOCAL_DEVICES] = str(devices_per_process)
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(
            _FORCED_DEVICES_FLAG)]
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def launch_local(
    command: Sequence[str],
    num_processes: int,
    *,
    devices_per_process: int | None = None,
    port: int | None = None,
    timeout: float | None = None,
    grace_seconds: float = 5.0,
) -> list[int]:
    """Runs ``command`` as ``num_processes`` processes of one job on this machine.

    Every process gets the ``MTLJAX_*`` variables (coordinator on ``127.0.0.1:port``, a free
    port by default). When one process fails (non-zero exit), the others are stopped (SIGTERM,
    then SIGKILL after ``grace_seconds``) instead of waiting for it; the same happens to all of
    them after ``timeout`` seconds, and ``TimeoutError`` is raised.

    Returns:
      The exit codes, by process id (negative: ended by that signal).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be ≥ 1, got {num_processes}.")
    if not command:
        raise ValueError("launch_local needs a command to run.")
    coordinator = f"127.0.0.1:{free_port() if port is None else port}"
    procs = [
        subprocess.Popen(list(command), env=process_env(
            i, num_processes, coordinator, devices_per_process=devices_per_process))
        for i in range(num_processes)
    ]
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while None in (codes := [p.poll() for p in procs]):
            failed = any(code not in (None, 0) for code in codes)
            if failed or (deadline is not None and time.monotonic() > deadline):
                _stop(procs, grace_seconds)
                if not failed:
                    raise TimeoutError(
                        f"The job ran past its timeout of {timeout} s; its processes were "
                        "stopped."
                    )
                break
            time.sleep(0.1)
    finally:
        _stop(procs, grace_seconds)
    return [p.returncode for p in procs]


def _stop(procs: list[subprocess.Popen], grace_seconds: float) -> None:
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace_seconds
    for p in running:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
