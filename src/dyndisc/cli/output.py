"""What the command line prints: one JSON schema for ``list --json``, ``get`` and ``watch --json``, and
tables whose columns fit their data, with colour on a terminal.

The JSON shape of an instance::

    {"endpoint": "ns.comp.ep", "instance_id": "1a2b3c", "transport": "tcp://10.0.0.5:9000",
     "metadata": {...}, "readiness": "ready", "registered_at": "2026-11-30T20:55:01.123+00:00"}

Ids are hex strings, as the tables print them and ``get`` takes them (64-bit ids overflow JSON numbers in
many readers). A watch event adds ``"event"`` (``resync``, ``added``, ``removed``) and ``"at"``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from dyndisc._cards import EventChannel, ModelCard
from dyndisc._entries import EntryAdded, EntryRemoved, EntryResync, MetadataEntry
from dyndisc._events import Added, Removed, Resync
from dyndisc._models import Instance, Readiness


# -- JSON ---------------------------------------------------------------------------------------------------
def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 with its time zone (UTC), to the millisecond."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def instance_json(instance: Instance) -> dict[str, Any]:
    """The one JSON shape of an instance on the command line."""
    return {
        "endpoint": str(instance.endpoint_id),
        "instance_id": f"{instance.instance_id:x}",
        "transport": str(instance.transport) if instance.transport is not None else None,
        "metadata": instance.metadata,
        "readiness": instance.readiness.value,
        "registered_at": iso(instance.registered_at),
    }


def event_json(event: Resync | Added | Removed, at: float | None = None) -> dict[str, Any]:
    """A watch event as one line of ``watch --json``."""
    stamp = iso(time.time() if at is None else at)
    if isinstance(event, Resync):
        return {"event": "resync", "at": stamp, "instances": [instance_json(i) for i in event.instances]}
    if isinstance(event, Added):
        return {"event": "added", "at": stamp, "instance": instance_json(event.instance)}
    return {
        "event": "removed",
        "at": stamp,
        "endpoint": str(event.endpoint),
        "instance_id": f"{event.instance_id:x}",
        "reason": event.reason.value if event.reason is not None else None,
    }


def card_json(card: ModelCard) -> dict[str, Any]:
    """The JSON shape of a model deployment card (``dyndisc models --json``, the page's models view)."""
    body = card.card
    return {
        "endpoint": str(card.endpoint_id),
        "instance_id": f"{card.instance_id:x}",
        "model": card.display_name or card.slug,
        "lora": card.lora,
        "model_type": body.get("model_type"),
        "model_input": body.get("model_input"),
        "key": card.key,
        "card": body,
    }


def channel_scope(channel: EventChannel) -> str:
    """Where an event channel publishes: ``ns``, ``ns.comp`` or ``ns.comp.ep``."""
    return ".".join(p for p in (channel.namespace, channel.component, channel.endpoint) if p is not None)


def channel_address(channel: EventChannel) -> str:
    """How to reach a channel's publisher, as one string: ``Zmq tcp://10.0.0.5:5557``."""
    kind = channel.transport.get("kind", "?")
    config = channel.transport.get("config")
    where = config.get("endpoint") if isinstance(config, Mapping) else None
    return f"{kind} {where}" if isinstance(where, str) else str(kind)


def channel_json(channel: EventChannel) -> dict[str, Any]:
    """The JSON shape of an event channel (``dyndisc channels --json``, the page's channels view)."""
    return {
        "scope": channel_scope(channel),
        "topic": channel.topic,
        "publisher_id": f"{channel.publisher_id:x}",
        "address": channel_address(channel),
        "transport": channel.transport,
        "key": channel.key,
    }


def entry_json(entry: MetadataEntry) -> dict[str, Any]:
    """The JSON shape of a metadata entry (``dyndisc entries --json``)."""
    return {"bucket": entry.bucket, "key": entry.key, "value": entry.value}


def entry_event_json(
    event: EntryResync | EntryAdded | EntryRemoved, at: float | None = None
) -> dict[str, Any]:
    """An entry watch event as one line of ``dyndisc entries --watch --json``."""
    stamp = iso(time.time() if at is None else at)
    if isinstance(event, EntryResync):
        return {"event": "resync", "at": stamp, "entries": [entry_json(e) for e in event.entries]}
    if isinstance(event, EntryAdded):
        return {"event": "added", "at": stamp, "entry": entry_json(event.entry)}
    return {"event": "removed", "at": stamp, "bucket": event.bucket, "key": event.key}


def dumps(value: Any, *, pretty: bool = False) -> str:
    """JSON text, compact on one line (NDJSON) unless ``pretty``."""
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- text ---------------------------------------------------------------------------------------------------
def age(since: float | None, now: float | None = None) -> str:
    """How long ago, as kubectl prints it: ``42s``, ``3m12s``, ``5h3m``, ``2d4h``; ``-`` when unknown."""
    if since is None:
        return "-"
    seconds = max(int((time.time() if now is None else now) - since), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds}s" if minutes < 10 and seconds else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def local_stamp(at: float | None = None) -> str:
    """Now (or ``at``) in local time with its UTC offset, to the millisecond."""
    moment = datetime.fromtimestamp(time.time() if at is None else at).astimezone()
    return moment.isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Style:
    """Colour on or off (on for a terminal unless ``NO_COLOR`` is set, or as ``--color`` says)."""

    color: bool

    def paint(self, text: str, **style: Any) -> str:
        return click.style(text, **style) if self.color else text

    def readiness(self, state: Readiness) -> str:
        return self.paint(state.value, fg="green" if state is Readiness.READY else "yellow")

    def dim(self, text: str) -> str:
        return self.paint(text, dim=True)


INSTANCE_COLUMNS = ("ENDPOINT", "ID", "STATE", "TRANSPORT", "AGE", "METADATA")


def instance_row(instance: Instance, style: Style, now: float | None = None) -> list[str]:
    """The table cells of one instance (``STATE`` already painted)."""
    meta = dumps(instance.metadata) if instance.metadata else ""
    return [
        str(instance.endpoint_id),
        f"{instance.instance_id:x}",
        style.readiness(instance.readiness),
        str(instance.transport) if instance.transport is not None else "-",
        age(instance.registered_at, now),
        meta,
    ]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], style: Style) -> str:
    """Rows under a header, each column as wide as its widest cell (the last one is not padded)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for n, cell in enumerate(row):
            widths[n] = max(widths[n], len(click.unstyle(cell)))

    def line(cells: Sequence[str]) -> str:
        padded = [cell + " " * (widths[n] - len(click.unstyle(cell))) for n, cell in enumerate(cells[:-1])]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return "\n".join([style.paint(line(headers), bold=True), *(line(row) for row in rows)])
