"""The read side of the file store: what is on disk under a root, and which of it is alive.

Every reader (a list, a watch, a create that finds a key taken) treats the records of a missing, expired or
corrupt lease as gone, and whoever notices first removes the expired lease file and then the records. A read
that fails for the reader's own trouble (an I/O error, no file descriptor left) decides nothing: the call
fails with :class:`~dyndisc.BackendUnavailableError`, and no record is taken for gone.
Whether a lease expired is decided under the lease file's lock (:mod:`dyndisc.backends.file.leases`), and a
record is removed only if the file taken still names the dead lease (:func:`~.layout.remove_if`): a renewal
or a write that lands while a reader decides wins. Files dyndisc did not write are skipped with one warning
per version.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from dyndisc._errors import BackendUnavailableError
from dyndisc._events import RemovalReason
from dyndisc.backends.file.layout import (
    CORRUPT,
    EXPIRED_SUFFIX,
    RECORD_MAGIC,
    RECORD_SUFFIX,
    Corrupt,
    FileLayout,
    ForeignFile,
    Record,
    decode_segment,
    read_regular_file,
    remove_if,
)
from dyndisc.backends.file.leases import LeaseBusy, deadline_of, remove_if_expired, sweep_tombstones

log = logging.getLogger("dyndisc.file")

#: Records read between two offers of the GIL to other threads (a scan in a worker thread would otherwise
#: keep the event loop waiting for the interpreter's whole switch interval, several milliseconds, each time).
_GIL_BATCH = 128
#: A temporary file older than this was left by a writer that died mid-write; scans remove it.
STALE_TEMP_SECONDS = 60.0
#: Seconds after which a reader looks again at a lease it found being renewed or removed (its lock held).
BUSY_RECHECK = 0.05
#: A writer's temporary files start with this (every reader skips them; a scan removes a stale one).
TEMP_PREFIX = ".tmp-"
#: A record a reader renamed aside to judge it before removing it (:meth:`Records.remove_record_of`).
GRAVE_PREFIX = ".grave-"


def cannot_read(path: Path, exc: OSError) -> BackendUnavailableError:
    """The error of a read that failed for this process's own trouble (``EIO``, ``EMFILE``, ``EACCES``):
    it says nothing of the file, so nothing is decided from it (no record is taken for gone, and none is
    removed); the call fails, and a watch starts again, as in an outage."""
    return BackendUnavailableError(
        f"cannot read {path} now ({exc.strerror or exc}): nothing was decided from it; try again"
    )


class Records:
    """Reads records and leases under one root, caching what never changes (a lease's TTL)."""

    def __init__(self, layout: FileLayout) -> None:
        self.layout = layout
        self._ttls: dict[int, float] = {}  # a lease's TTL never changes: read its file once
        self._warned: set[tuple[str, int, int]] = set()

    def remember_ttl(self, lease_id: int, ttl: float) -> None:
        """Note the TTL of a lease this process granted (saves reading its file)."""
        self._ttls[lease_id] = ttl

    def ttl_of(self, lease_id: int) -> float | None:
        """The TTL of lease ``lease_id`` (its file is read once), or ``None`` if it is gone or unreadable."""
        ttl = self._ttls.get(lease_id)
        if ttl is None:
            ttl = self._read_ttl(self.layout.lease_path(lease_id))
            if ttl is not None:
                self._ttls[lease_id] = ttl
        return ttl

    def lease_deadline(self, lease_id: int) -> float | None:
        """Wall-clock time lease ``lease_id`` expires, or ``None`` if it is over for good: its file is gone or
        unreadable, or it was expired and this call removed it."""
        if lease_id == 0:
            return float("inf")
        path = self.layout.lease_path(lease_id)
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        ttl = self.ttl_of(lease_id)
        if ttl is None:
            return None
        deadline = deadline_of(info, ttl)
        if deadline > time.time():
            return deadline
        # Expired as of the stat above, which a renewal may have overtaken already: decide again under the
        # lease file's lock, where no renewal can land between the decision and the removal.
        try:
            return remove_if_expired(path, ttl, self.layout.expired_path(lease_id))
        except LeaseBusy:
            # Being renewed (or removed by another reader) right now: live until that is settled.
            return time.time() + BUSY_RECHECK

    def why_gone(self, lease_id: int) -> RemovalReason:
        """Why a record of ``lease_id`` is gone, from the disk now (not from when a watch last looked,
        which a renewal may have overtaken): its lease expired if its file is past its deadline (being
        reaped) or was buried as expired (its tombstone); it left if the lease is live (an unregistration),
        or its file was removed without a tombstone (a revoke)."""
        if not lease_id:
            return RemovalReason.LEFT
        ttl = self.ttl_of(lease_id)
        try:
            info = self.layout.lease_path(lease_id).stat()
        except FileNotFoundError:
            buried = self.layout.expired_path(lease_id).exists()
            return RemovalReason.EXPIRED if buried else RemovalReason.LEFT
        expired = ttl is not None and deadline_of(info, ttl) <= time.time()
        return RemovalReason.EXPIRED if expired else RemovalReason.LEFT

    def _read_ttl(self, path: Path) -> float | None:
        try:
            data, _info = read_regular_file(path)
            ttl = float(json.loads(data)["ttl"])
            if not 0 < ttl < float("inf"):
                raise ValueError(f"TTL {ttl} is not a positive number of seconds")
        except FileNotFoundError:
            return None
        except (ForeignFile, ValueError, KeyError, TypeError) as exc:
            self.warn_once(
                path,
                "lease file %s is unreadable (%s): its records are treated as gone; delete the file",
                path,
                exc,
            )
            return None
        except OSError as exc:
            raise cannot_read(path, exc) from exc
        return ttl

    def read_record(self, path: Path) -> Record | Corrupt | None:
        """The record at ``path``, ``None`` if absent, or ``CORRUPT`` (warned about) if not one of ours."""
        try:
            data, _info = read_regular_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except ForeignFile as exc:
            self.warn_once(path, "skipping unreadable record %s: %s; delete it", path, exc)
            return CORRUPT
        except OSError as exc:
            raise cannot_read(path, exc) from exc
        header, newline, value = data.partition(b"\n")
        try:
            if not (newline and header.startswith(RECORD_MAGIC)):
                raise ValueError("it does not start with the dyndisc record header")
            lease_id = int(header[len(RECORD_MAGIC) :], 16)
        except ValueError as exc:
            self.warn_once(path, "skipping corrupted record %s: %s; delete the file", path, exc)
            return CORRUPT
        return Record(value=value, lease_id=lease_id)

    def live_record(self, path: Path, deadlines: dict[int, float | None]) -> Record | None:
        """The record at ``path`` if its lease is live; a record of a dead lease is removed.

        ``deadlines`` caches lease deadlines for the duration of one scan.
        """
        record = self.read_record(path)
        if not isinstance(record, Record):
            return None
        if record.lease_id not in deadlines:
            deadlines[record.lease_id] = self.lease_deadline(record.lease_id)
        if deadlines[record.lease_id] is None:
            self.remove_record_of(path, record.lease_id)
            return None
        return record

    def walk(self, directory: Path, partial: str) -> Iterator[tuple[str, Record | Corrupt]]:
        """Every record file under ``directory`` whose first segment below it starts with ``partial``."""
        base = self.layout.dir_key(directory)
        if base is None:
            return
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith("."):
                self._remove_stale_temp(entry)
                continue
            is_record = entry.name.endswith(RECORD_SUFFIX)
            name = entry.name[: -len(RECORD_SUFFIX)] if is_record else entry.name
            segment = decode_segment(name)
            if segment is None:
                self.warn_once(Path(entry.path), "ignoring %s: not a file name dyndisc writes", entry.path)
                continue
            if not segment.startswith(partial):
                continue
            if is_record:
                record = self.read_record(Path(entry.path))
                if record is not None:
                    yield base + segment, record
            elif entry.is_dir(follow_symlinks=False):
                yield from self.walk(Path(entry.path), "")
            else:
                self.warn_once(Path(entry.path), "ignoring %s: not a file name dyndisc writes", entry.path)

    def scan(self, prefix: str, under: Path | None = None) -> dict[str, Record]:
        """Every live record whose key starts with ``prefix`` (below directory ``under`` if given)."""
        if under is None:
            under = self.layout.watch_dir(prefix)
            partial = prefix.rpartition("/")[2] if prefix.startswith("/") else ""
        else:
            partial = ""
        # One look per lease for the whole scan: a lease found over stays over (see lease_deadline), and one
        # found live is only reported live, never acted on.
        deadlines: dict[int, float | None] = {}
        found: dict[str, Record] = {}
        for n, (key, record) in enumerate(self.walk(under, partial)):
            if not n % _GIL_BATCH:
                time.sleep(0)  # let the event loop's thread have the GIL: scans run in a worker thread
            if not key.startswith(prefix) or not isinstance(record, Record):
                continue
            if record.lease_id not in deadlines:
                deadlines[record.lease_id] = self.lease_deadline(record.lease_id)
            if deadlines[record.lease_id] is None:
                self.remove_record_of(self.layout.record_path(key), record.lease_id)
            else:
                found[key] = record
        return found

    def rescan(self, prefix: str) -> dict[str, Record]:
        """:meth:`scan`, after sweeping the lease tombstones past their time (a watch's periodic rescan)."""
        sweep_tombstones(self.layout.lease_dir, EXPIRED_SUFFIX)
        return self.scan(prefix)

    def remove_record_of(self, path: Path, lease_id: int) -> None:
        """Remove the record at ``path`` if it (still) belongs to lease ``lease_id``, which is over: a record
        written there by another lease meanwhile stays."""

        def dead(taken: Path) -> bool:
            record = self.read_record(taken)
            return isinstance(record, Record) and record.lease_id == lease_id

        if remove_if(path, GRAVE_PREFIX, dead):
            log.debug("removed %s: its lease %x is gone", path, lease_id)

    def _remove_stale_temp(self, entry: os.DirEntry[str]) -> None:
        temp, grave = entry.name.startswith(TEMP_PREFIX), entry.name.startswith(GRAVE_PREFIX)
        if not (temp or grave):
            return
        with suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            # A record renamed aside keeps its (old) mtime; the rename set its ctime, which stays old only
            # if the reader judging it died.
            made = info.st_ctime if grave else info.st_mtime
            if time.time() - made > STALE_TEMP_SECONDS:
                os.unlink(entry.path)

    def warn_once(self, path: Path, message: str, *args: object) -> None:
        try:
            info = path.stat()
            marker = (str(path), info.st_ino, info.st_mtime_ns)
        except OSError:
            marker = (str(path), 0, 0)
        if marker not in self._warned:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned.add(marker)
            log.warning(message, *args)
