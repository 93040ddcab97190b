"""The reference runtime's file store (``DYN_DISCOVERY_BACKEND=file`` in Dynamo 1.6.1), read and written as it
does, so a Dynamo worker and a dyndisc watcher on one host see each other, both ways.

Layout under the root (``DYN_FILE_KV``; the reference's default is ``$TMPDIR/dynamo_store_kv``)::

    v1/instances/ns%2Fcomp%2Fep%2F1f        one flat file per key: the bucket (the key's first two
    v1/mdc/ns%2Fcomp%2Fep%2F1f              segments) is a directory, the rest of the key its file name,
                                            every byte but [A-Za-z0-9] as %XX (upper-case hex)

The content is the value itself (the same JSON as on etcd). There are no lease files: a file is live while
its mtime is less than :data:`REFERENCE_EXPIRY` seconds old. Its writer touches it (here: at every
keep-alive of its lease), and every process that watches or lists a bucket deletes the files in it that are
older. Writes are a temporary ``.tmp_*`` file then ``rename`` (put) or ``link`` (create, which fails if the
key exists), as the reference does.

Since files carry no TTL, every reader applies the same expiry: a dyndisc lease here is granted for that many
seconds whatever was asked, and an entry written with no lease lives only while the store that wrote it is
open and renews some lease (the reference keeps nothing that nobody touches). Names and reading are in
:mod:`dyndisc.backends.file.dynamo_files` (the store and its watch read alike), the watch of a prefix in
:mod:`dyndisc.backends.file.dynamo_watch`.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from dyndisc._errors import ConfigurationError, LeaseNotFoundError
from dyndisc.backends.base import Lease
from dyndisc.backends.file.dynamo_files import TEMP_PREFIX, DynamoFiles
from dyndisc.backends.file.dynamo_watch import DynamoFileWatch
from dyndisc.backends.file.layout import write_temp_file
from dyndisc.backends.kv import KeyValueStore, StoredValue, StoreEvent

log = logging.getLogger("dyndisc.file")

#: Seconds after its last touch at which the reference's file store (1.6.1) deletes a file: its TTL.
REFERENCE_EXPIRY = 10.0


@dataclass
class _LeaseState:
    keys: set[str] = field(default_factory=set)
    touched: float = field(default_factory=time.time)


class DynamoFileStore(KeyValueStore):
    """A :class:`~dyndisc.backends.kv.KeyValueStore` in the reference runtime's file layout (see the module
    docstring). ``expiry`` is the age at which a file is dead; keep the reference's 10 s to share a
    directory with Dynamo processes."""

    name = "file"
    #: Only the reference's layout: its keys are ``<bucket>/<key>`` with a two-segment bucket.
    layouts = frozenset({"dynamo-v1"})
    layout_hint = ", the reference's file layout; the dyndisc layout is FileStore's"

    def __init__(self, root: str | os.PathLike[str], *, expiry: float = REFERENCE_EXPIRY) -> None:
        if not 0 < expiry <= 3600:
            raise ConfigurationError(f"file expiry must be in (0, 3600] seconds, got {expiry}")
        self.root = Path(root).absolute()
        self.expiry = expiry
        #: The files as every reader sees them (names, liveness, listing).
        self.files = DynamoFiles(self.root, expiry)
        self._leases: dict[int, _LeaseState] = {}
        #: Keys written with no lease: touched at every keep-alive while this store is open.
        self._unbound: set[str] = set()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use {self.root} as the file store root (DYN_FILE_KV): {exc.strerror or exc}; point "
                "DYN_FILE_KV at a writable local directory"
            ) from exc

    def __repr__(self) -> str:
        return f"DynamoFileStore({str(self.root)!r})"

    # -- writing -----------------------------------------------------------------------------------------
    def _temp(self, directory: Path, value: bytes) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        # 0666 less the umask, as the reference's files: any process of the host may read discovery.
        return write_temp_file(directory, TEMP_PREFIX, value, 0o666)

    def _own(self, key: str, lease_id: int) -> None:
        for state in self._leases.values():
            state.keys.discard(key)
        self._unbound.discard(key)
        if lease_id:
            self._live(lease_id).keys.add(key)
        else:
            self._unbound.add(key)

    def _live(self, lease_id: int) -> _LeaseState:
        state = self._leases.get(lease_id)
        if state is None:
            raise LeaseNotFoundError(
                f"lease {lease_id:x} is not held by this file store (expired or revoked)"
            )
        return state

    def _owner(self, key: str) -> int:
        return next((i for i, s in self._leases.items() if key in s.keys), 0)

    # -- KeyValueStore ---------------------------------------------------------------------------------
    async def grant(self, ttl: float) -> Lease:
        if ttl != self.expiry:
            log.info(
                "the reference's file store expires files %gs after their last touch: lease granted for %gs, "
                "not the %gs asked",
                self.expiry,
                self.expiry,
                ttl,
            )
        lease_id = 0
        while not lease_id or lease_id in self._leases:
            lease_id = secrets.randbits(64)  # random 64-bit ids, as the reference's
        self._leases[lease_id] = _LeaseState()
        return Lease(id=lease_id, ttl=self.expiry)

    async def keep_alive(self, lease_id: int) -> float:
        state = self._live(lease_id)
        now = time.time()
        if now - state.touched > self.expiry:
            await self.revoke(lease_id)
            raise LeaseNotFoundError(
                f"lease {lease_id:x} was not renewed for {now - state.touched:.1f}s, longer than the file "
                f"expiry ({self.expiry:g}s): its files may have been swept"
            )
        missing = [k for k in state.keys if not _touch(self.files.path_of(k))]
        if missing:
            await self.revoke(lease_id)
            raise LeaseNotFoundError(
                f"files of lease {lease_id:x} were deleted behind its back: {missing[:3]}"
            )
        for key in list(self._unbound):
            if not _touch(self.files.path_of(key)):
                self._unbound.discard(key)
        state.touched = now
        return self.expiry

    async def revoke(self, lease_id: int) -> None:
        state = self._leases.pop(lease_id, None)
        for key in state.keys if state is not None else ():
            with suppress(FileNotFoundError):
                self.files.path_of(key).unlink()

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        if lease_id:
            self._live(lease_id)
        path = self.files.path_of(key)
        for _ in range(10):
            temp = self._temp(path.parent, value)
            try:
                os.link(temp, path)  # fails if the key exists: create-if-absent, never a partial file
            except FileExistsError:
                existing = self.files.read(path)
                if existing is not None:
                    return StoredValue(value=existing.value, lease_id=self._owner(key))
                continue  # it had expired (and is deleted now) or was just deleted: try again
            finally:
                temp.unlink()
            self._own(key, lease_id)
            return None
        raise RuntimeError(f"could not create {path}: it kept reappearing and vanishing")

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        if lease_id:
            self._live(lease_id)
        path = self.files.path_of(key)
        temp = self._temp(path.parent, value)
        try:
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._own(key, lease_id)

    async def delete(self, key: str) -> None:
        for state in self._leases.values():
            state.keys.discard(key)
        self._unbound.discard(key)
        with suppress(FileNotFoundError, NotADirectoryError):
            self.files.path_of(key).unlink()

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: r.value for k, r in self.files.scan(prefix).items()}

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        async with DynamoFileWatch(self.files, prefix).running() as events:
            yield events


def _touch(path: Path) -> bool:
    """Set ``path``'s mtime to now; ``False`` if it is gone."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True
