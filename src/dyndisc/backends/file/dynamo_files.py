"""The reference runtime's files (its ``DYN_DISCOVERY_BACKEND=file`` store, Dynamo 1.6.1), as every reader
sees them: key <-> file name, which files are live, reading a file and listing a prefix.

A key's bucket (its first two segments) is a directory, the rest of the key its file name, every byte but
``[A-Za-z0-9]`` as ``%XX``. A file is live while its mtime is less than the expiry old; a reader deletes an
older one (as the reference's readers do), and skips temporary ``.tmp_*`` files, removing those a writer
that died mid-write left behind. Both the store (:mod:`dyndisc.backends.file.dynamo_store`, which writes)
and its watch (:mod:`dyndisc.backends.file.dynamo_watch`) read through :class:`DynamoFiles`.
"""

from __future__ import annotations

import logging
import os
import stat
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from dyndisc.backends.file.layout import remove_if

log = logging.getLogger("dyndisc.file")

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


class DynamoFiles:
    """The reference's files under ``root``, read as its readers do: a file older than ``expiry`` seconds
    is dead (and deleted when seen)."""

    def __init__(self, root: Path, expiry: float) -> None:
        self.root = root
        self.expiry = expiry

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


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
