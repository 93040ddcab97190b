"""Discovery through a shared directory: one host, any number of processes, no server.

Layout under the root (``DYN_FILE_KV``; directories 0700, files 0600)::

    leases/{lease_id:016x}.lease          one per lease; its mtime is the last keep-alive, its content the TTL
    kv/{seg}/{seg}/.../{seg}.rec          one per key: a header naming the owning lease, then the value

A key ``/services/ns/comp/ep/1f`` is the file ``kv/services/ns/comp/ep/1f.rec``. Every key segment is
percent-encoded (anything but ``A-Z a-z 0-9 _ -`` becomes ``%XX`` of its UTF-8 bytes; an empty segment is a
lone ``%``), so ``.``, ``..`` and ``/`` can never leave the root, ``.rec`` files never clash with the
directories of longer keys, and names starting with ``.`` are free for temporary files.

Writes are atomic: a temporary file in the target directory, then ``rename`` (put) or ``link`` (create, which
fails if the key exists). A lease is live while ``mtime + ttl`` is in the future; every reader treats the
records of a missing or expired lease as gone, and whoever notices first removes them.

Watches use ``watchfiles`` (inotify) on the watched subtree and on ``leases/``, plus a timer on the earliest
lease deadline (expiry fires no file event) and a periodic rescan as the safety net.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import anyio.to_thread
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from dyndisc._concurrency import background_tasks
from dyndisc._errors import ConfigurationError, LeaseNotFoundError
from dyndisc.backends.base import Lease
from dyndisc.backends.kv import (
    KeyValueStore,
    KvDiscovery,
    StoreDelete,
    StoredValue,
    StoreEvent,
    StorePut,
    StoreSnapshot,
)

if TYPE_CHECKING:
    from watchfiles._rust_notify import RustNotify

log = logging.getLogger("dyndisc.file")

#: Suffix of record files; ``.`` never appears in an encoded segment, so it cannot clash with a directory.
RECORD_SUFFIX = ".rec"
LEASE_SUFFIX = ".lease"
#: First bytes of every record file, then the owning lease id in hex and a newline, then the value.
RECORD_MAGIC = b"dyndisc-record/1 lease="
#: Longest encoded segment: NAME_MAX (255 bytes) less the record suffix.
MAX_SEGMENT_BYTES = 255 - len(RECORD_SUFFIX)
#: Records larger than this are not ours (ours are at most 64 KiB); they are skipped unread.
MAX_FILE_BYTES = 1024 * 1024
#: A temporary file older than this was left by a writer that died mid-write; rescans remove it.
STALE_TEMP_SECONDS = 60.0
#: Changed paths a watch may queue before it switches to a full rescan and a fresh snapshot instead.
MAX_PENDING_PATHS = 10_000
#: watchfiles grouping: return a batch once no new change arrived for STEP_MS (bounded by DEBOUNCE_MS).
STEP_MS, DEBOUNCE_MS = 10, 200

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_HEX = "0123456789ABCDEF"
_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


# -- key <-> path ---------------------------------------------------------------------------------------


def encode_segment(segment: str) -> str:
    """Encode one key segment as a file name: reversible, never ``.``/``..``, never containing ``/``."""
    if not segment:
        return "%"
    raw = segment.encode("utf-8")
    if all(b in _SAFE for b in raw):
        return segment
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


def decode_segment(name: str) -> str | None:
    """Invert :func:`encode_segment`; ``None`` for a name it could not have produced."""
    if name == "%":
        return ""
    if _PLAIN.fullmatch(name):
        return name  # the common case: a valid dyndisc name needs no decoding
    out = bytearray()
    i = 0
    while i < len(name):
        c = name[i]
        if c == "%":
            pair = name[i + 1 : i + 3]
            if len(pair) != 2 or any(h not in _HEX for h in pair):
                return None
            out.append(int(pair, 16))
            i += 3
        elif c.isascii() and ord(c) in _SAFE:
            out.append(ord(c))
            i += 1
        else:
            return None
    try:
        segment = out.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Only the canonical spelling maps back to a key, so one key is never two files.
    return segment if encode_segment(segment) == name else None


def key_segments(key: str) -> list[str]:
    """The segments of ``key`` (which must start with ``/``)."""
    if not key.startswith("/"):
        raise ValueError(f"file backend keys must start with '/', got {key!r}")
    return key[1:].split("/")


# -- settings -------------------------------------------------------------------------------------------


def default_root() -> Path:
    """``dyndisc`` under the system temp dir (``$TMPDIR``, else ``/tmp``)."""
    return Path(tempfile.gettempdir()) / "dyndisc"


class FileSettings(BaseSettings):
    """``DYN_FILE_KV`` (the shared directory) and ``DYN_FILE_RESCAN_INTERVAL`` (seconds between rescans)."""

    model_config = SettingsConfigDict(env_prefix="DYN_FILE_", extra="ignore", case_sensitive=False)

    kv: Path = Field(default_factory=default_root)
    rescan_interval: Annotated[float, Field(gt=0, le=3600)] = 5.0


# -- the store ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    value: bytes
    lease_id: int
    ino: int
    mtime_ns: int


class _Corrupt:
    """A record file that is not one of ours (already warned about)."""


_CORRUPT = _Corrupt()


class FileStore(KeyValueStore):
    """A :class:`~dyndisc.backends.kv.KeyValueStore` in a directory shared by the processes of one host."""

    name = "file"

    def __init__(self, root: str | os.PathLike[str], *, rescan_interval: float = 5.0) -> None:
        self.root = Path(root).absolute()
        self.kv_dir = self.root / "kv"
        self.lease_dir = self.root / "leases"
        self.rescan_interval = rescan_interval
        self._ttls: dict[int, float] = {}  # a lease's TTL never changes: read its file once
        self._own_keys: dict[int, set[str]] = {}  # keys this store wrote, per lease (revoke deletes them)
        self._warned: set[tuple[str, int, int]] = set()
        self._inotify = _Inotify(self)
        self._prepare_root()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    # -- setup ------------------------------------------------------------------------------------------
    def _prepare_root(self) -> None:
        try:
            _mkdirs(self.root)
            info = self.root.stat()
            if info.st_uid != os.getuid():
                raise ConfigurationError(
                    f"file backend root {self.root} (DYN_FILE_KV) belongs to uid {info.st_uid}, not to this "
                    f"user (uid {os.getuid()}); point DYN_FILE_KV at a directory of your own"
                )
            _mkdirs(self.kv_dir)
            _mkdirs(self.lease_dir)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use {self.root} as the file backend root (DYN_FILE_KV): {exc.strerror or exc}; "
                "point DYN_FILE_KV at a writable local directory"
            ) from exc

    # -- test hook --------------------------------------------------------------------------------------
    def break_watches(self) -> None:
        """Restart every open watch of this store as if its inotify stream had overflowed: changes queued
        but not yet delivered are dropped, the watcher is re-created and each watch resyncs from a scan."""
        self._inotify.request_restart()

    # -- paths ------------------------------------------------------------------------------------------
    def record_path(self, key: str) -> Path:
        """The file that holds ``key``."""
        names = [encode_segment(s) for s in key_segments(key)]
        longest = max(len(n) for n in names)  # encoded names are ASCII: characters are bytes
        if longest > MAX_SEGMENT_BYTES:
            raise ValueError(
                f"key {key!r} has a segment of {longest} bytes once encoded; the file backend accepts at "
                f"most {MAX_SEGMENT_BYTES} (the file-name limit of the filesystem less {RECORD_SUFFIX!r})"
            )
        names[-1] += RECORD_SUFFIX
        return self.kv_dir.joinpath(*names)

    def lease_path(self, lease_id: int) -> Path:
        """The file of lease ``lease_id``."""
        return self.lease_dir / f"{lease_id:016x}{LEASE_SUFFIX}"

    def key_of(self, path: Path) -> str | None:
        """The key stored at record file ``path``, or ``None`` if ``path`` is not a record file."""
        try:
            parts = path.relative_to(self.kv_dir).parts
        except ValueError:
            return None
        if not parts or not parts[-1].endswith(RECORD_SUFFIX):
            return None
        names = [*parts[:-1], parts[-1][: -len(RECORD_SUFFIX)]]
        segments = [decode_segment(n) for n in names]
        if any(s is None for s in segments):
            return None
        return "/" + "/".join(s for s in segments if s is not None)

    def _dir_key(self, path: Path) -> str | None:
        """The key prefix (ending with ``/``) that directory ``path`` holds."""
        try:
            parts = path.relative_to(self.kv_dir).parts
        except ValueError:
            return None
        segments = [decode_segment(n) for n in parts]
        if any(s is None for s in segments):
            return None
        return "/" + "".join(f"{s}/" for s in segments if s is not None)

    def watch_dir(self, prefix: str) -> Path:
        """The deepest directory holding every key that starts with ``prefix``."""
        if not prefix.startswith("/"):
            return self.kv_dir
        segments = prefix[1:].split("/")[:-1]  # the part after the last '/' may be a partial name
        return self.kv_dir.joinpath(*(encode_segment(s) for s in segments))

    # -- leases -----------------------------------------------------------------------------------------
    def lease_deadline(self, lease_id: int) -> float | None:
        """Wall-clock time lease ``lease_id`` expires, or ``None`` if gone (an expired one is removed)."""
        if lease_id == 0:
            return float("inf")
        path = self.lease_path(lease_id)
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
            self._remove_if_unchanged(path, info)
            return None
        return deadline

    def _read_ttl(self, path: Path) -> float | None:
        try:
            data, _info = _read_regular_file(path)
            ttl = float(json.loads(data)["ttl"])
            if not 0 < ttl < float("inf"):
                raise ValueError(f"TTL {ttl} is not a positive number of seconds")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._warn_once(
                path,
                "lease file %s is unreadable (%s): its records are treated as gone; delete the file",
                path,
                exc,
            )
            return None
        return ttl

    def _grant(self, ttl: float) -> Lease:
        if not 0 < ttl <= 86_400:
            raise ValueError(f"lease TTL must be in (0, 86400] seconds, got {ttl}")
        body = json.dumps({"ttl": ttl, "pid": os.getpid(), "host": socket.gethostname()}).encode()
        while True:
            lease_id = secrets.randbits(63)
            if lease_id and self._create_file(self.lease_path(lease_id), body):
                self._ttls[lease_id] = ttl
                self._own_keys[lease_id] = set()
                return Lease(id=lease_id, ttl=ttl)

    def _keep_alive(self, lease_id: int) -> float:
        path = self.lease_path(lease_id)
        if self.lease_deadline(lease_id) is None:
            self._revoke(lease_id)  # its records are dead already: remove them now rather than lazily
            raise LeaseNotFoundError(
                f"lease {lease_id:x} is gone from {self.lease_dir} (it expired or was revoked)"
            )
        now = time.time_ns()
        try:
            os.utime(path, ns=(now, now))
        except FileNotFoundError:
            raise LeaseNotFoundError(
                f"lease {lease_id:x} was revoked from {self.lease_dir} during its keep-alive"
            ) from None
        return self._ttls[lease_id]

    def _revoke(self, lease_id: int) -> None:
        # The lease file goes first: from that instant every reader treats its records as gone.
        with suppress(FileNotFoundError):
            self.lease_path(lease_id).unlink()
        own = self._own_keys.pop(lease_id, None)
        if own is not None:
            for key in own:
                self._delete_if_owned(key, lease_id)
        else:  # someone else's lease: find its records (it may own some anywhere under the root)
            for key, record in self._walk(self.kv_dir, ""):
                if isinstance(record, _Record) and record.lease_id == lease_id:
                    self._delete_if_owned(key, lease_id)

    def _require_lease(self, lease_id: int) -> None:
        if lease_id and self.lease_deadline(lease_id) is None:
            raise LeaseNotFoundError(
                f"lease {lease_id:x} is gone from {self.lease_dir} (it expired or was revoked)"
            )

    # -- records ----------------------------------------------------------------------------------------
    def read_record(self, path: Path) -> _Record | _Corrupt | None:
        """The record at ``path``, ``None`` if absent, or ``_CORRUPT`` (warned about) if not one of ours."""
        try:
            data, info = _read_regular_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self._warn_once(path, "skipping unreadable record %s: %s; delete it", path, exc)
            return _CORRUPT
        header, newline, value = data.partition(b"\n")
        try:
            if not (newline and header.startswith(RECORD_MAGIC)):
                raise ValueError("it does not start with the dyndisc record header")
            lease_id = int(header[len(RECORD_MAGIC) :], 16)
        except ValueError as exc:
            self._warn_once(path, "skipping corrupted record %s: %s; delete the file", path, exc)
            return _CORRUPT
        return _Record(value=value, lease_id=lease_id, ino=info.st_ino, mtime_ns=info.st_mtime_ns)

    def live_record(self, path: Path, deadlines: dict[int, float | None]) -> _Record | None:
        """The record at ``path`` if its lease is live; a record of a dead lease is removed.

        ``deadlines`` caches lease deadlines for the duration of one scan.
        """
        record = self.read_record(path)
        if not isinstance(record, _Record):
            return None
        if record.lease_id not in deadlines:
            deadlines[record.lease_id] = self.lease_deadline(record.lease_id)
        if deadlines[record.lease_id] is None:
            self._remove_record_if_unchanged(path, record)
            return None
        return record

    def _walk(self, directory: Path, partial: str) -> Iterator[tuple[str, _Record | _Corrupt]]:
        """Every record file under ``directory`` whose first segment below it starts with ``partial``."""
        base = self._dir_key(directory)
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
                self._warn_once(Path(entry.path), "ignoring %s: not a file name dyndisc writes", entry.path)
                continue
            if not segment.startswith(partial):
                continue
            if is_record:
                record = self.read_record(Path(entry.path))
                if record is not None:
                    yield base + segment, record
            elif entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), "")
            else:
                self._warn_once(Path(entry.path), "ignoring %s: not a file name dyndisc writes", entry.path)

    def scan(self, prefix: str, under: Path | None = None) -> dict[str, _Record]:
        """Every live record whose key starts with ``prefix`` (below directory ``under`` if given)."""
        if under is None:
            under = self.watch_dir(prefix)
            partial = prefix.rpartition("/")[2] if prefix.startswith("/") else ""
        else:
            partial = ""
        deadlines: dict[int, float | None] = {}
        found: dict[str, _Record] = {}
        for key, record in self._walk(under, partial):
            if not key.startswith(prefix) or not isinstance(record, _Record):
                continue
            if record.lease_id not in deadlines:
                deadlines[record.lease_id] = self.lease_deadline(record.lease_id)
            if deadlines[record.lease_id] is None:
                self._remove_record_if_unchanged(self.record_path(key), record)
            else:
                found[key] = record
        return found

    def _encode(self, value: bytes, lease_id: int) -> bytes:
        return RECORD_MAGIC + f"{lease_id:x}\n".encode() + value

    def _create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        self._require_lease(lease_id)
        path = self.record_path(key)
        body = self._encode(value, lease_id)
        for _ in range(10):
            if self._create_file(path, body):
                self._track(key, lease_id)
                return None
            existing = self.live_record(path, {})
            if existing is not None:
                return StoredValue(value=existing.value, lease_id=existing.lease_id)
            current = self.read_record(path)
            if current is _CORRUPT:
                log.warning("replacing corrupted record %s with a valid one for %s", path, key)
                with suppress(FileNotFoundError):
                    path.unlink()
            # Otherwise it was a dead lease's record, now removed, or just deleted: try again.
        raise RuntimeError(f"could not create {path}: it kept reappearing and vanishing")

    def _put(self, key: str, value: bytes, lease_id: int) -> None:
        self._require_lease(lease_id)
        path = self.record_path(key)
        previous = self.read_record(path)
        self._write_file(path, self._encode(value, lease_id))
        if isinstance(previous, _Record) and previous.lease_id != lease_id:
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
        record = self.read_record(path)
        if isinstance(record, _Record) and record.lease_id == lease_id:
            self._remove_record_if_unchanged(path, record)

    def _track(self, key: str, lease_id: int) -> None:
        if lease_id:
            self._own_keys.setdefault(lease_id, set()).add(key)

    # -- low-level file operations ------------------------------------------------------------------------
    def _temp_file(self, directory: Path, body: bytes) -> Path:
        _mkdirs(directory)
        temp = directory / f".tmp-{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, body)
        finally:
            os.close(fd)
        return temp

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

    def _remove_if_unchanged(self, path: Path, seen: os.stat_result) -> None:
        """Unlink ``path`` unless it changed since ``seen`` (a keep-alive or a rewrite won the race)."""
        try:
            now = path.stat()
            if (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
                path.unlink()
        except FileNotFoundError:
            pass

    def _remove_record_if_unchanged(self, path: Path, record: _Record) -> None:
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

    def _warn_once(self, path: Path, message: str, *args: object) -> None:
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

    # -- KeyValueStore ----------------------------------------------------------------------------------
    async def grant(self, ttl: float) -> Lease:
        return self._grant(ttl)

    async def keep_alive(self, lease_id: int) -> float:
        return self._keep_alive(lease_id)

    async def revoke(self, lease_id: int) -> None:
        self._revoke(lease_id)

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        return self._create(key, value, lease_id)

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        self._put(key, value, lease_id)

    async def delete(self, key: str) -> None:
        self._delete(key)

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: r.value for k, r in self.scan(prefix).items()}

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        watch = _FileWatch(self, prefix)
        self._inotify.subscribe(watch)  # the inotify watch exists before the caller gets the iterator
        try:
            async with background_tasks() as tg:
                tg.start_soon(self._inotify.pump, watch)
                try:
                    yield watch.events()
                finally:
                    watch.closing = True
                    self._inotify.stop(watch)
        finally:
            self._inotify.unsubscribe(watch)


class _Inotify:
    """One inotify watcher per store, over the whole root, shared by the store's open watches.

    inotify instances are scarce (``fs.inotify.max_user_instances``, often 128 for *all* processes of a
    user), so a store holds one however many watches it opens. Exactly one open watch pumps it at a time
    (from a worker thread, inside that watch's task group); when that watch closes, another takes over.
    """

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.notify: RustNotify | None = None
        self.watched: list[tuple[int, int]] = []  # (device, inode) of the directories inotify watches
        self.subscribers: set[_FileWatch] = set()
        self.pumper: _FileWatch | None = None
        self.lock = anyio.Lock()
        self.stop_event = threading.Event()
        self.restart = False
        # Its own limiter: a thread parked in inotify must never hold a token of the default pool.
        self.limiter = anyio.CapacityLimiter(1)

    def _start(self) -> RustNotify:
        # Imported here: the 'file' extra is optional. RustNotify (not awatch) because its constructor
        # installs the inotify watches synchronously, so the watch exists before the first scan.
        from watchfiles._rust_notify import RustNotify

        _mkdirs(self.store.kv_dir)  # again: someone may have removed the root since
        _mkdirs(self.store.lease_dir)
        self.watched = self._identities()
        try:
            return RustNotify(
                [str(self.store.kv_dir), str(self.store.lease_dir)], False, False, 50, True, True
            )
        except (OSError, RuntimeError) as exc:
            raise OSError(
                f"cannot watch {self.store.root} for changes ({exc}); if the limit of inotify instances "
                "or watches is reached, raise fs.inotify.max_user_instances / max_user_watches (sysctl)"
            ) from exc

    def _identities(self) -> list[tuple[int, int]]:
        found = []
        for path in (self.store.kv_dir, self.store.lease_dir):
            try:
                info = path.stat()
                found.append((info.st_dev, info.st_ino))
            except FileNotFoundError:
                found.append((0, 0))
        return found

    def check(self) -> None:
        """Restart if a watched directory was removed or replaced: inotify would stay silent about it."""
        if self.notify is not None and not self.restart and self._identities() != self.watched:
            log.warning("%s was removed or replaced under the file watcher; restarting it", self.store.root)
            self.request_restart()

    def subscribe(self, watch: _FileWatch) -> None:
        if self.notify is None:
            self.notify = self._start()
            # Made afresh with each watcher: a store may outlive one event loop and serve the next.
            self.lock = anyio.Lock()
            self.limiter = anyio.CapacityLimiter(1)
        self.subscribers.add(watch)

    def unsubscribe(self, watch: _FileWatch) -> None:
        self.subscribers.discard(watch)
        if not self.subscribers and self.notify is not None and not self.lock.locked():
            self.notify.close()
            self.notify = None

    def stop(self, watch: _FileWatch) -> None:
        """Called as ``watch`` closes: if it is pumping, wake the thread so another watch can take over."""
        if self.pumper is watch:
            self.stop_event.set()

    def request_restart(self) -> None:
        self.restart = True
        self.stop_event.set()

    async def pump(self, watch: _FileWatch) -> None:
        """Pump changed paths to every subscriber while ``watch`` is open and holds the pump."""
        async with self.lock:
            self.pumper = watch
            try:
                while not watch.closing and self.notify is not None:
                    result = await anyio.to_thread.run_sync(
                        self.notify.watch, DEBOUNCE_MS, STEP_MS, 0, self.stop_event, limiter=self.limiter
                    )
                    if isinstance(result, set):
                        for subscriber in self.subscribers:
                            subscriber.push(result)
                    elif result == "stop":
                        self.stop_event = threading.Event()
                        if self.restart:
                            self._restart()
            finally:
                self.pumper = None
        if not self.subscribers and self.notify is not None and not self.lock.locked():
            self.notify.close()
            self.notify = None

    def _restart(self) -> None:
        self.restart = False
        if self.notify is not None:
            self.notify.close()
        self.notify = self._start()
        log.info("file watcher of %s restarted; its watches resync", self.store.root)
        for subscriber in self.subscribers:
            subscriber.resync()


class _FileWatch:
    """One prefix watch: turns changed paths (from the store's :class:`_Inotify`), lease deadlines and
    periodic rescans into store events."""

    def __init__(self, store: FileStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.base = store.watch_dir(prefix)
        self.base_str = str(self.base)
        self.lease_str = str(store.lease_dir) + os.sep
        self.known: dict[str, _Record] = {}
        self.deadlines: dict[int, float] = {}  # leases of known records
        self.pending: set[tuple[int, str]] = set()
        self.out: deque[StoreEvent] = deque()
        self.needs_snapshot = True
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
        next_rescan = time.monotonic() + self.store.rescan_interval
        while True:
            if self.needs_snapshot:
                self.needs_snapshot = False
                self.pending.clear()
                self.known = self.store.scan(self.prefix)
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
                self.store._inotify.check()
                self._reconcile(self.store.kv_dir, "/")
                next_rescan = time.monotonic() + self.store.rescan_interval
            else:
                wait = next_rescan - time.monotonic()
                if self.deadlines:
                    wait = min(wait, min(self.deadlines.values()) - time.time())
                with anyio.move_on_after(max(wait, 0.0)):
                    await self.wake.wait()
                self.wake = anyio.Event()

    # -- turning observations into events -------------------------------------------------------------------
    def _set(self, key: str, record: _Record | None) -> None:
        old = self.known.get(key)
        if record is None:
            if old is not None:
                del self.known[key]
                self.out.append(StoreDelete(key=key))
        elif old is None or (old.value, old.lease_id) != (record.value, record.lease_id):
            self.known[key] = record
            self.out.append(StorePut(key=key, value=record.value))
        else:
            self.known[key] = record

    def _refresh_deadlines(self) -> None:
        leases = {r.lease_id for r in self.known.values() if r.lease_id}
        self.deadlines = {i: d for i, d in self.deadlines.items() if i in leases}
        for lease_id in leases - self.deadlines.keys():
            self._check_leases({lease_id})

    def _check_leases(self, lease_ids: set[int]) -> None:
        for lease_id in lease_ids:
            deadline = self.store.lease_deadline(lease_id)
            if deadline is not None:
                self.deadlines[lease_id] = deadline
                continue
            self.deadlines.pop(lease_id, None)
            for key, record in list(self.known.items()):
                if record.lease_id == lease_id:
                    self.store._remove_record_if_unchanged(self.store.record_path(key), record)
                    self._set(key, None)

    def _reconcile(self, directory: Path, dir_prefix: str) -> None:
        """Make ``known`` match the disk for the watched keys under ``directory`` (keys ``dir_prefix...``)."""
        if self.prefix.startswith(dir_prefix):  # the watched directory or one above it: all of the watch
            prefix, under = self.prefix, None
        else:
            prefix, under = dir_prefix, directory
        found = self.store.scan(prefix, under=under)
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
            if path.parent == self.store.lease_dir:
                name = path.name
                if name.endswith(LEASE_SUFFIX):
                    with suppress(ValueError):
                        leases.add(int(name[: -len(LEASE_SUFFIX)], 16))
                continue
            if path.name.startswith("."):
                continue  # a temporary file: its rename or link is the event that counts
            key = self.store.key_of(path)
            if key is not None:
                if key.startswith(self.prefix):
                    self._set(key, self.store.live_record(path, deadlines))
                continue
            dir_prefix = self.store._dir_key(path)
            if dir_prefix is None:
                self.store._warn_once(path, "ignoring %s: not a file name dyndisc writes", path)
            elif dir_prefix.startswith(self.prefix) or self.prefix.startswith(dir_prefix):
                # A directory came or went: files made in it before inotify watched it fired no event.
                self._reconcile(path, dir_prefix)
        self._check_leases(leases & self.deadlines.keys())
        self._refresh_deadlines()


def _read_regular_file(path: Path) -> tuple[bytes, os.stat_result]:
    """Read a small regular file without following a symlink or blocking on a FIFO planted in the root."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise OSError(f"{path} is {info.st_size} bytes, more than any record ({MAX_FILE_BYTES})")
        return os.read(fd, info.st_size), info  # files are replaced whole, never grown in place
    finally:
        os.close(fd)


def _mkdirs(path: Path) -> None:
    """``mkdir -p`` with mode 0700 at every level it creates (``os.makedirs`` would not)."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        with suppress(FileExistsError):
            directory.mkdir(mode=0o700)


def from_env() -> KvDiscovery:
    """The ``file`` backend: a :class:`FileStore` at ``DYN_FILE_KV``."""
    try:
        settings = FileSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"DYN_FILE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ConfigurationError(f"invalid file backend settings: {problems}") from None
    return KvDiscovery(FileStore(settings.kv, rescan_interval=settings.rescan_interval))
