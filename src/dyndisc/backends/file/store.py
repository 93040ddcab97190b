"""The file store: leases and records as files in a directory shared by the processes of one host.

Writes are atomic: a temporary file in the target directory, then ``rename`` (put) or ``link`` (create, which
fails if the key exists). A lease is live while ``mtime + ttl`` is in the future; every reader treats the
records of a missing or expired lease as gone, and whoever notices first removes them. Where the files are:
:mod:`dyndisc.backends.file.layout`; how changes are seen: :mod:`dyndisc.backends.file.watch`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import anyio.to_thread

from dyndisc._errors import BackendUnavailableError, ConfigurationError, LeaseNotFoundError
from dyndisc._retry import Backoff
from dyndisc.backends.base import Lease
from dyndisc.backends.diagnosis import BackendDoctor
from dyndisc.backends.file.changes import ChangeFeed
from dyndisc.backends.file.doctor import FileDoctor
from dyndisc.backends.file.layout import (
    CORRUPT,
    EXPIRED_SUFFIX,
    FileLayout,
    Record,
    encode_record,
    mkdirs,
    write_temp_file,
)
from dyndisc.backends.file.leases import LeaseBusy, renew, sweep_tombstones, time_left
from dyndisc.backends.file.records import TEMP_PREFIX, Records
from dyndisc.backends.file.watch import FileWatch
from dyndisc.backends.kv import KeyValueStore, StoredValue, StoreEvent

log = logging.getLogger("dyndisc.file")

#: Backoff of a keep-alive that finds its lease file's lock held by a reader (held for two system calls).
LOCK_RETRY_MIN, LOCK_RETRY_MAX = 0.001, 0.05


class FileStore(KeyValueStore):
    """A :class:`~dyndisc.backends.kv.KeyValueStore` in a directory shared by the processes of one host."""

    name = "file"
    #: It keeps its own tree of files: the reference runtime's flat files are another store.
    layouts = frozenset({"dyndisc"})
    layout_hint = (
        "; for the reference's file layout use DynamoFileStore (the file backend's choice under dynamo-v1)"
    )

    def __init__(self, root: str | os.PathLike[str], *, rescan_interval: float = 5.0) -> None:
        self.layout = FileLayout(Path(root).absolute())
        self.root, self.kv_dir, self.lease_dir = self.layout.root, self.layout.kv_dir, self.layout.lease_dir
        self.record_path, self.lease_path = self.layout.record_path, self.layout.lease_path
        self.rescan_interval = rescan_interval
        self._own_keys: dict[int, set[str]] = {}  # keys this store wrote, per lease (revoke deletes them)
        self.records = Records(self.layout)
        # Scans and revokes run in worker threads, one at a time per store: they share the records' caches.
        self._io_limiter = anyio.CapacityLimiter(1)
        self.changes = ChangeFeed(self.layout)
        self._prepare_root()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    # -- setup ------------------------------------------------------------------------------------------
    def _prepare_root(self) -> None:
        try:
            mkdirs(self.root)
            info = self.root.stat()
            if info.st_uid != os.getuid():
                raise ConfigurationError(
                    f"file backend root {self.root} (DYN_FILE_KV) belongs to uid {info.st_uid}, not to this "
                    f"user (uid {os.getuid()}); point DYN_FILE_KV at a directory of your own"
                )
            mkdirs(self.kv_dir)
            mkdirs(self.lease_dir)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use {self.root} as the file backend root (DYN_FILE_KV): {exc.strerror or exc}; "
                "point DYN_FILE_KV at a writable local directory"
            ) from exc

    # -- leases -----------------------------------------------------------------------------------------
    def _grant(self, ttl: float) -> Lease:
        if not 0 < ttl <= 86_400:
            raise ValueError(f"lease TTL must be in (0, 86400] seconds, got {ttl}")
        body = json.dumps({"ttl": ttl, "pid": os.getpid(), "host": socket.gethostname()}).encode()
        while True:
            lease_id = secrets.randbits(63)
            if lease_id and self._create_file(self.lease_path(lease_id), body):
                sweep_tombstones(self.lease_dir, EXPIRED_SUFFIX)  # a process grants once: seldom enough
                self.records.remember_ttl(lease_id, ttl)
                self._own_keys[lease_id] = set()
                return Lease(id=lease_id, ttl=ttl)

    async def keep_alive(self, lease_id: int) -> float:
        ttl = self.records.ttl_of(lease_id)
        if ttl is None or not await self._renew(lease_id, ttl):
            self._revoke(lease_id)  # its records are dead already: remove them now rather than lazily
            raise LeaseNotFoundError(
                f"lease {lease_id:x} is gone from {self.lease_dir} (it expired or was revoked)"
            )
        return ttl

    async def _renew(self, lease_id: int, ttl: float) -> bool:
        """Renew lease ``lease_id``'s file (:func:`~dyndisc.backends.file.leases.renew`); whether the lease
        is still live."""
        path, tombstone = self.lease_path(lease_id), self.layout.expired_path(lease_id)
        backoff = Backoff(LOCK_RETRY_MIN, LOCK_RETRY_MAX)
        while True:
            try:
                return renew(path, ttl, tombstone)
            except LeaseBusy:
                # A reader holds the lock, deciding whether the lease expired: that takes it two system
                # calls. Ask again, until the lease would be past its deadline anyway.
                left = time_left(path, ttl)
                if not left:
                    return False
                await backoff.sleep(limit=left)

    def _revoke(self, lease_id: int) -> None:
        # The lease file goes first: from that instant every reader treats its records as gone.
        with suppress(FileNotFoundError):
            self.lease_path(lease_id).unlink()
        own = self._own_keys.pop(lease_id, None)
        if own is not None:
            for n, key in enumerate(own):
                if not n % 128:
                    time.sleep(0)  # runs in a worker thread: let the event loop's thread have the GIL
                self._delete_if_owned(key, lease_id)
        else:  # someone else's lease: find its records (it may own some anywhere under the root)
            for n, (key, record) in enumerate(self.records.walk(self.kv_dir, "")):
                if not n % 128:
                    time.sleep(0)
                if isinstance(record, Record) and record.lease_id == lease_id:
                    self._delete_if_owned(key, lease_id)

    def _require_lease(self, lease_id: int) -> None:
        if lease_id and self.records.lease_deadline(lease_id) is None:
            raise LeaseNotFoundError(
                f"lease {lease_id:x} is gone from {self.lease_dir} (it expired or was revoked)"
            )

    # -- records ----------------------------------------------------------------------------------------
    def _create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        self._require_lease(lease_id)
        path = self.record_path(key)
        body = encode_record(value, lease_id)
        for _ in range(10):
            if self._create_file(path, body):
                self._track(key, lease_id)
                return None
            existing = self.records.live_record(path, {})
            if existing is not None:
                return StoredValue(value=existing.value, lease_id=existing.lease_id)
            current = self.records.read_record(path)
            if current is CORRUPT:
                log.warning("replacing corrupted record %s with a valid one for %s", path, key)
                with suppress(FileNotFoundError):
                    path.unlink()
            # Otherwise it was a dead lease's record, now removed, or just deleted: try again.
        raise RuntimeError(f"could not create {path}: it kept reappearing and vanishing")

    def _put(self, key: str, value: bytes, lease_id: int) -> None:
        self._require_lease(lease_id)
        path = self.record_path(key)
        try:
            previous = self.records.read_record(path)
        except BackendUnavailableError:
            previous = None  # replaced whatever it holds: only whose it was goes unrecorded (see _revoke)
        self._write_file(path, encode_record(value, lease_id))
        if isinstance(previous, Record) and previous.lease_id != lease_id:
            self._own_keys.get(previous.lease_id, set()).discard(key)
        self._track(key, lease_id)

    def _delete(self, key: str) -> None:
        path = self.record_path(key)
        with suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
        for keys in self._own_keys.values():
            keys.discard(key)

    def _delete_if_owned(self, key: str, lease_id: int) -> None:
        path = self.record_path(key)
        record = self.records.read_record(path)
        if isinstance(record, Record) and record.lease_id == lease_id:
            self.records.remove_record_of(path, lease_id)

    def _track(self, key: str, lease_id: int) -> None:
        if lease_id:
            self._own_keys.setdefault(lease_id, set()).add(key)

    # -- low-level file operations ------------------------------------------------------------------------
    def _temp_file(self, directory: Path, body: bytes) -> Path:
        mkdirs(directory)
        return write_temp_file(directory, TEMP_PREFIX, body, 0o600)

    def _create_file(self, path: Path, body: bytes) -> bool:
        """Create ``path`` with ``body`` atomically unless it exists; ``True`` if created."""
        temp = self._temp_file(path.parent, body)
        try:
            os.link(temp, path)  # fails if the key exists: create-if-absent with no partial file ever seen
        except FileExistsError:
            return False
        finally:
            temp.unlink()
        return True

    def _write_file(self, path: Path, body: bytes) -> None:
        temp = self._temp_file(path.parent, body)
        try:
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    # -- KeyValueStore ----------------------------------------------------------------------------------
    async def grant(self, ttl: float) -> Lease:
        return self._grant(ttl)

    async def revoke(self, lease_id: int) -> None:
        # One unlink per key of the lease (or a walk of the tree, for a lease of another process): off the
        # event loop, which would otherwise stall for a quarter of a second at 10,000 records.
        await anyio.to_thread.run_sync(self._revoke, lease_id, limiter=self._io_limiter)

    @property
    def tells_lease_time(self) -> bool:
        return True

    async def time_to_live(self, lease_id: int) -> float | None:
        deadline = await anyio.to_thread.run_sync(self.records.lease_deadline, lease_id)
        return None if deadline is None else max(deadline - time.time(), 0.0)

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        return self._create(key, value, lease_id)

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        self._put(key, value, lease_id)

    async def delete(self, key: str) -> None:
        self._delete(key)

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return await anyio.to_thread.run_sync(self._get_prefix, prefix, limiter=self._io_limiter)

    def _get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: r.value for k, r in self.records.scan(prefix).items()}

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        watch = FileWatch(self.records, self.changes, prefix, self.rescan_interval)
        # The change feed is watching before the caller gets the iterator (whose first step is the scan).
        async with self.changes.subscribe(watch):
            yield watch.events()

    def doctor(self) -> BackendDoctor:
        return FileDoctor(self.root)
