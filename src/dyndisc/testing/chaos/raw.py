"""The raw store read as the history's records, by a parser of the chaos run's own.

The checker does not take dyndisc's word for what the store holds: a bug shared by dyndisc's read path and
its watch path would be invisible if the truth were dyndisc's own ``list()``. Each target reads its store
with a raw client of its own (a ``MemoryStore``'s keys, an etcd range and lease list through gRPC, a NATS KV
bucket, a directory listing, Kubernetes objects); this module turns those keys and values into records. It
is written from the contract (``docs/concepts.md``, "The watch contract"; ``docs/dynamo-interop.md``), not
from dyndisc's decoder, and imports nothing of dyndisc's:

* an instance lives at ``{root}/{namespace}/{component}/{endpoint}/{instance id, lower-case hex}``, its value
  a JSON object naming the same endpoint and id; ``dyndisc``'s root is ``/services``, ``dynamo-v1``'s is
  ``v1/instances`` (values tagged ``"type": "Endpoint"``) and ``v1/dyndisc_endpoints`` for draining records;
* a value that is not a readable record there (not UTF-8 JSON, a field of the wrong type, a name with ``/``,
  ``.`` or a control character, an id that is not an unsigned 64-bit integer, a key spelled otherwise than
  the record's) is **unreadable**: listed as such, never as an instance;
* an entry of bucket ``b`` lives at ``/b/<key>`` (``dyndisc``) or ``b/<key>`` (``dynamo-v1``), its value a
  JSON object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dyndisc.testing.chaos.history import RECORD_FIELDS, Record, canonical_json, canonical_record

#: The buckets of the chaos workload's entries: its own (keys ``<namespace>/<worker>/<name>``), model cards
#: and event channels (in the reference's buckets and keys).
CHAOS_BUCKET = "v1/chaos"
MODEL_BUCKET = "v1/mdc"
CHANNEL_BUCKET = "v1/event_channels"
LAYOUTS = ("dyndisc", "dynamo-v1")

_MAX_ID = 2**64 - 1
#: A name: 1-128 characters, none of ``/``, ``.``, a control character or a lone surrogate.
_NAME = re.compile(r"[^/.\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,128}")


@dataclass(frozen=True)
class RawLayout:
    """Where one key layout keeps instances and entries."""

    name: str
    root: str
    #: Where draining records go (``dynamo-v1``), or ``None``.
    side_root: str | None
    #: What comes before a bucket's name in an entry's key.
    entry_base: str

    def instance_prefixes(self, namespace: str) -> list[str]:
        """The key prefixes holding the instances of ``namespace``."""
        roots = [self.root] + ([self.side_root] if self.side_root else [])
        return [f"{root}/{namespace}/" for root in roots]

    def endpoint_prefix(self, endpoint: str) -> str:
        """The key prefix of one endpoint's (ready) instances (``endpoint`` is ``ns.comp.ep``)."""
        return f"{self.root}/{endpoint.replace('.', '/')}/"

    def endpoint_prefixes(self, endpoint: str) -> list[str]:
        """The key prefixes of one endpoint's instances, draining ones included."""
        roots = [self.root] + ([self.side_root] if self.side_root else [])
        return [f"{root}/{endpoint.replace('.', '/')}/" for root in roots]

    def entry_prefix(self, bucket: str) -> str:
        """The key prefix of the entries of ``bucket``."""
        return f"{self.entry_base}{bucket}/"

    def entry_prefixes(self, namespace: str) -> list[tuple[str, str]]:
        """``(bucket, key prefix)`` of every entry the chaos workload of ``namespace`` writes."""
        return [
            (CHAOS_BUCKET, f"{self.entry_prefix(CHAOS_BUCKET)}{namespace}/"),
            (MODEL_BUCKET, f"{self.entry_prefix(MODEL_BUCKET)}{namespace}/"),
            (CHANNEL_BUCKET, f"{self.entry_prefix(CHANNEL_BUCKET)}namespace/{namespace}/"),
        ]

    def prefixes(self, namespace: str) -> list[str]:
        """Every key prefix the truth of ``namespace`` is read from."""
        return self.instance_prefixes(namespace) + [p for _, p in self.entry_prefixes(namespace)]


RAW_LAYOUTS = {
    "dyndisc": RawLayout("dyndisc", "/services", None, "/"),
    "dynamo-v1": RawLayout("dynamo-v1", "v1/instances", "v1/dyndisc_endpoints", ""),
}


@dataclass
class RawTruth:
    """The raw store as records: instances and entries (see :class:`~.history.History`), the keys that hold
    no readable record, and the leases the server holds."""

    instances: dict[str, str] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    leases: set[int] = field(default_factory=set)
    #: Instances held under both roots of the dynamo-v1 layout: the copy not read (the main root's).
    doubled: dict[str, str] = field(default_factory=dict)

    def records(self) -> list[Record]:
        return sorted(self.instances.items())


