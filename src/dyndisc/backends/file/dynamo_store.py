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
open and renews some lease (the reference keeps nothing that nobody touches). The watch of a prefix is in
:mod:`dyndisc.backends.file.dynamo_watch`.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from dyndisc._errors import ConfigurationError, LeaseNotFoundError
from dyndisc.backends.base import Lease
from dyndisc.backends.file.layout import remove_if, write_temp_file
from dyndisc.backends.kv import KeyValueStore, StoredValue, StoreEvent

log = logging.getLogger("dyndisc.file")

#: Seconds after its last touch at which the reference's file store (1.6.1) deletes a file: its TTL.
REFERENCE_EXPIRY = 10.0
#: Temporary files (ours and the reference's) start with this; every reader ignores them.
TEMP_PREFIX = ".tmp_"
#: Longest file name most filesystems accept, in bytes.
NAME_MAX = 255
#: Files larger than this are not discovery records; they are skipped unread.
MAX_FILE_BYTES = 1024 * 1024
#: A temporary file older than this was left by a writer that died mid-write; scans remove it.
STALE_TEMP_SECONDS = 60.0

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def encode_name(key: str) -> str:
    """A key (below its bucket) as a file name: every UTF-8 byte but ``[A-Za-z0-9]`` as ``%XX``."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in key.encode())


def decode_name(name: str) -> str | None:
    """The key a file name spells, or ``None`` for a temporary file or a name that is not UTF-8.

    Lenient as the reference is: lower-case hex and characters left unescaped read the same.
    """
    if name.startswith(TEMP_PREFIX) or name.startswith("."):
        return None
    try:
        return urllib.parse.unquote_to_bytes(name).decode()
    except UnicodeDecodeError:
        return None


def split_key(key: str) -> tuple[str, str]:
    """``(bucket, rest)`` of a key: the bucket is its first two segments (``v1/instances``)."""
    parts = key.split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f"key {key!r} is not '<bucket>/<key>' with a two-segment bucket such as 'v1/instances/...', "
            "which the reference's file store needs"
        )
    return f"{parts[0]}/{parts[1]}", parts[2]


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A live file's value."""

    value: bytes


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

    # -- paths -----------------------------------------------------------------------------------------
    def path_of(self, key: str) -> Path:
        """The file that holds ``key``."""
        bucket, rest = split_key(key)
        name = encode_name(rest)
        if len(name) > NAME_MAX:
            raise ValueError(
                f"key {key!r} is {len(name)} bytes as a file name (every byte but letters and digits takes "
                f"three); file names hold at most {NAME_MAX}: use shorter names"
            )
        return self.root.joinpath(*bucket.split("/"), name)

    def bucket_dirs(self, prefix: str) -> Iterator[tuple[str, Path]]:
        """``(bucket, directory)`` of every bucket that may hold keys starting with ``prefix``."""
        segments = prefix.split("/")
        if len(segments) >= 3:  # the prefix names its bucket
            yield f"{segments[0]}/{segments[1]}", self.root / segments[0] / segments[1]
            return
        for top in _subdirs(self.root):
            for sub in _subdirs(top):
                bucket = f"{top.name}/{sub.name}"
                if f"{bucket}/".startswith(prefix):
                    yield bucket, sub

    # -- reading -----------------------------------------------------------------------------------------
    def read(self, path: Path) -> FileRecord | None:
        """The live record at ``path``; ``None`` if absent, unreadable or expired (an expired file is
        deleted, as every reader of the reference's store does)."""
        for _ in range(3):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                log.warning("skipping unreadable %s: %s", path, exc)
                return None
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
                    return None
                data = os.read(fd, info.st_size)
            finally:
                os.close(fd)
            if not self._expired(info):
                return FileRecord(value=data)
            if self.remove_if_expired(path):
                return None
            # Touched (or rewritten) since it was read: it is live after all; read what is there now.
        return None

    def _expired(self, info: os.stat_result) -> bool:
        return time.time() - info.st_mtime_ns / 1e9 > self.expiry

    def remove_if_expired(self, path: Path) -> bool:
        """Delete ``path`` if the file it names is expired; whether it did. A file touched or replaced after
        its reader looked at it is live, and stays (:func:`~dyndisc.backends.file.layout.remove_if`)."""

        def expired(taken: Path) -> bool:
            try:
                return self._expired(taken.stat())
            except FileNotFoundError:
                return True  # a stale-file sweep took it (its mtime was a minute old): expired indeed

        return remove_if(path, TEMP_PREFIX, expired)

    def scan(self, prefix: str) -> dict[str, FileRecord]:
        """Every live key starting with ``prefix`` and its record (expired files are deleted)."""
        found: dict[str, FileRecord] = {}
        for bucket, directory in self.bucket_dirs(prefix):
            for key, path in self.files_of(bucket, directory):
                if key.startswith(prefix) and (record := self.read(path)) is not None:
                    found[key] = record
        return found

    def files_of(self, bucket: str, directory: Path) -> Iterator[tuple[str, Path]]:
        """``(key, path)`` of every file in a bucket directory (temporary files are skipped, stale ones
        removed)."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                with suppress(OSError):
                    if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(entry.path)
                continue
            rest = decode_name(entry.name)
            if rest is not None:
                yield f"{bucket}/{rest}", Path(entry.path)

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
        missing = [k for k in state.keys if not _touch(self.path_of(k))]
        if missing:
            await self.revoke(lease_id)
            raise LeaseNotFoundError(
                f"files of lease {lease_id:x} were deleted behind its back: {missing[:3]}"
            )
        for key in list(self._unbound):
            if not _touch(self.path_of(key)):
                self._unbound.discard(key)
        state.touched = now
        return self.expiry

    async def revoke(self, lease_id: int) -> None:
        state = self._leases.pop(lease_id, None)
        for key in state.keys if state is not None else ():
            with suppress(FileNotFoundError):
                self.path_of(key).unlink()

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        if lease_id:
            self._live(lease_id)
        path = self.path_of(key)
        for _ in range(10):
            temp = self._temp(path.parent, value)
            try:
                os.link(temp, path)  # fails if the key exists: create-if-absent, never a partial file
            except FileExistsError:
                existing = self.read(path)
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
        path = self.path_of(key)
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
            self.path_of(key).unlink()

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: r.value for k, r in self.scan(prefix).items()}

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        from dyndisc.backends.file.dynamo_watch import DynamoFileWatch  # watchfiles: the 'file' extra

        async with DynamoFileWatch(self, prefix).running() as events:
            yield events


def _touch(path: Path) -> bool:
    """Set ``path``'s mtime to now; ``False`` if it is gone."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
