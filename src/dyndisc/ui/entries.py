"""The metadata the page shows beside the instances: model deployment cards (``v1/mdc``) and event channels
(``v1/event_channels``), each followed by a watch of its bucket, and any bucket listed on demand.

A backend (or key layout) that keeps no metadata entries says so once (``None`` instead of a list), and the
page shows that rather than an empty view.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio

from dyndisc._cards import EventChannel, ModelCard
from dyndisc._dynamo import EVENT_CHANNELS_BUCKET, MODEL_CARDS_BUCKET
from dyndisc._entries import EntryAdded, EntryRemoved, EntryResync, MetadataEntry
from dyndisc._errors import ConfigurationError, DyndiscError
from dyndisc._models import InstanceQuery
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc.backends.base import DiscoveryBackend
from dyndisc.cli.output import card_json, channel_json

log = logging.getLogger("dyndisc.ui")

Event = dict[str, Any]


def _card(entry: MetadataEntry) -> ModelCard | None:
    """The card an entry holds, or ``None`` for one that is not a readable card (skipped, as the reference
    skips it)."""
    try:
        return ModelCard.from_entry(entry)
    except DyndiscError:
        return None


def _channel(entry: MetadataEntry) -> EventChannel | None:
    try:
        return EventChannel.from_entry(entry)
    except DyndiscError:
        return None


def _in_query(query: InstanceQuery, namespace: str, component: str | None, endpoint: str | None) -> bool:
    wanted = (query.namespace, query.component, query.endpoint)
    return all(w is None or w == got for w, got in zip(wanted, (namespace, component, endpoint), strict=True))


class BucketView:
    """The readable entries of one bucket under the page's query, kept current by a watch."""

    def __init__(
        self,
        backend: DiscoveryBackend,
        query: InstanceQuery,
        bucket: str,
        read: Callable[[MetadataEntry], Event | None],
        publish: Callable[[Event], None],
    ) -> None:
        self.backend = backend
        self.query = query
        self.bucket = bucket
        self.read = read
        self.publish = publish
        #: What each key holds, or ``None`` where the backend stores no entries.
        self.items: dict[str, Event] | None = {}
        #: Set once the view is known: its first listing came, or the backend said it keeps no entries, or
        #: the watch failed (a page opened then shows what there is rather than wait).
        self.ready = anyio.Event()

    @property
    def name(self) -> str:
        """What the page calls it: ``models`` or ``channels``."""
        return "models" if self.bucket == MODEL_CARDS_BUCKET else "channels"

    def shown(self) -> list[Event] | None:
        """The entries, ordered by key (``None``: not kept by this backend)."""
        return None if self.items is None else [self.items[k] for k in sorted(self.items)]

    def _apply(self, event: EntryResync | EntryAdded | EntryRemoved) -> None:
        assert self.items is not None
        if isinstance(event, EntryResync):
            self.items = {e.key: item for e in event.entries if (item := self.read(e)) is not None}
        elif isinstance(event, EntryAdded):
            item = self.read(event.entry)
            if item is None:
                self.items.pop(event.entry.key, None)
            else:
                self.items[event.entry.key] = item
        elif isinstance(event, EntryRemoved):
            self.items.pop(event.key, None)
        self.publish({"event": self.name, self.name: self.shown()})

    async def follow(self) -> None:
        """Keep the view current until cancelled (the watch is re-opened with a growing backoff)."""
        backoff = Backoff(0.5, 30.0)
        outage = OutageLog(log, f"watch of the {self.bucket} bucket")
        while True:
            try:
                async with self.backend.watch_entries(self.bucket, self._prefix()) as events:
                    async for event in events:
                        outage.recovered()
                        self._apply(event)
                        self.ready.set()
                raise ConnectionError("the watch ended")
            except (NotImplementedError, ConfigurationError):
                self.items = None  # this backend (or its layout) keeps no entries: the page says so, once
                self.publish({"event": self.name, self.name: None})
                self.ready.set()
                return
            except Exception as exc:
                self.ready.set()
                outage.failed(exc)
                await backoff.sleep()

    def _prefix(self) -> str:
        # Cards are keyed ns/comp/ep/...; channels namespace/<ns>/component/<comp>/...: both narrowed by the
        # query's namespace at least, the rest filtered as read.
        if self.bucket == MODEL_CARDS_BUCKET:
            return "".join(f"{part}/" for part in self.query.parts)
        return f"namespace/{self.query.namespace}/" if self.query.namespace else ""


def card_view(query: InstanceQuery) -> Callable[[MetadataEntry], Event | None]:
    """How the page reads a card entry (``None``: skipped)."""

    def read(entry: MetadataEntry) -> Event | None:
        card = _card(entry)
        if card is None or not _in_query(query, card.namespace, card.component, card.endpoint):
            return None
        return card_json(card)

    return read


def channel_view(query: InstanceQuery) -> Callable[[MetadataEntry], Event | None]:
    """How the page reads an event channel entry (``None``: skipped)."""

    def read(entry: MetadataEntry) -> Event | None:
        channel = _channel(entry)
        if channel is None or not _in_query(query, channel.namespace, channel.component, channel.endpoint):
            return None
        return channel_json(channel)

    return read


def follow_buckets(
    backend: DiscoveryBackend, query: InstanceQuery, publish: Callable[[Event], None]
) -> tuple[BucketView, BucketView]:
    """The model cards and the event channels of ``query``."""
    return (
        BucketView(backend, query, MODEL_CARDS_BUCKET, card_view(query), publish),
        BucketView(backend, query, EVENT_CHANNELS_BUCKET, channel_view(query), publish),
    )


async def list_bucket(backend: DiscoveryBackend, bucket: str, prefix: str, limit: float) -> list[Event]:
    """Every entry of ``bucket`` under ``prefix``, as ``{"key", "size", "value"}`` (within ``limit`` s)."""
    with anyio.fail_after(limit):
        found = await backend.list_entries(bucket, prefix)
    return [{"key": e.key, "size": len(e.to_json()), "value": e.value} for e in found]
