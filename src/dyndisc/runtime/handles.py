"""Handles in the reference runtime's style: ``runtime.endpoint("ns.comp.ep")``, ``namespace().component()``,
and ``runtime.bucket("v1/mdc")`` for metadata entries.

A handle is a name bound to a runtime; it holds no state of its own, so making one is free, before or while
the runtime runs. It reaches the runtime's parts only when used.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from dyndisc._cards import EventChannel, ModelCard
from dyndisc._client import Client
from dyndisc._entries import EntryEvent, MetadataEntry, validate_bucket, validate_entry_key
from dyndisc._events import DiscoveryEvent
from dyndisc._models import EndpointId, Instance, InstanceQuery, Readiness
from dyndisc._names import validate_name
from dyndisc.runtime.parts import HasParts
from dyndisc.runtime.registrar import TransportArg

#: What ``watch()`` returns: ``async with x.watch() as events: async for event in events: ...``.
EventWatch = AbstractAsyncContextManager[AsyncIterator[DiscoveryEvent]]
#: What ``Bucket.watch()`` returns.
EntryWatch = AbstractAsyncContextManager[AsyncIterator[EntryEvent]]


class Namespace:
    """A namespace handle: ``runtime.namespace("ns")``."""

    def __init__(self, runtime: HasParts, name: str) -> None:
        self.runtime = runtime
        self.name = validate_name("namespace", name)

    def component(self, name: str) -> Component:
        """The component ``name`` in this namespace."""
        return Component(self, name)

    def watch(self) -> EventWatch:
        """Events for every instance in this namespace (see :meth:`DistributedRuntime.watch`)."""
        return self.runtime.parts().watches.watch(InstanceQuery(self.name))

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


class Component:
    """A component handle: ``runtime.namespace("ns").component("comp")``."""

    def __init__(self, namespace: Namespace, name: str) -> None:
        self.namespace = namespace
        self.name = validate_name("component", name)

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint ``name`` of this component."""
        return Endpoint(self.namespace.runtime, EndpointId(self.namespace.name, self.name, name))

    def watch(self) -> EventWatch:
        """Events for every instance of this component (see :meth:`DistributedRuntime.watch`)."""
        return self.namespace.runtime.parts().watches.watch(InstanceQuery(self.namespace.name, self.name))

    def __repr__(self) -> str:
        return f"Component({self.namespace.name}.{self.name!r})"


