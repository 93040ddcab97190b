"""The read side of the file store: what is on disk under a root, and which of it is alive.

Every reader (a list, a watch, a create that finds a key taken) treats the records of a missing, expired or
unreadable lease as gone, and whoever notices first removes them (only if the file did not change since it
was read) with the expired lease file. Files dyndisc did not write are skipped with one warning per version.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from dyndisc.backends.file.layout import (
    CORRUPT,
    RECORD_MAGIC,
    RECORD_SUFFIX,
    Corrupt,
    FileLayout,
    Record,
    decode_segment,
    read_regular_file,
)

log = logging.getLogger("dyndisc.file")

#: Records read between two offers of the GIL to other threads (a scan in a worker thread would otherwise
#: keep the event loop waiting for the interpreter's whole switch interval, several milliseconds, each time).
_GIL_BATCH = 128
#: A temporary file older than this was left by a writer that died mid-write; scans remove it.
STALE_TEMP_SECONDS = 60.0


class Records:
    """Reads records and leases under one root, caching what never changes (a lease's TTL)."""

    def __init__(self, layout: FileLayout) -> None:
        self.layout = layout
        self._ttls: dict[int, float] = {}  # a lease's TTL never changes: read its file once
        self._warned: set[tuple[str, int, int]] = set()

    def remember_ttl(self, lease_id: int, ttl: float) -> None:
        """Note the TTL of a lease this process granted (saves reading its file)."""
        self._ttls[lease_id] = ttl

    def known_ttl(self, lease_id: int) -> float:
        """The TTL of a lease whose deadline was read (or that this process granted)."""
        return self._ttls[lease_id]

    def lease_deadline(self, lease_id: int) -> float | None:
        """Wall-clock time lease ``lease_id`` expires, or ``None`` if gone (an expired one is removed)."""
        if lease_id == 0:
            return float("inf")
        path = self.layout.lease_path(lease_id)
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        ttl = self._ttls.get(lease_id)
        if ttl is None:
            ttl = self._read_ttl(path)
            if ttl is None:
                return None
            self._ttls[lease_id] = ttl
        deadline = info.st_mtime_ns / 1e9 + ttl
        if deadline <= time.time():
            self.remove_if_unchanged(path, info)
            return None
        return deadline

    def _read_ttl(self, path: Path) -> float | None:
        try:
            data, _info = read_regular_file(path)
            ttl = float(json.loads(data)["ttl"])
            if not 0 < ttl < float("inf"):
                raise ValueError(f"TTL {ttl} is not a positive number of seconds")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.warn_once(
                path,
                "lease file %s is unreadable (%s): its records are treated as gone; delete the file",
                path,
                exc,
            )
            return None
        return ttl

    def read_record(self, path: Path) -> Record | Corrupt | None:
        """The record at ``path``, ``None`` if absent, or ``CORRUPT`` (warned about) if not one of ours."""
        try:
            data, info = read_regular_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self.warn_once(path, "skipping unreadable record %s: %s; delete it", path, exc)
            return CORRUPT
        header, newline, value = data.partition(b"\n")
        try:
            if not (newline and header.startswith(RECORD_MAGIC)):
                raise ValueError("it does not start with the dyndisc record header")
            lease_id = int(header[len(RECORD_MAGIC) :], 16)
        except ValueError as exc:
            self.warn_once(path, "skipping corrupted record %s: %s; delete the file", path, exc)
            return CORRUPT
        return Record(value=value, lease_id=lease_id, ino=info.st_ino, mtime_ns=info.st_mtime_ns)

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
            self.remove_record_if_unchanged(path, record)
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
                self.remove_record_if_unchanged(self.layout.record_path(key), record)
            else:
                found[key] = record
        return found

    def remove_if_unchanged(self, path: Path, seen: os.stat_result) -> None:
        """Unlink ``path`` unless it changed since ``seen`` (a keep-alive or a rewrite won the race)."""
        try:
            now = path.stat()
            if (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
                path.unlink()
        except FileNotFoundError:
            pass

    def remove_record_if_unchanged(self, path: Path, record: Record) -> None:
        try:
            now = path.stat()
            if (now.st_ino, now.st_mtime_ns) == (record.ino, record.mtime_ns):
                path.unlink()
                log.debug("removed %s: its lease %x is gone", path, record.lease_id)
        except FileNotFoundError:
            pass

    def _remove_stale_temp(self, entry: os.DirEntry[str]) -> None:
        if not entry.name.startswith(".tmp-"):
            return
        with suppress(OSError):
            if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
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
