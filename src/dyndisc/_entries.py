"""Metadata entries: the small JSON documents a deployment shares beside its endpoint instances.

The reference runtime keeps them in named *buckets* of its key-value store (``v1/mdc`` for model deployment
cards, ``v1/event_channels`` for event channels ...), one entry per key, each a JSON object. dyndisc keeps
the same shape: a :class:`MetadataEntry` is a bucket, a key and an immutable JSON object, and a watch of a
bucket yields :class:`EntryResync` first, then :class:`EntryAdded` (also an upsert) and
:class:`EntryRemoved`, like a watch of instances.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from dyndisc._errors import InvalidNameError, InvalidRecordError, RecordTooLargeError
from dyndisc._hex import dataclass_repr
from dyndisc._metadata import FrozenDict, freeze_metadata, freeze_wire

__all__ = [
    "MAX_ENTRY_BYTES",
    "EntryAdded",
    "EntryEvent",
    "EntryRemoved",
    "EntryResync",
    "MetadataEntry",
    "validate_bucket",
    "validate_entry_key",
]

#: Largest accepted entry (its compact JSON): a model deployment card is a few kilobytes, and a Kubernetes
#: worker keeps all of its entries in one resource (at most about 1.5 MB).
MAX_ENTRY_BYTES = 256 * 1024
#: Longest accepted entry key, in characters.
MAX_KEY_LENGTH = 1024

_BUCKET_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: What no key segment may hold: control characters and lone surrogates (a key is text everywhere).
_BAD_KEY_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def validate_bucket(name: object) -> str:
    """Return ``name`` if it is a valid bucket name, else raise :class:`~dyndisc.InvalidNameError`.

    A bucket is one or more ``/``-separated segments of letters, digits, ``_`` and ``-``: the reference's
    buckets are ``v1/mdc``, ``v1/event_channels``, ``v1/event_sources``.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"a bucket name must be a string, got {type(name).__name__}")
    segments = name.split("/")
    if len(segments) > 4 or not all(_BUCKET_SEGMENT.fullmatch(s) for s in segments):
        raise InvalidNameError(
            f"invalid bucket name {name!r}: a bucket is 1-4 '/'-separated segments of 1-64 letters, digits, "
            "'_' and '-', such as 'v1/mdc'"
        )
    return name


def validate_entry_key(key: object) -> str:
    """Return ``key`` if it is a valid entry key, else raise :class:`~dyndisc.InvalidNameError`.

    A key is ``/``-separated segments, none empty, ``.`` or ``..`` (a key never leaves its bucket), without
    control characters, at most :data:`MAX_KEY_LENGTH` characters: ``ns/comp/ep/1f`` is one.
    """
    if not isinstance(key, str):
        raise InvalidNameError(f"an entry key must be a string, got {type(key).__name__}")
    reason = None
    if not key:
        reason = "it is empty"
    elif len(key) > MAX_KEY_LENGTH:
        reason = f"it is {len(key)} characters long (at most {MAX_KEY_LENGTH})"
    elif any(s in ("", ".", "..") for s in key.split("/")):
        reason = "a segment is empty, '.' or '..'"
    elif found := _BAD_KEY_CHAR.search(key):
        reason = f"it contains {found.group()!r}"
    if reason is not None:
        raise InvalidNameError(
            f"invalid entry key {key!r}: {reason}; a key is '/'-separated non-empty segments such as "
            "'ns/comp/ep/1f'"
        )
    return key


@dataclass(frozen=True, slots=True, init=False)
class MetadataEntry:
    """One entry of a bucket: its key and its value, an immutable JSON object. Equal when all three are."""

    bucket: str
    key: str
    value: FrozenDict

    def __init__(self, bucket: str, key: str, value: Mapping[str, Any]) -> None:
        object.__setattr__(self, "bucket", validate_bucket(bucket))
        object.__setattr__(self, "key", validate_entry_key(key))
        object.__setattr__(self, "value", freeze_metadata(value, f"entry {bucket}/{key}"))

    def __hash__(self) -> int:
        return hash((self.bucket, self.key))

    def to_json(self) -> bytes:
        """The value as compact JSON (what the stores hold); raise past :data:`MAX_ENTRY_BYTES`."""
        data = json.dumps(self.value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        if len(data) > MAX_ENTRY_BYTES:
            raise RecordTooLargeError(
                f"entry {self.bucket}/{self.key} is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES} bytes"
            )
        return data

    @classmethod
    def from_json(cls, bucket: str, key: str, data: bytes | str) -> MetadataEntry:
        """Read a stored value; raise :class:`~dyndisc.InvalidRecordError` if it is not a JSON object."""
        try:
            value = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRecordError(f"entry {bucket}/{key} is not JSON: {exc}") from None
        return cls.from_value(bucket, key, value)

    @classmethod
    def from_value(cls, bucket: str, key: str, value: object) -> MetadataEntry:
        """An entry of a value already parsed from JSON; :class:`~dyndisc.InvalidRecordError` if the value is
        not a JSON object (or nested too deep)."""
        if not isinstance(value, dict):
            raise InvalidRecordError(f"entry {bucket}/{key} is a JSON {type(value).__name__}, not an object")
        try:
            frozen = freeze_wire(value)
        except ValueError as exc:
            raise InvalidRecordError(f"entry {bucket}/{key}: {exc}") from None
        entry = object.__new__(cls)
        object.__setattr__(entry, "bucket", validate_bucket(bucket))
        object.__setattr__(entry, "key", validate_entry_key(key))
        object.__setattr__(entry, "value", frozen)
        return entry

    def __str__(self) -> str:
        return f"{self.bucket}/{self.key}"

    def __repr__(self) -> str:
        # The reference stores ids as JSON numbers: shown in hex here, as the key and every table show them.
        return dataclass_repr(self, ("bucket", "key", "value"))


@dataclass(frozen=True, slots=True)
class EntryResync:
    """Every entry the watch covers, authoritatively: replace whatever you had."""

    entries: tuple[MetadataEntry, ...]
    type: ClassVar[Literal["resync"]] = "resync"

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))


@dataclass(frozen=True, slots=True)
class EntryAdded:
    """An entry appeared or its value changed (an upsert: replace the one with the same key)."""

    entry: MetadataEntry
    type: ClassVar[Literal["added"]] = "added"


@dataclass(frozen=True, slots=True)
class EntryRemoved:
    """An entry is gone (deleted, or its lease ended)."""

    bucket: str
    key: str
    type: ClassVar[Literal["removed"]] = "removed"


#: A watch event of a bucket: the first one of every watch is an :class:`EntryResync`.
EntryEvent = EntryResync | EntryAdded | EntryRemoved