class Endpoint:
    """An endpoint handle: register it (worker side) or get a client of it (frontend/router side)."""

    def __init__(self, runtime: HasParts, endpoint_id: EndpointId) -> None:
        self.runtime = runtime
        self.id = endpoint_id

    async def register(
        self,
        transport: TransportArg = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        readiness: Readiness = Readiness.READY,
        device_type: str | None = None,
        request_plane_codec: str | None = None,
    ) -> Instance:
        """Register this process as an instance of the endpoint; returns the stored :class:`Instance`.

        ``transport`` is how to reach it (``"tcp://host:port"``, ``{"tcp": "host:port"}``, a
        :class:`Transport`, or a :class:`~dyndisc.DynamoTcp` for the form a Dynamo client calls).
        ``device_type`` (``"cpu"``, ``"cuda"``) and ``request_plane_codec`` (``"json"``, ``"msgpack"``) are
        the reference runtime's optional fields. Registering again is idempotent, and replaces the record
        if it changed; ``readiness=Readiness.DRAINING`` keeps the instance listed as draining.
        """
        return await self.runtime.parts().registrar.register(
            self.id,
            transport,
            metadata,
            readiness,
            device_type=device_type,
            request_plane_codec=request_plane_codec,
        )

    async def unregister(self) -> None:
        """Remove this process's instance of the endpoint (the lease and other endpoints stay)."""
        await self.runtime.parts().registrar.unregister(self.id)

    async def client(self) -> Client:
        """A :class:`Client` of this endpoint; the watch behind it is live when this returns, and stops
        when the last client of the endpoint is closed (or garbage-collected)."""
        source = await self.runtime.parts().watches.acquire(InstanceQuery.for_endpoint(self.id))
        return Client(self.id, source, holds_source=True)

    def watch(self) -> EventWatch:
        """Events for this endpoint: a ``Resync`` first, then ``Added`` / ``Removed``."""
        return self.runtime.parts().watches.watch(InstanceQuery.for_endpoint(self.id))

    async def list(self) -> list[Instance]:
        """One-shot list of this endpoint's instances."""
        return await self.runtime.parts().backend.list(InstanceQuery.for_endpoint(self.id))

    def connection_id(self) -> int:
        """The process's instance id, the reference runtime's name for it."""
        return self.runtime.parts().keeper.lease.id

    async def register_model(self, card: Mapping[str, Any], *, lora: str | None = None) -> ModelCard:
        """Publish a model deployment card (the reference's ``card_json``, e.g. from
        :func:`~dyndisc.model_card`) for this endpoint, bound to the process's lease, where a Dynamo
        frontend reads it; registering again replaces it. A frontend lists the model while this endpoint's
        instance is registered (ready)."""
        return await self.runtime.parts().metadata.register_model(self.id, card, lora)

    async def unregister_model(self, *, lora: str | None = None) -> None:
        """Withdraw the card published by :meth:`register_model`."""
        await self.runtime.parts().metadata.unregister_model(self.id, lora)

    async def models(self) -> builtins.list[ModelCard]:
        """The model cards registered on this endpoint, by every process."""
        return await self.runtime.parts().metadata.models(InstanceQuery.for_endpoint(self.id))

    async def register_event_channel(
        self, topic: str, transport: Mapping[str, Any], *, publisher_id: int | None = None
    ) -> EventChannel:
        """Publish where subscribers reach this endpoint's ``topic`` events (``transport`` in the reference's
        shape, e.g. ``{"kind": "Zmq", "config": {"endpoint": "tcp://10.0.0.5:5557"}}``), bound to the lease.
        ``publisher_id`` defaults to a new random one."""
        channel = EventChannel(
            self.id.namespace,
            self.id.component,
            self.id.endpoint,
            topic,
            publisher_id if publisher_id is not None else EventChannel.new_publisher_id(),
            dict(transport),
        )
        return await self.runtime.parts().metadata.register_event_channel(channel)

    async def unregister_event_channel(self, channel: EventChannel) -> None:
        """Withdraw an event channel published by :meth:`register_event_channel`."""
        await self.runtime.parts().metadata.unregister_event_channel(channel)

    def __repr__(self) -> str:
        return f"Endpoint({str(self.id)!r})"


class Bucket:
    """A metadata bucket handle: ``runtime.bucket("v1/mdc")``. Entries are JSON objects under ``/``-separated
    keys; one bound to the lease (the default) goes when this process does, one written with
    ``lease=False`` stays until it is deleted."""

    def __init__(self, runtime: HasParts, name: str) -> None:
        self.runtime = runtime
        self.name = validate_bucket(name)

    async def put(self, key: str, value: Mapping[str, Any], *, lease: bool = True) -> MetadataEntry:
        """Write ``value`` at ``key`` (replacing what is there) and return the stored entry."""
        return await self.runtime.parts().metadata.put_entry(
            MetadataEntry(self.name, key, value), bound=lease
        )

    async def get(self, key: str) -> MetadataEntry | None:
        """The entry at ``key``, or ``None``."""
        return await self.runtime.parts().metadata.get_entry(self.name, validate_entry_key(key))

    async def delete(self, key: str) -> None:
        """Delete the entry at ``key`` (a no-op if there is none)."""
        await self.runtime.parts().metadata.delete_entry(self.name, validate_entry_key(key))

    async def entries(self, prefix: str = "") -> list[MetadataEntry]:
        """Every entry whose key starts with ``prefix``, ordered by key."""
        return await self.runtime.parts().metadata.list_entries(self.name, prefix)

    def watch(self, prefix: str = "") -> EntryWatch:
        """Watch the entries whose key starts with ``prefix``: ``async with bucket.watch() as events:``, then
        ``async for event in events`` gives an ``EntryResync`` first, then ``EntryAdded`` / ``EntryRemoved``.
        The watch is live when the block starts; the backend resumes it after an outage with a new
        ``EntryResync``."""
        return self.runtime.parts().metadata.watch_entries(self.name, prefix)

    def __repr__(self) -> str:
        return f"Bucket({self.name!r})"
