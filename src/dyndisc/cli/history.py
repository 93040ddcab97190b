"""What happened, not only what is: the timeline of a fleet, derived from a watch, and a bounded ring of it.

A :class:`Timeline` turns a watch's events into records a person reads: ``joined``, ``left`` (with the
reason where the backend knows it), ``ready`` / ``draining`` (a readiness change), ``changed`` (another
field of the record), ``replaced`` (a worker that came back under a new lease: the same endpoint and
transport under a new id), and ``stale`` / ``resumed`` (the view lost its server, and got it back, with how
long that lasted). A :class:`History` keeps the last records, numbered, for ``dyndisc ui`` (its timeline,
each instance's history, ``/api/events``); ``dyndisc events`` prints them, or derives the same records from
a fresh watch.

One record (JSON, as ``/api/events`` and ``dyndisc events --json`` give it)::

    {"seq": 12, "at": "2026-12-01T10:00:02.120+00:00", "ts": 1796119202.12, "kind": "left",
     "endpoint": "ns.comp.ep", "instance_id": "1a2b", "key": "ns.comp.ep/1a2b", "reason": "expired"}
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._models import EndpointId, Instance, InstanceQuery, Readiness
from dyndisc.cli.output import iso

Record = dict[str, Any]

#: Every kind of record, in the order the page lists its filters.
KINDS = ("joined", "left", "ready", "draining", "changed", "replaced", "stale", "resumed", "started")
#: Records the UI keeps; the oldest go first.
HISTORY_SIZE = 5_000
#: How long after an instance left a new id at its endpoint and transport counts as its lease replaced.
REPLACED_WITHIN = 120.0


def worker_of(instance: Instance) -> tuple[str, str] | None:
    """What stays the same when a worker's lease is replaced: its endpoint and its transport, with its own
    id taken out of the address (the reference's TCP paths hold it). ``None`` without a transport."""
    if instance.transport is None:
        return None
    address = re.sub(rf"(?<![0-9a-f]){instance.instance_id:x}(?![0-9a-f])", "*", str(instance.transport))
    return str(instance.endpoint_id), address


def _key(endpoint: EndpointId | str, instance_id: int) -> str:
    return f"{endpoint}/{instance_id:x}"


class Timeline:
    """Records from a watch's events: :meth:`apply` returns those one event makes, :meth:`stale` and
    :meth:`resumed` those of the view's staleness. ``clock`` is wall time (records carry when they
    happened)."""

    def __init__(self, query: InstanceQuery, *, clock: Callable[[], float] = time.time) -> None:
        self.query = query
        self.clock = clock
        self.instances: dict[tuple[EndpointId, int], Instance] = {}
        self._left: deque[tuple[float, tuple[str, str], int]] = deque()
        self._started = False

    def _record(self, kind: str, instance: Instance | None = None, **fields: Any) -> Record:
        now = self.clock()
        record: Record = {"at": iso(now), "ts": round(now, 3), "kind": kind}
        if instance is not None:
            record.update(
                endpoint=str(instance.endpoint_id),
                instance_id=f"{instance.instance_id:x}",
                key=_key(instance.endpoint_id, instance.instance_id),
                transport=str(instance.transport) if instance.transport is not None else None,
                readiness=instance.readiness.value,
            )
        record.update(fields)
        return record

    def apply(self, event: DiscoveryEvent) -> list[Record]:
        """The records ``event`` makes (none for a record written again unchanged)."""
        if isinstance(event, Resync):
            return self._resync(event.instances)
        if isinstance(event, Added):
            return self._added(event.instance)
        if isinstance(event, Removed):
            gone = self.instances.pop(event.key, None)
            reason = event.reason.value if event.reason is not None else None
            return [self._left_record(gone, event.endpoint, event.instance_id, reason)]
        return []

    def _resync(self, instances: Iterable[Instance]) -> list[Record]:
        fresh = {i.key: i for i in instances}
        if not self._started:
            # The first view is where the history starts: what was already there did not join now.
            self._started = True
            self.instances = fresh
            return [self._record("started", query=str(self.query), live=len(fresh))]
        records = []
        for key, gone in list(self.instances.items()):
            if key not in fresh:
                del self.instances[key]
                # Gone while the watch was away: the backend cannot say why any more.
                records.append(self._left_record(gone, gone.endpoint_id, gone.instance_id, None, away=True))
        for instance in fresh.values():
            records += self._added(instance)
        return records

    def _left_record(
        self, gone: Instance | None, endpoint: EndpointId, instance_id: int, reason: str | None, **extra: Any
    ) -> Record:
        if gone is None:
            record = self._record("left", endpoint=str(endpoint), instance_id=f"{instance_id:x}")
            record["key"] = _key(endpoint, instance_id)
        else:
            record = self._record("left", gone)
            worker = worker_of(gone)
            if worker is not None:
                self._left.append((self.clock(), worker, gone.instance_id))
        record["reason"] = reason
        record.update(extra)
        return record

    def _added(self, instance: Instance) -> list[Record]:
        before = self.instances.get(instance.key)
        self.instances[instance.key] = instance
        if before is None:
            previous = self._replaced(instance)
            if previous is not None:
                return [self._record("replaced", instance, previous=f"{previous:x}")]
            return [self._record("joined", instance)]
        if before.readiness is not instance.readiness:
            kind = "ready" if instance.readiness is Readiness.READY else "draining"
            return [self._record(kind, instance)]
        changed = [
            name
            for name in ("transport", "metadata", "device_type", "request_plane_codec")
            if getattr(before, name) != getattr(instance, name)
        ]
        return [self._record("changed", instance, fields=changed)] if changed else []

    def _replaced(self, instance: Instance) -> int | None:
        """The id this instance's worker had before, if it left (or is still listed) at the same endpoint and
        transport under another id, lately."""
        worker = worker_of(instance)
        if worker is None:
            return None
        now = self.clock()
        while self._left and now - self._left[0][0] > REPLACED_WITHIN:
            self._left.popleft()
        for n, (_, seen, old_id) in enumerate(reversed(self._left)):
            if seen == worker and old_id != instance.instance_id:
                del self._left[len(self._left) - 1 - n]
                return old_id
        for other in self.instances.values():
            if other.instance_id != instance.instance_id and worker_of(other) == worker:
                return other.instance_id  # the new lease registered before the old one's record went
        return None

    def stale(self, since: float, cause: str | None = None) -> Record:
        """The view stopped being current at wall time ``since``."""
        record = self._record("stale", cause=cause)
        record["since"] = iso(since)
        return record

    def resumed(self, lasted: float) -> Record:
        """The view is current again, after ``lasted`` seconds."""
        return self._record("resumed", lasted=round(lasted, 1))


class History:
    """The last ``capacity`` records, numbered from 1 in the order they were added."""

    def __init__(self, capacity: int = HISTORY_SIZE) -> None:
        self.records: deque[Record] = deque(maxlen=capacity)
        self.next_seq = 1

    def add(self, record: Record) -> Record:
        """Number ``record`` and keep it (the oldest record goes when the ring is full)."""
        record["seq"] = self.next_seq
        self.next_seq += 1
        self.records.append(record)
        return record

    @property
    def first_seq(self) -> int:
        """The number of the oldest record kept (earlier ones were dropped)."""
        return self.records[0]["seq"] if self.records else self.next_seq

    def select(
        self, *, since: float | None = None, after: int | None = None, key: str | None = None
    ) -> list[Record]:
        """Records at or after wall time ``since``, numbered after ``after``, of the instance ``key``
        (``ns.comp.ep/<id>``; a replacement counts for both its ids)."""
        found = []
        for record in self.records:
            if since is not None and record["ts"] < since:
                continue
            if after is not None and record["seq"] <= after:
                continue
            if key is not None and key not in (record.get("key"), _previous_key(record)):
                continue
            found.append(record)
        return found


def _previous_key(record: Record) -> str | None:
    previous = record.get("previous")
    return f"{record['endpoint']}/{previous}" if previous is not None else None


def record_line(record: Record, stamp: str) -> str:
    """One record as ``dyndisc events`` prints it: ``<stamp> <kind> <what> <details>``."""
    kind = record["kind"]
    head = f"{stamp} {kind:<8}"
    if kind == "started":
        return f"{head} watching {record.get('query', '*')}: {record.get('live', 0)} live"
    if kind == "stale":
        cause = f": {record['cause']}" if record.get("cause") else ""
        return f"{head} the view is stale (the watch lost its server){cause}"
    if kind == "resumed":
        return f"{head} the view is current again after {record.get('lasted', 0):g}s"
    what = f"{record['endpoint']} {record['instance_id']}"
    if kind == "left":
        reason = record.get("reason") or (
            "gone while the watch was away" if record.get("away") else "removed"
        )
        return f"{head} {what} ({reason})"
    if kind == "replaced":
        return f"{head} {what} (was {record['previous']}: a new lease) {record.get('transport') or '-'}"
    if kind == "changed":
        return f"{head} {what} ({', '.join(record.get('fields', ()))})"
    transport = record.get("transport") or "-"
    if kind == "joined" and record.get("readiness") == "draining":
        return f"{head} {what} {transport} (draining)"  # joining draining is worth saying; ready is the rule
    return f"{head} {what} {transport}"


__all__ = ["HISTORY_SIZE", "KINDS", "History", "Record", "Timeline", "record_line", "worker_of"]
