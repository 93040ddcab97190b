"""Where the file backend keeps things under its root, and the few careful file operations it needs.

Layout under the root (``DYN_FILE_KV``; directories 0700, files 0600)::

    leases/{lease_id:016x}.lease          one per lease; its mtime is the last keep-alive, its content the TTL
    kv/{seg}/{seg}/.../{seg}.rec          one per key: a header naming the owning lease, then the value

A key ``/services/ns/comp/ep/1f`` is the file ``kv/services/ns/comp/ep/1f.rec``. Every key segment is
percent-encoded (anything but ``A-Z a-z 0-9 _ -`` becomes ``%XX`` of its UTF-8 bytes; an empty segment is a
lone ``%``), so ``.``, ``..`` and ``/`` can never leave the root, ``.rec`` files never clash with the
directories of longer keys, and names starting with ``.`` are free for temporary files.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from dyndisc.backends.kv.escape import SegmentEscaper

#: Suffix of record files; ``.`` never appears in an encoded segment, so it cannot clash with a directory.
RECORD_SUFFIX = ".rec"
LEASE_SUFFIX = ".lease"
#: Suffix a lease file takes when it is found expired (its tombstone): a watch can then tell an expiry from a
#: revoke, which removes the file.
EXPIRED_SUFFIX = ".expired"
#: First bytes of every record file, then the owning lease id in hex and a newline, then the value.
RECORD_MAGIC = b"dyndisc-record/1 lease="
#: Longest encoded segment: NAME_MAX (255 bytes) less the record suffix.
MAX_SEGMENT_BYTES = 255 - len(RECORD_SUFFIX)
#: Records larger than this are not ours (ours are at most 64 KiB); they are skipped unread.
MAX_FILE_BYTES = 1024 * 1024

_NAMES = SegmentEscaper("%")
#: Encode one key segment as a file name: reversible, never ``.``/``..``, never containing ``/``.
encode_segment = _NAMES.encode
#: Invert :func:`encode_segment`; ``None`` for a name it could not have produced.
decode_segment = _NAMES.decode


@dataclass(frozen=True, slots=True)
class Record:
    """A record file read from disk: its value and the lease that owns it."""

    value: bytes
    lease_id: int


class Corrupt:
    """A record file that is not one of ours (already warned about)."""


CORRUPT = Corrupt()


def encode_record(value: bytes, lease_id: int) -> bytes:
    """The content of a record file: the header naming the owning lease, then the value."""
    return RECORD_MAGIC + f"{lease_id:x}\n".encode() + value


def key_segments(key: str) -> list[str]:
    """The segments of ``key`` (which must start with ``/``)."""
    if not key.startswith("/"):
        raise ValueError(f"file backend keys must start with '/', got {key!r}")
    return key[1:].split("/")


class FileLayout:
    """The paths of one root: record files under ``kv/``, lease files under ``leases/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.kv_dir = root / "kv"
        self.lease_dir = root / "leases"

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

    def expired_path(self, lease_id: int) -> Path:
        """The tombstone of lease ``lease_id``, there for a while if it expired (not if it was revoked)."""
        return self.lease_dir / f"{lease_id:016x}{EXPIRED_SUFFIX}"

    def lease_of(self, path: Path) -> int | None:
        """The lease id a file in the lease directory is for, or ``None``."""
        if path.parent != self.lease_dir or not path.name.endswith(LEASE_SUFFIX):
            return None
        try:
            return int(path.name[: -len(LEASE_SUFFIX)], 16)
        except ValueError:
            return None

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

    def dir_key(self, path: Path) -> str | None:
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


class ForeignFile(OSError):
    """A file dyndisc did not write where one of its files belongs: a symlink, a FIFO, a socket, a directory
    or a file too big for a record. Unlike a read that fails for the reader's own trouble (``EIO``,
    ``EMFILE``), this says something about the file itself, the same to every reader."""


#: What ``open`` says of a symlink (with ``O_NOFOLLOW``) or a socket: the file itself is not one of ours.
_FOREIGN_ERRNOS = frozenset({errno.ELOOP, errno.ENXIO})


def read_regular_file(path: Path) -> tuple[bytes, os.stat_result]:
    """Read a small regular file without following a symlink or blocking on a FIFO planted in the root.

    Raises :class:`ForeignFile` for what is not a small regular file, and any other :class:`OSError` (the
    file is missing, or this process cannot read it now) as it came.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _FOREIGN_ERRNOS:
            raise ForeignFile(exc.errno, f"{exc.strerror} (not a regular file)", str(path)) from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ForeignFile(f"{path} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ForeignFile(f"{path} is {info.st_size} bytes, more than any record ({MAX_FILE_BYTES})")
        return os.read(fd, info.st_size), info  # files are replaced whole, never grown in place
    finally:
        os.close(fd)


def write_temp_file(directory: Path, prefix: str, body: bytes, mode: int) -> Path:
    """A new file ``{prefix}{random}`` in ``directory`` holding ``body`` (``mode`` less the umask), to be
    renamed or linked into place: a reader never sees a half-written record."""
    temp = directory / f"{prefix}{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    return temp


def remove_if(path: Path, grave_prefix: str, dead: Callable[[Path], bool]) -> bool:
    """Remove ``path`` if ``dead`` holds for the very file removed; whether it did.

    A reader decides that a file is dead (its lease ended, or it expired) from a look a moment old, and a
    writer may replace or touch the file in that moment: checking again and then unlinking leaves the same
    gap between the check and the unlink. So the file is first renamed aside to a temporary name
    (``grave_prefix`` + random, which every reader skips), one atomic step after which no writer reaches
    it by its name, and ``dead`` judges the file that was actually taken. A file found alive after all
    goes back under its name (unless a newer one took the name meanwhile, which then wins): for that
    instant it was absent, which a watcher may see as a removal followed by the same file again, but a
    live file is never lost.
    """
    grave = path.with_name(f"{grave_prefix}{secrets.token_hex(8)}")
    try:
        os.rename(path, grave)
    except (FileNotFoundError, NotADirectoryError):
        return False  # someone else removed it first
    removed = False
    try:
        removed = dead(grave)
    finally:
        if not removed:  # alive, or it could not be judged: back under its name
            with suppress(FileExistsError, FileNotFoundError):
                os.link(grave, path)
        with suppress(FileNotFoundError):
            os.unlink(grave)
    return removed


def mkdirs(path: Path) -> None:
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
