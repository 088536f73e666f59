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

The launcher's processes never outlive it. Each runs in its own process group, so that
stopping it also stops what it started; on Linux each also asks the kernel
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``) to be killed when the launcher dies, even by SIGKILL.
When the launcher gets Ctrl-C, SIGTERM or SIGHUP, it stops every process group (SIGTERM,
then SIGKILL after a grace period) and raises :class:`LaunchInterrupted`, whose one-line
message says what happened (and which process had failed first, if one had). Elsewhere than
Linux, a launcher killed by SIGKILL leaves its processes running: stop it with SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence

ENV_COORDINATOR = "MTLJAX_COORDINATOR"
ENV_NUM_PROCESSES = "MTLJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MTLJAX_PROCESS_ID"
ENV_LOCAL_DEVICES = "MTLJAX_LOCAL_DEVICES"
_FORCED_DEVICES_FLAG = "--xla_force_host_platform_device_count"
# Run before the command, in its process: asks Linux to SIGKILL it when the launcher (argv[1])
# dies (prctl(PR_SET_PDEATHSIG = 1, SIGKILL), kept across exec), dies at once if the launcher
# already has, then becomes the command. A trampoline rather than a `preexec_fn`, which would
# run Python in a child forked from a multithreaded parent (JAX's). The kernel sends the signal
# when the *thread* that started the process ends: launch_local waits in that thread.
_DIE_WITH_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])"
)
# Signals after which the launcher stops its processes instead of dying at once.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class LaunchInterrupted(KeyboardInterrupt):
    """The launcher was interrupted (Ctrl-C, SIGTERM, SIGHUP) and stopped its processes; the
    message is one line (``mtljax launch`` prints it, and exits with status 130)."""


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
    env.update(
        {
            ENV_COORDINATOR: coordinator,
            ENV_NUM_PROCESSES: str(num_processes),
            ENV_PROCESS_ID: str(process_id),
        }
    )
    if devices_per_process is not None:
        env[ENV_LOCAL_DEVICES] = str(devices_per_process)
        flags = [
            f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_FORCED_DEVICES_FLAG)
        ]
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
    log: Callable[[str], None] | None = None,
) -> list[int]:
    """Runs ``command`` as ``num_processes`` processes of one job on this machine.

    Every process gets the ``MTLJAX_*`` variables (coordinator on ``127.0.0.1:port``, a free
    port by default). When one process fails (non-zero exit), ``log`` gets one line naming it
    (``"process 1 failed first (exit code 3); stopping the others"``; default: standard
    error) and the others are stopped (SIGTERM to their process groups, then SIGKILL after
    ``grace_seconds``) instead of waiting for them; the same happens to all of them after
    ``timeout`` seconds, and ``TimeoutError`` is raised. The processes die with the launcher
    (see the module docstring).

    Returns:
      The exit codes, by process id (negative: ended by that signal).

    Raises:
      LaunchInterrupted: Ctrl-C, SIGTERM or SIGHUP reached the launcher (its processes were
        stopped first).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be ≥ 1, got {num_processes}.")
    if not command:
        raise ValueError("launch_local needs a command to run.")
    if shutil.which(command[0]) is None:
        raise ValueError(f"launch: no program {command[0]!r} (not a file, not on PATH).")
    log = log or _to_stderr
    coordinator = f"127.0.0.1:{free_port() if port is None else port}"
    procs: list[subprocess.Popen] = []
    failed: list[int] = []  # process ids in the order their failure was seen
    try:
        with _stop_signals_interrupt():
            argv = _tied_to_this_process(command)
            for i in range(num_processes):
                env = process_env(
                    i, num_processes, coordinator, devices_per_process=devices_per_process
                )
                procs.append(subprocess.Popen(argv, env=env, process_group=0))
            deadline = None if timeout is None else time.monotonic() + timeout
            timed_out = _wait(procs, failed, deadline, log)
            _stop(procs, grace_seconds)
    except BaseException as error:  # never leave a process behind, whatever stopped us
        with _signals_ignored():  # a second Ctrl-C must not cut the stopping short
            _stop(procs, grace_seconds)
        if isinstance(error, KeyboardInterrupt):
            raise LaunchInterrupted(_interrupted(error, procs, failed)) from None
        raise
    if timed_out:
        raise TimeoutError(
            f"The job ran past its timeout of {timeout} s; its processes were stopped."
        )
    return [p.returncode for p in procs]


def _wait(
    procs: list[subprocess.Popen],
    failed: list[int],
    deadline: float | None,
    log: Callable[[str], None],
) -> bool:
    """Polls until every process has exited or one failed (appended to ``failed``, named in
    ``log``); returns whether ``deadline`` passed first."""
    while None in (codes := [p.poll() for p in procs]):
        new = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if new:
            failed += new
            log(f"process {new[0]} failed first (exit code {codes[new[0]]}); stopping the others")
            return False
        if deadline is not None and time.monotonic() > deadline:
            return True
        time.sleep(0.1)
    failed += [i for i, code in enumerate(codes) if code != 0]
    return False


def _interrupted(
    interrupt: KeyboardInterrupt, procs: list[subprocess.Popen], failed: list[int]
) -> str:
    """The one-line message of :class:`LaunchInterrupted`."""
    what = str(interrupt) or "interrupted (Ctrl-C)"
    first = f"process {failed[0]} had failed first; " if failed else ""
    return f"{what}: {first}stopped the job's {len(procs)} processes"


def _to_stderr(line: str) -> None:
    print(f"mtljax launch: {line}", file=sys.stderr)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """While inside, :data:`STOP_SIGNALS` raise ``KeyboardInterrupt`` (as SIGINT does), so
    that the launcher stops its processes before it exits. Signal handlers can only be set
    from the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        del frame
        raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, interrupt) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """While inside, SIGINT and :data:`STOP_SIGNALS` are ignored (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, *STOP_SIGNALS)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _tied_to_this_process(command: Sequence[str]) -> list[str]:
    """``command``, started through :data:`_DIE_WITH_LAUNCHER` where Linux's ``prctl`` is
    available (elsewhere, as it is)."""
    if not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "prctl"):
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_LAUNCHER, str(os.getpid()), *command]


def _stop(procs: list[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM to the process group of every running process, SIGKILL after the grace."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        _signal_group(p, signal.SIGTERM)
    end = time.monotonic() + grace_seconds
    for p in running:
        try:
            p.wait(timeout=max(end - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:  # exited (and its group emptied) since it was polled
        pass
