"""A prefix watch of the file store: changed paths, lease deadlines and rescans turned into store events.

Changed paths come from the store's :class:`~dyndisc.backends.file.changes.ChangeFeed`. A lease's expiry
fires no file event, so the watch also wakes at the earliest deadline of the leases it has seen; a periodic
rescan (``DYN_FILE_RESCAN_INTERVAL``) is the safety net for anything the change feed missed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread

from dyndisc._events import RemovalReason
from dyndisc.backends.file.changes import ChangeFeed
from dyndisc.backends.file.layout import Record
from dyndisc.backends.file.records import Records
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot

#: Changed paths a watch may queue before it switches to a full rescan and a fresh snapshot instead.
MAX_PENDING_PATHS = 10_000


class FileWatch:
    """One prefix watch: turns changed paths (from the store's :class:`ChangeFeed`), lease deadlines and
    periodic rescans into store events."""

    def __init__(self, records: Records, changes: ChangeFeed, prefix: str, rescan_interval: float) -> None:
        self.records = records
        self.layout = records.layout
        self.changes = changes
        self.prefix = prefix
        self.rescan_interval = rescan_interval
        self.base = self.layout.watch_dir(prefix)
        self.base_str = str(self.base)
        self.lease_str = str(self.layout.lease_dir) + os.sep
        self.known: dict[str, Record] = {}
        self.deadlines: dict[int, float] = {}  # leases of known records: when to look at each again
        #: Why each lease's records are leaving, as the disk said when the first of them left (this step).
        self.reasons: dict[int, RemovalReason] = {}
        self.pending: set[tuple[int, str]] = set()
        self.out: deque[StoreEvent] = deque()
        self.needs_snapshot = True
        #: Whether a snapshot was ever taken: a watch that has one may have missed changes when the
        #: change feed restarts, so it must take a new one.
        self.scanned = False
        self.wake = anyio.Event()
        self.closing = False

    def push(self, changes: set[tuple[int, str]]) -> None:
        base, leases = self.base_str, self.lease_str
        mine = {
            c
            for c in changes
            if c[1].startswith(leases) or c[1].startswith(base) or base.startswith(c[1] + os.sep)
        }
        if not mine:
            return
        self.pending |= mine
        if len(self.pending) > MAX_PENDING_PATHS:
            self.resync()
        self.wake.set()

    def resync(self) -> None:
        self.pending.clear()
        self.out.clear()
        self.needs_snapshot = True
        self.wake.set()

    async def events(self) -> AsyncIterator[StoreEvent]:
        next_rescan = time.monotonic() + self.rescan_interval
        while True:
            self.reasons.clear()  # one look at the disk per lease and step: a revoke removes many records
            if self.needs_snapshot:
                self.needs_snapshot = False
                self.pending.clear()
                # Reading every record under the prefix blocks for as long as the disk takes: off the loop.
                known = await anyio.to_thread.run_sync(self.records.scan, self.prefix)
                if self.needs_snapshot:
                    continue  # a resync was asked for meanwhile: scan again
                self.known = known  # (nothing is queued in out: resync() emptied it, and nothing ran since)
                self.scanned = True
                self._refresh_deadlines()
                yield StoreSnapshot(items={k: r.value for k, r in self.known.items()})
            elif self.out:
                yield self.out.popleft()
            elif self.pending:
                changes, self.pending = self.pending, set()
                self._apply(changes)
            elif self.deadlines and min(self.deadlines.values()) <= time.time():
                self._check_leases({i for i, d in self.deadlines.items() if d <= time.time()})
            elif time.monotonic() >= next_rescan:
                self.changes.check()
                found = await anyio.to_thread.run_sync(self.records.rescan, self.prefix)
                if not self.needs_snapshot:
                    self._reconcile(self.layout.kv_dir, "/", found)
                next_rescan = time.monotonic() + self.rescan_interval
            else:
                wait = next_rescan - time.monotonic()
                if self.deadlines:
                    wait = min(wait, min(self.deadlines.values()) - time.time())
                with anyio.move_on_after(max(wait, 0.0)):
                    await self.wake.wait()
                self.wake = anyio.Event()

    # -- turning observations into events -------------------------------------------------------------------
    def _set(self, key: str, record: Record | None) -> None:
        old = self.known.get(key)
        if record is None:
            if old is not None:
                del self.known[key]
                reason = self.reasons.get(old.lease_id)
                if reason is None:
                    reason = self.reasons[old.lease_id] = self.records.why_gone(old.lease_id)
                self.out.append(StoreDelete(key=key, reason=reason))
        elif old is None or (old.value, old.lease_id) != (record.value, record.lease_id):
            self.known[key] = record
            self.out.append(StorePut(key=key, value=record.value))

    def _refresh_deadlines(self) -> None:
        leases = {r.lease_id for r in self.known.values() if r.lease_id}
        self.deadlines = {i: d for i, d in self.deadlines.items() if i in leases}
        for lease_id in leases - self.deadlines.keys():
            self._check_leases({lease_id})

    def _check_leases(self, lease_ids: set[int]) -> None:
        for lease_id in lease_ids:
            deadline = self.records.lease_deadline(lease_id)
            if deadline is not None:
                self.deadlines[lease_id] = deadline
                continue
            for key, record in list(self.known.items()):
                if record.lease_id == lease_id:
                    self.records.remove_record_of(self.layout.record_path(key), lease_id)
                    self._set(key, None)
            self.deadlines.pop(lease_id, None)

    def _reconcile(self, directory: Path, dir_prefix: str, scanned: dict[str, Record] | None = None) -> None:
        """Make ``known`` match the disk for the watched keys under ``directory`` (keys ``dir_prefix...``);
        ``scanned`` is a scan of the whole watch made already (off the loop)."""
        if self.prefix.startswith(dir_prefix):  # the watched directory or one above it: all of the watch
            prefix, under = self.prefix, None
        else:
            prefix, under = dir_prefix, directory
        found = scanned if scanned is not None and under is None else self.records.scan(prefix, under=under)
        for key in [k for k in self.known if k.startswith(prefix) and k not in found]:
            self._set(key, None)
        for key, record in found.items():
            self._set(key, record)
        self._refresh_deadlines()

    def _apply(self, changes: set[tuple[int, str]]) -> None:
        leases: set[int] = set()
        deadlines: dict[int, float | None] = {}
        for _change, raw in sorted(changes, key=lambda c: c[1]):
            path = Path(raw)
            if path.parent == self.layout.lease_dir:
                lease_id = self.layout.lease_of(path)
                if lease_id is not None:
                    leases.add(lease_id)
                continue
            if path.name.startswith("."):
                continue  # a temporary file: its rename or link is the event that counts
            key = self.layout.key_of(path)
            if key is not None:
                if key.startswith(self.prefix):
                    self._set(key, self.records.live_record(path, deadlines))
                continue
            dir_prefix = self.layout.dir_key(path)
            if dir_prefix is None:
                self.records.warn_once(path, "ignoring %s: not a file name dyndisc writes", path)
            elif dir_prefix.startswith(self.prefix) or self.prefix.startswith(dir_prefix):
                # A directory came or went: files made in it before inotify watched it fired no event.
                self._reconcile(path, dir_prefix)
        self._check_leases(leases & self.deadlines.keys())
        self._refresh_deadlines()
