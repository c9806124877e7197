"""The lock on a node's home that `govnode run` holds while it serves.

On SQLite a node is one process: the journal's writer thread, the write queue's turn order and the
replay claims held in memory all assume that no other process serves the same file. `govnode run` on
an SQLite home therefore holds the home's lock exclusively, and a second `govnode run` is refused. On
PostgreSQL any number of workers serve one node (the database decides what is shared), so each holds
the lock shared: they exclude only the commands that must not run beside a serving node.

The lock is `flock(2)` on a file in the home: the kernel releases it when the process holding it dies,
however it dies (kill -9 included), so a crashed node never leaves a stale lock behind. Workers forked
by `govnode run --workers N` inherit the open file, so the lock is held while any of them runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "govnode.lock"


class HomeBusy(Exception):
    """A node serves this home, and the command asked for would write under its feet (one line)."""


class HomeLock:
    def __init__(self, home: Path) -> None:
        self.path = Path(home) / LOCK_FILE
        self._fd: int | None = None
        self._exclusive = False

    def hold(self, exclusive: bool) -> bool:
        """Take the lock without waiting; False if a conflicting holder has it. Kept until `release` (or
        until this process and every worker it forked have exited)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if exclusive:  # the pid, for the refusal of the next command (a shared holder is one of many)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self._exclusive = fd, exclusive
        return True

    def holder(self) -> str:
        """Who holds the lock exclusively, as the refusal names it ("pid N"), or "" when not known."""
        try:
            pid = self.path.read_text(encoding="ascii").strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        if self._fd is not None:
            if self._exclusive:  # the pid named a holder that is going away
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "HomeLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_for_serving(home: Path, sqlite: bool) -> HomeLock:
    """The lock `govnode run` keeps while it serves: exclusive on SQLite (one process per node), shared on
    PostgreSQL (any number of workers). Raises HomeBusy when another process serves the home."""
    lock = HomeLock(home)
    if lock.hold(exclusive=sqlite):
        return lock
    if sqlite:
        raise HomeBusy(f"a node is already running on {home}{lock.holder()}; an SQLite node is served by one "
                       "process (stop it first, or move the node to PostgreSQL to run several workers)")
    raise HomeBusy(f"{home} is locked by a command that must not run beside a serving node (govnode join); "
                   "try again when it has finished")


def refuse_if_serving(home: Path, command: str) -> HomeLock:
    """For a command that writes what a running node holds in memory (its trust state): hold the home
    exclusively while the command runs, or raise HomeBusy if a node serves it."""
    lock = HomeLock(home)
    if not lock.hold(exclusive=True):
        raise HomeBusy(f"a node is running on {home}{lock.holder()}; stop it before `govnode {command}`")
    return lock


def serving(home: Path) -> bool:
    """Whether a node serves this home now (some process holds the lock)."""
    lock = HomeLock(home)
    if not lock.path.exists():
        return False
    if lock.hold(exclusive=True):
        lock.release()
        return False
    return True
