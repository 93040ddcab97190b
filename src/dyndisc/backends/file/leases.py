"""Lease files: an owner renewing one and a reader removing an expired one, never interleaved.

A lease is live while ``mtime + ttl`` of its file is in the future. Its owner renews it by setting the mtime
to now; any reader that finds it expired removes the file (renames it to its tombstone, ``<id>.expired``, so
that a watch can tell an expiry from a revoke, which unlinks it; tombstones are swept after
:data:`TOMBSTONE_SECONDS`), and from then on every reader treats the lease's records as gone and removes
them. Each side is a check and an act (is it still live? set the mtime; is it
expired? bury it), and interleaved they went wrong: a reader that saw the old mtime decided "expired" after
the owner had renewed, and dropped the records of a lease that stayed live (or unlinked the file the owner
had just renewed), leaving a healthy worker with no records until it restarted.

So both sides check and act holding an exclusive ``flock`` on the lease file: its mtime cannot move between
a reader's check and its unlink, nor can a reader remove it between the owner's check and its renewal. Only
a revoke removes a lease file without the lock, since it ends the lease whatever the mtime says (a renewal
it overtakes reports the lease gone). A lease file is never replaced, only renewed in place or removed, and
an id is never reused (63 random bits, created with ``link``, which refuses an existing name), so once a
lease file is gone the lease is over for good, and a reader that finds it gone may remove its records.

``flock`` rather than ``fcntl`` record locks: a flock belongs to the open file, so two stores of one process
exclude each other as two processes do, and the kernel drops it when its process dies. Nobody waits for the
lock: it is held for two system calls, so a busy lock means the lease is being renewed or removed at this
very moment, and a reader treats it as live and looks again shortly (it never removes on a guess), while
the owner retries until the lease's deadline (:class:`~dyndisc.backends.file.store.FileStore`).
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: How long a lease's tombstone says it expired: a watch that hears of its records' removal later than this
#: (one stopped for minutes) says they left.
TOMBSTONE_SECONDS = 120.0


class LeaseBusy(Exception):
    """Someone holds the lease file's lock: it is being renewed or removed right now."""


def _locked(path: Path, act: Callable[[int, os.stat_result], T]) -> T | None:
    """``act(fd, status)`` holding lease file ``path``'s lock; ``None`` if the file is gone (or removed
    before the lock was ours). Raises :class:`LeaseBusy` if the lock is held."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LeaseBusy(str(path)) from None
        info = os.fstat(fd)
        if not info.st_nlink or not stat.S_ISREG(info.st_mode):
            return None  # the reader before us removed it (we opened it just before)
        return act(fd, info)
    finally:
        os.close(fd)  # drops the lock


def deadline_of(info: os.stat_result, ttl: float) -> float:
    """The wall-clock time a lease file with status ``info`` expires, as of its last renewal."""
    return info.st_mtime_ns / 1e9 + ttl


def remove_if_expired(path: Path, ttl: float, tombstone: Path) -> float | None:
    """Remove lease file ``path`` if it is expired (to its ``tombstone``), and return ``None`` (also if it is
    gone already); if it was renewed since the caller looked, return its deadline. Raises
    :class:`LeaseBusy`."""

    def act(_fd: int, info: os.stat_result) -> float | None:
        deadline = deadline_of(info, ttl)
        if deadline > time.time():
            return deadline
        _bury(path, tombstone)
        return None

    return _locked(path, act)


def renew(path: Path, ttl: float, tombstone: Path) -> bool:
    """Set lease file ``path``'s mtime to now if the lease is live; whether it did. A lease found expired is
    removed to its ``tombstone`` (it is over: its owner was too late). Raises :class:`LeaseBusy`."""

    def act(fd: int, info: os.stat_result) -> bool:
        if deadline_of(info, ttl) <= time.time():
            _bury(path, tombstone)
            return False
        now = time.time_ns()
        os.utime(fd, ns=(now, now))
        # A revoke takes no lock (it ends the lease whatever its mtime): one that landed meanwhile wins.
        return os.fstat(fd).st_nlink > 0

    return bool(_locked(path, act))


def _bury(path: Path, tombstone: Path) -> None:
    # A rename is as atomic as the unlink it replaces: the lease's name is gone for every reader at once.
    with suppress(FileNotFoundError):  # its owner, who needs no lock to give it up, revoked it
        os.rename(path, tombstone)


def sweep_tombstones(directory: Path, suffix: str) -> None:
    """Remove the tombstones in ``directory`` made more than :data:`TOMBSTONE_SECONDS` ago (the rename that
    made one set its ctime)."""
    old = time.time() - TOMBSTONE_SECONDS
    with suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(suffix):
                with suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_ctime < old:
                        os.unlink(entry.path)


def time_left(path: Path, ttl: float) -> float:
    """Seconds until lease file ``path`` expires, as of its last renewal (0 if it is gone)."""
    try:
        return max(deadline_of(path.stat(), ttl) - time.time(), 0.0)
    except FileNotFoundError:
        return 0.0
