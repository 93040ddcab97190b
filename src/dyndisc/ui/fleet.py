"""What the page shows, kept current: the instances of one query (one backend watch), their leases' time
left, and whether the view is stale, pushed to every open page as events.

A page gets a ``snapshot`` first, then ``added`` / ``removed`` as the watch delivers them, ``models`` (the
model deployment cards each endpoint serves, from a second watch of the ``v1/mdc`` bucket) when they
change, ``leases`` (the time left of each lease, where the backend knows it) every second, and ``status``
(stale or not) when it changes. Everything is read-only: the UI holds no lease and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dyndisc._cards import ModelCard
from dyndisc._dynamo import MODEL_CARDS_BUCKET
from dyndisc._entries import EntryAdded, EntryEvent, EntryRemoved, EntryResync, MetadataEntry
from dyndisc._errors import ConfigurationError, DyndiscError
from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._models import EndpointId, Instance, InstanceQuery
from dyndisc._retry import Backoff
from dyndisc.backends.base import DiscoveryBackend
from dyndisc.cli.output import instance_json

log = logging.getLogger("dyndisc.ui")

#: How often the leases' time left is read and pushed.
LEASE_POLL = 1.0
#: Events a slow page may have undelivered before it is sent a fresh snapshot instead.
PAGE_BACKLOG = 1_000

Event = dict[str, Any]


def _instance(instance: Instance) -> Event:
    return {**instance_json(instance), "key": f"{instance.endpoint_id}/{instance.instance_id:x}"}


class Fleet:
    """The live view behind the page: ``async with Fleet(backend, query) as fleet`` runs its watch."""

    def __init__(self, backend: DiscoveryBackend, query: InstanceQuery) -> None:
        self.backend = backend
        self.query = query
        self.instances: dict[tuple[EndpointId, int], Instance] = {}
        self.leases: dict[str, float | None] = {}
        #: The model cards by key, or ``None`` where the backend stores no metadata entries.
        self.cards: dict[str, ModelCard] | None = {}
        self.watch_broken_since: float | None = None
        self._pages: dict[MemoryObjectSendStream[Event], None] = {}
        self._ready = anyio.Event()

    # -- what a page is told ----------------------------------------------------------------------------
    def snapshot(self) -> Event:
        ordered = sorted(self.instances.values(), key=lambda i: (str(i.endpoint_id), i.instance_id))
        return {
            "event": "snapshot",
            "backend": self.backend.name,
            "query": str(self.query),
            "instances": [_instance(i) for i in ordered],
            "leases": self.leases,
            "models": self.models(),
            "status": self.status(),
        }

    def models(self) -> dict[str, list[Event]] | None:
        """Per endpoint (``ns.comp.ep``), the models its instances serve: name, LoRA, instance ids."""
        if self.cards is None:
            return None
        found: dict[str, dict[tuple[str, str | None], list[str]]] = {}
        for card in self.cards.values():
            name = card.display_name or card.slug or "?"
            ids = found.setdefault(str(card.endpoint_id), {}).setdefault((name, card.lora), [])
            ids.append(f"{card.instance_id:x}")
        return {
            endpoint: [
                {"name": n, "lora": lora, "instances": sorted(ids)} for (n, lora), ids in sorted(by.items())
            ]
            for endpoint, by in sorted(found.items())
        }

    def status(self) -> Event:
        """``stale_for``: seconds the view may have been out of date (the watch or the server lost)."""
        found = [t for t in (self.watch_broken_since, self.backend.stale_since) if t is not None]
        stale = min(found) if found else None
        return {
            "event": "status",
            "stale_for": None if stale is None else round(time.monotonic() - stale, 1),
            "live": len(self.instances),
        }

    def _publish(self, event: Event) -> None:
        for page in list(self._pages):
            try:
                page.send_nowait(event)
            except anyio.WouldBlock:  # a page that does not read: it gets a fresh snapshot when it does
                self._pages.pop(page, None)
                page.close()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._pages.pop(page, None)

    @asynccontextmanager
    async def page(self) -> AsyncIterator[MemoryObjectReceiveStream[Event]]:
        """A page's stream of events: a snapshot first, then every change."""
        await self._ready.wait()
        send, receive = anyio.create_memory_object_stream[Event](PAGE_BACKLOG)
        send.send_nowait(self.snapshot())
        self._pages[send] = None
        try:
            yield receive
        finally:
            self._pages.pop(send, None)
            send.close()
            receive.close()

    # -- keeping it current --------------------------------------------------------------------------------
    def apply(self, event: DiscoveryEvent) -> None:
        if isinstance(event, Resync):
            self.instances = {i.key: i for i in event.instances}
            self._publish(self.snapshot())
        elif isinstance(event, Added):
            self.instances[event.instance.key] = event.instance
            self._publish({"event": "added", "instance": _instance(event.instance)})
        elif isinstance(event, Removed) and self.instances.pop(event.key, None) is not None:
            reason = event.reason.value if event.reason is not None else None
            key = f"{event.endpoint}/{event.instance_id:x}"
            self._publish({"event": "removed", "key": key, "reason": reason})

    async def _watch(self) -> None:
        backoff = Backoff(0.1, 2.0)
        last_status: Event | None = None
        while True:
            try:
                async with self.backend.watch(self.query) as events:
                    async for event in events:
                        if self.watch_broken_since is not None and isinstance(event, Resync):
                            self.watch_broken_since = None
                        self.apply(event)
                        self._ready.set()
                        backoff.reset()
                raise ConnectionError("the watch ended")
            except Exception as exc:
                if self.watch_broken_since is None:
                    self.watch_broken_since = time.monotonic()
                self._ready.set()  # a page opened now shows the last view, marked stale
                status = self.status()
                if status != last_status:
                    self._publish(status)
                    last_status = status
                delay = backoff.next_delay()
                log.warning("watch of %s failed (%s); retrying in %.1fs", self.query, exc, delay)
                await anyio.sleep(delay)

    def apply_cards(self, event: EntryEvent) -> None:
        assert self.cards is not None
        if isinstance(event, EntryResync):
            self.cards = {e.key: c for e in event.entries if (c := _card(e)) is not None}
        elif isinstance(event, EntryAdded):
            card = _card(event.entry)
            if card is None:
                self.cards.pop(event.entry.key, None)
            else:
                self.cards[event.entry.key] = card
        elif isinstance(event, EntryRemoved):
            self.cards.pop(event.key, None)
        self._publish({"event": "models", "models": self.models()})

    async def _watch_cards(self) -> None:
        prefix = "".join(f"{part}/" for part in self.query.parts)
        backoff = Backoff(0.1, 2.0)
        while True:
            try:
                async with self.backend.watch_entries(MODEL_CARDS_BUCKET, prefix) as events:
                    async for event in events:
                        self.apply_cards(event)
                        backoff.reset()
                raise ConnectionError("the watch of the model cards ended")
            except (NotImplementedError, ConfigurationError):
                self.cards = None  # this backend (or its layout) keeps no cards: the page says so, once
                self._publish({"event": "models", "models": None})
                return
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning("watch of the model cards failed (%s); retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)

    async def _poll(self) -> None:
        """Every second: the leases' time left (where the backend can tell) and whether the view is stale."""
        while True:
            await anyio.sleep(LEASE_POLL)
            ids = {i.instance_id for i in self.instances.values()}
            leases: dict[str, float | None] = {}
            for instance_id in sorted(ids):
                try:
                    with anyio.fail_after(LEASE_POLL):
                        left = await self.backend.lease_time_left(instance_id)
                except Exception:  # the server is away: the status says so; the times are unknown
                    left = None
                leases[f"{instance_id:x}"] = None if left is None else round(left, 1)
            self.leases = leases
            self._publish({"event": "leases", "leases": leases})
            self._publish(self.status())

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Fleet]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            tg.start_soon(self._watch_cards)
            tg.start_soon(self._poll)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()


def _card(entry: MetadataEntry) -> ModelCard | None:
    """The card an entry holds, or ``None`` for one that is not a readable card (skipped, as the reference
    skips it)."""
    try:
        return ModelCard.from_entry(entry)
    except DyndiscError:
        return None