def parse_items(layout: RawLayout, namespace: str, items: Mapping[str, bytes]) -> RawTruth:
    """Read the raw ``items`` of ``namespace`` (keys under :meth:`RawLayout.prefixes`) as records."""
    found = RawTruth()
    entry_prefixes = [
        (bucket, layout.entry_prefix(bucket), p) for bucket, p in layout.entry_prefixes(namespace)
    ]
    for key, value in sorted(items.items()):
        entry = next(((b, base) for b, base, p in entry_prefixes if key.startswith(p)), None)
        if entry is not None:
            parsed = parse_entry_value(value)
            if parsed is None:
                found.unreadable.append(key)
            else:
                found.entries[f"{entry[0]}/{key[len(entry[1]) :]}"] = parsed
            continue
        record = parse_instance(layout, key, value)
        if record is None:
            found.unreadable.append(key)
        elif record[0] in found.instances:
            # One instance under both roots (dynamo-v1): a draining record moves to the side root, so two
            # copies are a move half done. It reads as its side copy (as dyndisc's readers do); the other
            # copy is kept apart, for the checker to judge.
            side = layout.side_root is not None and key.startswith(layout.side_root + "/")
            kept, other = (
                (record[1], found.instances[record[0]]) if side else (found.instances[record[0]], record[1])
            )
            found.instances[record[0]] = kept
            found.doubled[record[0]] = other
        else:
            found.instances[record[0]] = record[1]
    return found


def parse_entry_value(value: bytes) -> str | None:
    """An entry's value as canonical JSON, or ``None`` if it is not a JSON object."""
    body = _json(value)
    return canonical_json(body) if isinstance(body, dict) else None


def parse_instance(layout: RawLayout, key: str, value: bytes) -> Record | None:
    """The record at ``key``, or ``None`` if it holds none that is readable under the contract."""
    side = layout.side_root is not None and key.startswith(layout.side_root + "/")
    body = _json(value)
    if not isinstance(body, dict):
        return None
    if layout.name == "dynamo-v1":
        if body.get("type") != "Endpoint":
            return None
        body = {k: v for k, v in body.items() if k != "registered_at"}  # not a field of the reference's
    fields = read_fields(body)
    if fields is None:
        return None
    if side:
        fields["readiness"] = "draining"
    names = (fields["namespace"], fields["component"], fields["endpoint"])
    root = layout.side_root if side else layout.root
    if key != f"{root}/{'/'.join(names)}/{fields['instance_id']:x}":
        return None
    return f"{'.'.join(names)}/{fields['instance_id']:x}", canonical_record(fields)


def read_fields(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The contract's fields of one record object, or ``None`` if one of them is not what the contract
    allows."""
    for name in ("namespace", "component", "endpoint"):
        value = body.get(name)
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            return None
    ident = body.get("instance_id")
    if type(ident) is not int or not 0 <= ident <= _MAX_ID:
        return None
    transport = body.get("transport")
    if transport is not None and not (
        isinstance(transport, dict)
        and len(transport) == 1
        and all(isinstance(k, str) and k and isinstance(v, str) for k, v in transport.items())
    ):
        return None
    if "metadata" in body and not isinstance(body["metadata"], dict):
        return None
    if "readiness" in body and body["readiness"] not in ("ready", "draining"):
        return None
    for name in ("device_type", "request_plane_codec"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            return None
    stamp = body.get("registered_at")
    if stamp is not None and (
        isinstance(stamp, bool) or not isinstance(stamp, int | float) or not 0 <= stamp < 1e11
    ):
        return None
    return {k: body[k] for k in RECORD_FIELDS if k in body}


def _json(value: bytes) -> Any:
    """``value`` as strict JSON (UTF-8, no ``NaN`` or ``Infinity``), or ``None``."""
    try:
        return json.loads(value.decode("utf-8"), parse_constant=_refuse)
    except (UnicodeDecodeError, ValueError):
        return None


def _refuse(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def owned_entries(entries: Iterable[str], namespace: str, worker: str, lease_ids: Iterable[int]) -> list[str]:
    """The entries (``bucket/key``) that belong to ``worker``: its own keys, its model cards (keys ending
    in one of its lease ids) and its event channels (publisher ids of its own, see :func:`publisher_id`)."""
    ids = {f"{i:x}" for i in lease_ids}
    own = f"{CHAOS_BUCKET}/{namespace}/{worker}/"
    publishers = {f"{publisher_id(worker, n):x}" for n in range(CHANNELS_PER_WORKER)}
    found = []
    for entry in entries:
        if entry.startswith(own):
            found.append(entry)
        elif entry.startswith(MODEL_BUCKET + "/"):
            segments = entry[len(MODEL_BUCKET) + 1 :].split("/")
            if len(segments) >= 4 and segments[3] in ids:
                found.append(entry)
        elif entry.startswith(CHANNEL_BUCKET + "/") and entry.rsplit("/", 1)[1] in publishers:
            found.append(entry)
    return found


#: Event channels a worker may publish (topics ``t0`` ...): each has a publisher id of its own.
CHANNELS_PER_WORKER = 2


def publisher_id(worker: str, topic: int) -> int:
    """The publisher id of ``worker``'s channel of topic ``t<topic>``: fixed, so that the run can tell whose
    channel a stored one is (the reference's ids are random)."""
    number = int(worker[1:]) if worker[1:].isdigit() else 0
    return 1 + number * CHANNELS_PER_WORKER + topic
