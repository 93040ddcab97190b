"""The history of one chaos run: what every actor did and saw, with the time it happened.

Everything the checker judges is here, in plain records that serialise to JSON (a failing run is saved and
printed): the operations the workload invoked and how they completed (the runtime's own calls to its backend
among them: every lease grant and write), the renewals the server answered, every event every watcher saw,
the faults the nemesis injected and healed, what the raw store held when a clean exit or an unregistration
returned, and the raw store read at the quiet point by a reader of the chaos run's own (not through
dyndisc). Times are seconds since the run started (virtual seconds in the simulation).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._models import Instance

#: An instance as the history keeps it: ``"ns.comp.ep/<id hex>"`` (the key) and its record (canonical JSON
#: text, see :func:`canonical_record`). An entry: ``"<bucket>/<key>"`` and its value (canonical JSON).
Record = tuple[str, str]

#: The fields of an instance record the history compares, in the contract's names. ``registered_at`` is left
#: out (instances do not compare it either, and the CLI prints it to the millisecond); so are fields a layout
#: adds of its own (the reference's ``type``).
RECORD_FIELDS = (
    "namespace",
    "component",
    "endpoint",
    "instance_id",
    "transport",
    "device_type",
    "request_plane_codec",
    "metadata",
    "readiness",
)


def canonical_record(body: Any) -> str:
    """One instance record as compact JSON with sorted keys and nothing that says "default": no null fields,
    no empty metadata, no ``readiness`` of ``ready``. Every reader of a record (a watcher through dyndisc,
    the raw reader of the truth, the oracle) writes it this way, so that equal records are equal text."""
    kept = {}
    for name in RECORD_FIELDS:
        value = body.get(name)
        if value is None or (name == "metadata" and not value) or (name == "readiness" and value == "ready"):
            continue
        kept[name] = value
    return canonical_json(kept)


#: The one encoder of canonical JSON (``json.dumps`` with options would build one per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: What a history's digest hashes: its JSON as made (a replay makes every dict in the same order).
_DIGESTED = json.JSONEncoder(separators=(",", ":"))


def canonical_json(value: Any) -> str:
    """JSON text with sorted keys and no spaces: equal values, equal text."""
    return _CANONICAL.encode(value)


def key_of(instance: Instance) -> str:
    """``ns.comp.ep/<id hex>``: an instance's key as the history writes it."""
    return f"{instance.endpoint_id}/{instance.instance_id:x}"


def record_of(instance: Instance) -> Record:
    """An instance as the history keeps it: its key and its canonical record."""
    return key_of(instance), canonical_record(instance.to_dict())


def lease_of_key(key: str) -> int:
    """The instance id (on the key-value backends, the lease id) of a history key."""
    return int(key.rsplit("/", 1)[1], 16)


def endpoint_of_key(key: str) -> str:
    """The endpoint (``ns.comp.ep``) of a history key."""
    return key.rsplit("/", 1)[0]


def first_view(event: DiscoveryEvent) -> list[Record]:
    """What a watch's first event shows: its ``Resync``'s records (anything else says so, and disagrees)."""
    if isinstance(event, Resync):
        return sorted(record_of(i) for i in event.instances)
    return [(f"(the watch began with {event.type}, not a resync)", "")]


@dataclass
class Operation:
    """One operation of the workload: invoked at ``start``, completed (or failed) at ``end``."""

    actor: str
    action: str
    args: dict[str, Any]
    start: float
    end: float | None = None
    ok: bool | None = None
    result: Any = None
    error: str | None = None


@dataclass
class Seen:
    """One event one watcher saw: ``kind`` is ``resync``, ``added`` or ``removed`` (whose record is the
    reason the watch gave, ``""`` for none)."""

    watcher: str
    at: float
    kind: str
    records: list[Record]

    @classmethod
    def of(cls, watcher: str, at: float, event: DiscoveryEvent) -> Seen:
        if isinstance(event, Resync):
            return cls(watcher, at, "resync", sorted(record_of(i) for i in event.instances))
        if isinstance(event, Added):
            return cls(watcher, at, "added", [record_of(event.instance)])
        assert isinstance(event, Removed)
        reason = event.reason.value if event.reason is not None else ""
        return cls(watcher, at, "removed", [(f"{event.endpoint}/{event.instance_id:x}", reason)])


@dataclass
class LeaseReport:
    """A runtime's lease as it reported it (held, replaced, killed, failed, exited): for the reader of a
    history; the checker judges leases from the runtime's grants and the store, not from these."""

    runtime: str
    at: float
    instance_id: int | None
    state: str


