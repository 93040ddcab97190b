"""The history of one chaos run: what every actor did and saw, with the time it happened.

Everything the checker judges is here, in plain records that serialise to JSON (a failing run is saved and
printed): the operations the workload invoked and how they completed, every event every watcher saw, the
lease state every runtime reported, the faults the nemesis injected and healed, and the server's truth read
after the faults healed. Times are seconds since the run started (virtual seconds in the simulation).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._models import Instance

#: An instance as the history keeps it: ``"ns.comp.ep/<id hex>"`` (the key) and its record (JSON text).
Record = tuple[str, str]


def key_of(instance: Instance) -> str:
    """``ns.comp.ep/<id hex>``: an instance's key as the history writes it."""
    return f"{instance.endpoint_id}/{instance.instance_id:x}"


def record_of(instance: Instance) -> Record:
    """An instance as the history keeps it: its key and its whole record, but for ``registered_at`` (which
    instances do not compare either, and the CLI's JSON prints to the millisecond)."""
    if instance.registered_at is not None:
        instance = instance.replace(registered_at=None)
    return key_of(instance), instance.to_json().decode()


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
    """One event one watcher saw: ``kind`` is ``resync``, ``added`` or ``removed``."""

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
        return cls(watcher, at, "removed", [(f"{event.endpoint}/{event.instance_id:x}", "")])


@dataclass
class LeaseReport:
    """A runtime's lease as it reported it (on start, on every change of id, on exit)."""

    runtime: str
    at: float
    instance_id: int | None
    state: str


@dataclass
class Fault:
    """A fault the nemesis injected (``start``) and healed (``end``, ``None`` for one that is instant)."""

    kind: str
    target: str
    start: float
    end: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class History:
    """Everything one run did and saw."""

    backend: str
    seed: int
    ttl: float
    duration: float
    operations: list[Operation] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    leases: list[LeaseReport] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    #: What a fresh reader listed after the faults healed and the workload went quiet, and when.
    truth: list[Record] = field(default_factory=list)
    truth_at: float = 0.0
    #: What a watcher started at that time saw first (its ``Resync``).
    late_watch: list[Record] = field(default_factory=list)
    #: The keys foreign writes damaged (overwritten or deleted): their owners cannot know.
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
        return {k: v for k, v in self.truth if scope is None or k.rsplit("/", 1)[0] == scope}

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

    def to_json(self) -> str:
        """The whole history as JSON text."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """A short hash of the history: two runs of one seed that replay exactly have the same digest."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def watcher_names(self) -> list[str]:
        """Every watcher that saw anything, in order of first event."""
        return list(dict.fromkeys(s.watcher for s in self.seen))
