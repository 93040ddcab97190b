"""Handles in the reference runtime's style: ``runtime.endpoint("ns.comp.ep")``, ``namespace().component()``.

A handle is a name bound to a runtime; it holds no state of its own, so making one is free.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from dyndisc._client import Client
from dyndisc._instance_set import InstanceSet
from dyndisc._models import DiscoveryEvent, EndpointId, Instance, InstanceQuery, Readiness, Transport
from dyndisc._names import validate_name

#: What ``watch()`` returns: ``async with x.watch() as events: async for event in events: ...``.
EventWatch = AbstractAsyncContextManager[AsyncIterator[DiscoveryEvent]]


class Runtime(Protocol):
    """What a handle asks of its runtime (:class:`dyndisc.DistributedRuntime` is the one there is)."""

    @property
    def instance_id(self) -> int: ...

    async def register(
        self,
        endpoint: EndpointId,
        transport: Transport | str | Mapping[str, str] | None,
        metadata: Mapping[str, Any] | None,
        readiness: Readiness,
    ) -> Instance: ...

    async def unregister(self, endpoint: EndpointId) -> None: ...

    async def instance_set(self, query: InstanceQuery) -> InstanceSet: ...

    async def acquire_instance_set(self, query: InstanceQuery) -> InstanceSet: ...

    async def list(self, query: InstanceQuery | None = None) -> list[Instance]: ...

    def watch(self, query: InstanceQuery | None = None) -> EventWatch: ...


class Namespace:
    """A namespace handle: ``runtime.namespace("ns")``."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        self.runtime = runtime
        self.name = validate_name("namespace", name)

    def component(self, name: str) -> Component:
        """The component ``name`` in this namespace."""
        return Component(self, name)

    def watch(self) -> EventWatch:
        """Events for every instance in this namespace (see :meth:`DistributedRuntime.watch`)."""
        return self.runtime.watch(InstanceQuery(self.name))

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
        return self.namespace.runtime.watch(InstanceQuery(self.namespace.name, self.name))

    def __repr__(self) -> str:
        return f"Component({self.namespace.name}.{self.name!r})"


class Endpoint:
    """An endpoint handle: register it (worker side) or get a client of it (frontend/router side)."""

    def __init__(self, runtime: Runtime, endpoint_id: EndpointId) -> None:
        self.runtime = runtime
        self.id = endpoint_id

    async def register(
        self,
        transport: Transport | str | Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        readiness: Readiness = Readiness.READY,
    ) -> Instance:
        """Register this process as an instance of the endpoint; returns the stored :class:`Instance`.

        ``transport`` is how to reach it (``"tcp://host:port"``, ``{"tcp": "host:port"}`` or a
        :class:`Transport`). Registering again is idempotent, and replaces the record if it changed.
        """
        return await self.runtime.register(self.id, transport, metadata, readiness)

    async def unregister(self) -> None:
        """Remove this process's instance of the endpoint (the lease and other endpoints stay)."""
        await self.runtime.unregister(self.id)

    async def client(self) -> Client:
        """A :class:`Client` of this endpoint; the watch behind it is live when this returns, and stops
        when the last client of the endpoint is closed (or garbage-collected)."""
        source = await self.runtime.acquire_instance_set(InstanceQuery.for_endpoint(self.id))
        return Client(self.id, source, holds_source=True)

    def watch(self) -> EventWatch:
        """Events for this endpoint: a ``Resync`` first, then ``Added`` / ``Removed``."""
        return self.runtime.watch(InstanceQuery.for_endpoint(self.id))

    async def list(self) -> list[Instance]:
        """One-shot list of this endpoint's instances."""
        return await self.runtime.list(InstanceQuery.for_endpoint(self.id))

    def connection_id(self) -> int:
        """The process's instance id, the reference runtime's name for it."""
        return self.runtime.instance_id

    def __repr__(self) -> str:
        return f"Endpoint({str(self.id)!r})"
