"""The metadata store beside discovery: entries in any bucket, model deployment cards and event channels
in the reference's shapes. Lease-bound entries are written by the
:class:`~dyndisc.runtime.registrar.Registrar` (so a replacement lease carries them as it carries
endpoints); reads go to the backend."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from dyndisc._cards import EventChannel, ModelCard, event_channel_prefix, model_card_prefix
from dyndisc._dynamo import EVENT_CHANNELS_BUCKET, MODEL_CARDS_BUCKET
from dyndisc._entries import EntryEvent, MetadataEntry
from dyndisc._errors import InvalidRecordError
from dyndisc._models import EndpointId, InstanceQuery
from dyndisc.backends.base import DiscoveryBackend
from dyndisc.runtime.lease_keeper import LeaseKeeper
from dyndisc.runtime.registrar import Registrar

log = logging.getLogger("dyndisc.runtime")

#: What ``watch_entries`` returns: ``async with ... as events: async for event in events: ...``.
EntryWatch = AbstractAsyncContextManager[AsyncIterator[EntryEvent]]
R = TypeVar("R")


class Metadata:
    """Metadata entries, model cards and event channels of a running runtime."""

    def __init__(self, backend: DiscoveryBackend, keeper: LeaseKeeper, registrar: Registrar) -> None:
        self.backend = backend
        self.keeper = keeper
        self.registrar = registrar

    # -- entries ---------------------------------------------------------------------------------------
    async def put_entry(self, entry: MetadataEntry, *, bound: bool) -> MetadataEntry:
        """Write ``entry``; ``bound`` to the lease it goes with this process and is written again under a
        replacement lease, unbound it stays until deleted (the public calls choose bound by default)."""
        ident = ("entry", entry.bucket, entry.key)
        if bound:
            return await self.registrar.put_bound(ident, lambda _lease_id: entry)
        await self.registrar.put_unbound(ident, entry)
        return entry

    async def delete_entry(self, bucket: str, key: str) -> None:
        """Delete an entry (bound or not; a no-op if absent)."""
        await self.registrar.forget_entry(("entry", bucket, key), bucket, key)

    async def get_entry(self, bucket: str, key: str) -> MetadataEntry | None:
        """The entry ``key`` of ``bucket``, if there is one (live)."""
        found = await self.backend.list_entries(bucket, key)
        return next((e for e in found if e.key == key), None)

    async def list_entries(self, bucket: str, prefix: str = "") -> list[MetadataEntry]:
        """The entries of ``bucket`` whose key starts with ``prefix``."""
        return await self.backend.list_entries(bucket, prefix)

    def watch_entries(self, bucket: str, prefix: str = "") -> EntryWatch:
        """Watch the entries of ``bucket`` under ``prefix``."""
        return self.backend.watch_entries(bucket, prefix)

    # -- model cards -----------------------------------------------------------------------------------
    async def register_model(
        self, endpoint: EndpointId, card: Mapping[str, Any], lora: str | None = None
    ) -> ModelCard:
        """Publish a model deployment card on ``endpoint``, bound to the lease, at the reference's key
        (``v1/mdc/{ns}/{comp}/{ep}/{instance id:x}[/{lora}]``), written again for a replacement lease."""
        if not isinstance(card, Mapping):
            raise InvalidRecordError(f"a model card is a mapping (card_json), got {type(card).__name__}")
        ns, comp, ep = endpoint.namespace, endpoint.component, endpoint.endpoint
        frozen = ModelCard(ns, comp, ep, 0, card, lora).card  # checked once, before anything is written

        def render(lease_id: int) -> MetadataEntry:
            return ModelCard(ns, comp, ep, lease_id, frozen, lora).to_entry()

        entry = await self.registrar.put_bound(("model", endpoint, lora), render)
        return ModelCard.from_entry(entry)

    async def unregister_model(self, endpoint: EndpointId, lora: str | None = None) -> None:
        """Withdraw the card :meth:`register_model` published (a no-op if there is none)."""
        ns, comp, ep = endpoint.namespace, endpoint.component, endpoint.endpoint
        key = ModelCard(ns, comp, ep, self.keeper.lease.id, {}, lora).key
        await self.registrar.forget_entry(("model", endpoint, lora), MODEL_CARDS_BUCKET, key)

    async def models(self, query: InstanceQuery | None = None) -> list[ModelCard]:
        """The model cards on the endpoints ``query`` covers, by every process (dyndisc or Dynamo); cards
        that cannot be read are skipped with a warning."""
        parts = (query or InstanceQuery()).parts
        found = await self.backend.list_entries(MODEL_CARDS_BUCKET, model_card_prefix(*parts))
        return _read_all(found, ModelCard.from_entry)

    # -- event channels --------------------------------------------------------------------------------
    async def register_event_channel(self, channel: EventChannel) -> EventChannel:
        """Publish an event channel, bound to the lease, where the reference's subscribers look for it."""
        entry = channel.to_entry()
        await self.registrar.put_bound(("entry", entry.bucket, entry.key), lambda _lease_id: entry)
        return channel

    async def unregister_event_channel(self, channel: EventChannel) -> None:
        """Withdraw an event channel."""
        await self.delete_entry(EVENT_CHANNELS_BUCKET, channel.key)

    async def event_channels(
        self, query: InstanceQuery | None = None, topic: str | None = None
    ) -> list[EventChannel]:
        """The event channels under the scope of ``query`` (channels of its components and endpoints too),
        of ``topic`` if given; channels that cannot be read are skipped with a warning."""
        parts = (query or InstanceQuery()).parts
        entries = await self.backend.list_entries(EVENT_CHANNELS_BUCKET, event_channel_prefix(*parts))
        found = _read_all(entries, EventChannel.from_entry)
        return [c for c in found if topic is None or c.topic == topic]


def _read_all(entries: list[MetadataEntry], read: Callable[[MetadataEntry], R]) -> list[R]:
    """``read`` of every entry; one that is not what ``read`` expects is skipped with a warning."""
    found = []
    for entry in entries:
        try:
            found.append(read(entry))
        except InvalidRecordError as exc:
            log.warning("skipping %s: %s", entry, exc)
    return found
