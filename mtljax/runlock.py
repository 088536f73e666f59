"""An exclusive per-run lock, so that two sweeps over one folder never train the same run.

A sweep (:func:`mtljax.sweep.run_sweep`) takes ``<run folder>.lock`` (beside the run folder,
so that clearing the folder for a fresh run never deletes it) before it trains a run, and
skips the run when another process holds it. The lock is ``flock(2)`` on that file
(``LOCK_EX | LOCK_NB``): the kernel releases it when its process exits, however it exits
(SIGKILL included), so a lock file left behind by a dead process is stale by construction and
the next sweep simply takes it. The holder writes its PID into the file for the message of the
process that is turned away, and deletes the file when it is done.

Deleting a lock file races with a process that opened it just before: that process would lock
a file no longer in the folder while a third creates and locks a new one. So :meth:`acquire`
checks, once it holds the lock, that the path still names the file it locked, and starts over
when it does not. ``flock`` works on local file systems and on NFS (Linux ≥ 2.6.12 maps it to
POSIX byte-range locks there).
"""

from __future__ import annotations

import fcntl
import os


def lock_path(run_folder: str | os.PathLike) -> str:
    """``runs/sweep/ew/seed0`` -> ``runs/sweep/ew/seed0.lock``."""
    return os.path.normpath(os.fspath(run_folder)) + ".lock"


class RunLock:
    """A non-blocking exclusive lock on one file, held by this process until :meth:`release`.

    Example:
      >>> import tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "seed0.lock")
      >>> first, second = RunLock(path), RunLock(path)
      >>> first.acquire(), second.acquire()
      (True, False)
      >>> first.release(); second.acquire()
      True
      >>> second.release()
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Takes the lock; ``False`` (and nothing held) when another holder has it."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if _same_file(self.path, fd):
                break
            os.close(fd)  # its holder deleted it after we opened it: lock the new file
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """``"PID 1234"`` of the process that holds the lock (as it wrote it), or ``"a process
        that has not written its PID yet"``."""
        try:
            with open(self.path, encoding="utf-8") as f:
                pid = f.read().strip()
        except FileNotFoundError:
            pid = ""
        return f"PID {pid}" if pid else "a process that has not written its PID yet"

    def release(self) -> None:
        """Deletes the lock file and releases the lock (deleting first: see the module
        docstring)."""
        if self._fd is None:
            return
        os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _same_file(path: str, fd: int) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