@dataclass
class Fault:
    """A fault the nemesis injected (``start``) and healed (``end``, ``None`` for one that is instant); a
    worker's ``pause`` (SIGSTOP) and ``kill`` (SIGKILL) are recorded here too, with the worker as target."""

    kind: str
    target: str
    start: float
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Probe:
    """What the raw store held of one runtime when one of its operations returned: ``instances`` (history
    keys under any of its leases, of the endpoint for an unregistration) and ``entries`` (``bucket/key`` of
    the entries it wrote)."""

    at: float
    actor: str
    action: str
    instances: list[str] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    #: The endpoint an unregistration was of (``ns.comp.ep``), else ``""``.
    endpoint: str = ""


@dataclass
class History:
    """Everything one run did and saw."""

    backend: str
    seed: int
    ttl: float
    duration: float
    #: The key layout the run's runtimes used (``dyndisc`` or ``dynamo-v1``).
    layout: str = "dyndisc"
    operations: list[Operation] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    leases: list[LeaseReport] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    #: When the server answered each renewal, by ``"<runtime>/<lease hex>"``.
    renewals: dict[str, list[float]] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    #: The raw store at the quiet point, read with the run's own client and parser: the instances, ...
    truth: list[Record] = field(default_factory=list)
    #: ... the entries (``bucket/key`` and the value's canonical JSON), ...
    truth_entries: list[Record] = field(default_factory=list)
    #: ... the keys whose value is not a readable record under the contract (raw store keys), ...
    truth_unreadable: list[str] = field(default_factory=list)
    #: ... the leases the server holds, ...
    truth_leases: list[int] = field(default_factory=list)
    #: ... and the second copy of an instance held under both roots of the dynamo-v1 layout.
    truth_doubled: list[Record] = field(default_factory=list)
    truth_at: float = 0.0
    #: What dyndisc's own ``list()`` and a dyndisc watcher started at the quiet point (its ``Resync``) saw.
    listed: list[Record] = field(default_factory=list)
    late_watch: list[Record] = field(default_factory=list)
    #: The keys foreign writes damaged (overwritten): their owners cannot know.
    damaged: list[str] = field(default_factory=list)
    #: Watchers not expected to converge (killed on purpose, or paused at the end).
    gone_watchers: list[str] = field(default_factory=list)
    #: The endpoint a watcher follows (``ns.comp.ep``), for watchers that follow one (clients).
    scopes: dict[str, str] = field(default_factory=dict)
    #: Watchers whose process ended on its own (nobody stopped or killed it), and when.
    died: dict[str, float] = field(default_factory=dict)

    def truth_for(self, watcher: str) -> dict[str, str]:
        """The truth as ``watcher`` should see it (one endpoint's part of it, for a client)."""
        scope = self.scopes.get(watcher)
        return {k: v for k, v in self.truth if scope is None or endpoint_of_key(k) == scope}

    def operation(self, actor: str, action: str, args: dict[str, Any], start: float) -> Operation:
        """Record an operation invoked now; complete it with :meth:`done`."""
        op = Operation(actor, action, args, start)
        self.operations.append(op)
        return op

    @staticmethod
    def done(op: Operation, at: float, *, result: Any = None, error: BaseException | None = None) -> None:
        """Complete ``op``: ``ok`` unless ``error``."""
        op.end = at
        op.ok = error is None
        op.result = result
        op.error = None if error is None else f"{type(error).__name__}: {error}"

    def renewed(self, runtime: str, lease: int, at: float) -> None:
        """The server answered a renewal of ``runtime``'s ``lease`` at ``at``."""
        self.renewals.setdefault(f"{runtime}/{lease:x}", []).append(at)

    def to_json(self) -> str:
        """The whole history as JSON text."""
        return json.dumps(_plain(self), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """A short hash of the history: two runs of one seed that replay exactly have the same digest (the
        fields in their order, as a replay makes them: no sorting needed)."""
        return hashlib.sha256(_DIGESTED.encode(_plain(self)).encode()).hexdigest()[:16]

    def watcher_names(self) -> list[str]:
        """Every watcher that saw anything, in order of first event."""
        return list(dict.fromkeys(s.watcher for s in self.seen))


def _plain(value: Any) -> Any:
    """``value`` as JSON-native data: what ``dataclasses.asdict`` gives, without its deep copies (a history
    holds tens of thousands of records, and a seed's digest is taken at every run). Lists of plain values and
    the records' tuples are left to ``json``."""
    if hasattr(value, "__dataclass_fields__"):  # fields in their order: a dataclass sets them so
        return {name: _plain(field_) for name, field_ in vars(value).items()}
    if isinstance(value, list) and value and hasattr(value[0], "__dataclass_fields__"):
        return [_plain(v) for v in value]
    return value
