"""One job per OUTPUT_DIR: ``OUTPUT_DIR/.lock``, an exclusive ``fcntl.flock``.

The kernel drops a flock when the last file descriptor on it closes, so the lock goes with its holder however
the holder ends (exit, exception, SIGKILL, OOM kill; a node that dies takes its local locks with it).  The file
itself is left behind and holds a line naming the last holder, ``host=<h> pid=<p> slurm_job=<id>``, which the
next job reads when the lock is taken.

* A second job on a locked OUTPUT_DIR: :class:`OutputDirLocked`, one line naming the holder (main.py: exit 2).
* A Slurm requeue of the same job id (its previous run is still writing its preemption checkpoint or
  exiting): waits for the lock, up to ``wait_s`` seconds.
* One lock per job: main.py takes it on global rank 0 only (multi-node jobs lock once).
* Forked children (data-loader workers) close their copy of the descriptor, so a worker that outlives its
  parent for a moment does not keep the lock.
* flock on NFS: Linux emulates it with POSIX locks (since 2.6.12); on a file system without locks the lock
  cannot be taken and the job stops saying so (main.py: one line, exit 2): use an OUTPUT_DIR that supports them.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from typing import Optional

LOCK_NAME = ".lock"
_held = []  # descriptors this process holds (closed in forked children)


class OutputDirLocked(RuntimeError):
    """OUTPUT_DIR is held by another job."""


def describe_holder(env: Optional[dict] = None) -> str:
    env = os.environ if env is None else env
    return f"host={socket.gethostname()} pid={os.getpid()} slurm_job={env.get('SLURM_JOB_ID', '-')}"


def _parse(text: str) -> dict:
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


class OutputDirLock:
    """``OutputDirLock(path).acquire()`` holds the lock until :meth:`release` or the process ends."""

    def __init__(self, output_dir: str, wait_s: float = 600.0, poll_s: float = 1.0):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.wait_s = float(wait_s)
        self.poll_s = float(poll_s)
        self.fd: Optional[int] = None

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "unknown holder"
        except OSError:
            return "unknown holder"

    def acquire(self) -> "OutputDirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._try(fd):
                holder = self.holder()
                job = os.environ.get("SLURM_JOB_ID")
                same_job = job is not None and _parse(holder).get("slurm_job") == job
                if not same_job:
                    raise OutputDirLocked(
                        f"OUTPUT_DIR {self.output_dir} is in use by another job ({holder}; lock {self.path}): "
                        f"wait for it to end, or give this run another OUTPUT_DIR")
                deadline = time.monotonic() + self.wait_s
                while not self._try(fd):  # the previous run of this requeued job is still ending
                    if time.monotonic() > deadline:
                        raise OutputDirLocked(
                            f"OUTPUT_DIR {self.output_dir} is still held by an earlier run of Slurm job {job} "
                            f"({holder}) after {self.wait_s:.0f} s; lock {self.path}")
                    time.sleep(self.poll_s)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (describe_holder() + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        _held.append(fd)
        return self

    def release(self) -> None:
        if self.fd is not None:
            if self.fd in _held:
                _held.remove(self.fd)
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def _close_in_child() -> None:
    for fd in _held:
        try:
            os.close(fd)  # the parent's descriptor (and lock) is untouched
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)
