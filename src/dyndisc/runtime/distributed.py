"""``DistributedRuntime``: the facade over the parts a running runtime holds (:mod:`dyndisc.runtime.parts`).

It owns the settings, makes the backend, starts and stops the parts with its ``async with``, and gives
handles in the reference runtime's style. Every operation is one of a part's: this module only routes.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Literal

from dyndisc._cards import EventChannel, ModelCard
from dyndisc._concurrency import background_tasks
from dyndisc._entries import EntryEvent, MetadataEntry
from dyndisc._errors import RuntimeNotStartedError
from dyndisc._events import DiscoveryEvent
from dyndisc._instance_set import InstanceSet
from dyndisc._models import EndpointId, Instance, InstanceQuery, Readiness
from dyndisc._settings import (
    DEFAULT_LEASE_TTL,
    BackendName,
    LeaseLossPolicy,
    RuntimeSettings,
    canonical_backend_name,
)
from dyndisc.backends import create_backend
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.kv import KeyValueStore, KvDiscovery
from dyndisc.runtime.handles import Bucket, Endpoint, Namespace
from dyndisc.runtime.health import HealthRecorder, RuntimeHealth, serve_probes
from dyndisc.runtime.lease_keeper import LeaseChange, LeaseKeeper
from dyndisc.runtime.metadata import Metadata
from dyndisc.runtime.parts import RuntimeParts
from dyndisc.runtime.registrar import Registrar, TransportArg
from dyndisc.runtime.registrations import Registrations
from dyndisc.runtime.watches import Watches

__all__ = ["DistributedRuntime", "LeaseChangeCallback"]

log = logging.getLogger("dyndisc.runtime")

LeaseChangeCallback = Callable[[LeaseChange], Any]
_NOT_STARTED = "use the runtime inside 'async with DistributedRuntime(...) as runtime:'"


class DistributedRuntime:
    """The discovery side of a process: one lease, kept alive, and every endpoint registered under it.

    ``async with DistributedRuntime("memory") as runtime:`` grants the lease and starts the keep-alive loop;
    leaving the block revokes the lease (every registration disappears at once) and stops every watch.

    ``backend`` is a backend name (``etcd``, ``kubernetes``, ``memory``/``mem``, ``nats``, ``file``), a
    :class:`~dyndisc.backends.DiscoveryBackend`, or a :class:`~dyndisc.backends.KeyValueStore` (wrapped in
    :class:`~dyndisc.backends.KvDiscovery`); ``None`` reads ``DYN_DISCOVERY_BACKEND`` (default ``etcd``).
    A backend passed in is not closed by the runtime; one it created is.

    When the lease is lost (expired or revoked behind its back), ``lease_loss_policy`` decides: ``reregister``
    (default) grants a new lease, keeps it alive at once and registers every endpoint again under the new
    instance id, then calls ``on_lease_change``; ``shutdown`` cancels the body and ``async with`` raises
    :class:`~dyndisc.LeaseLostError`.
    """

    def __init__(
        self,
        backend: BackendName | DiscoveryBackend | KeyValueStore | None = None,
        *,
        lease_ttl: float | None = None,
        lease_loss_policy: LeaseLossPolicy | Literal["reregister", "shutdown"] | None = None,
        on_lease_change: LeaseChangeCallback | None = None,
        health_port: int | None = None,
    ) -> None:
        overrides: dict[str, object] = {}
        if health_port is not None:
            overrides["health_port"] = health_port
        if lease_ttl is not None:
            overrides["lease_ttl"] = lease_ttl
        if lease_loss_policy is not None:
            overrides["lease_loss_policy"] = lease_loss_policy
        self.settings: RuntimeSettings = RuntimeSettings.load_cached(**overrides)
        self.lease_loss_policy = self.settings.lease_loss_policy
        self.on_lease_change = on_lease_change
        #: The backend name to create at every start, or ``None`` for a backend given as an object.
        self._backend_name: str | None = None
        self._given_backend: DiscoveryBackend | None = None
        if isinstance(backend, KeyValueStore):
            self._given_backend = KvDiscovery(backend, owns_store=False)
        elif isinstance(backend, DiscoveryBackend):
            self._given_backend = backend
        elif isinstance(backend, str):
            self._backend_name = canonical_backend_name(backend, "the backend argument of DistributedRuntime")
        else:
            self._backend_name = canonical_backend_name(self.settings.discovery_backend)
        # A backend made by name is made now, so a bad setting of it fails here rather than at start.
        self._made_backend = create_backend(self._backend_name) if self._backend_name else None
        chosen = self._given_backend or self._made_backend
        default_ttl = chosen.default_lease_ttl if chosen is not None else None
        #: The lease TTL: the argument, else ``DYN_LEASE_TTL``, else the backend's (``ETCD_LEASE_TTL``),
        #: else 10 seconds.
        self.lease_ttl: float = self.settings.lease_ttl or default_ttl or DEFAULT_LEASE_TTL
        #: The port of the probe endpoint once listening (``DYN_HEALTH_PORT``; 0 picks a free one).
        self.health_port: int | None = None
        self._health = HealthRecorder()
        self._parts: RuntimeParts | None = None
        self._stack: AsyncExitStack | None = None
        #: What stopped the last run, if something did: the runtime's calls raise it after the exit.
        self._failure: BaseException | None = None

    @classmethod
    def from_env(
        cls,
        *,
        lease_ttl: float | None = None,
        lease_loss_policy: LeaseLossPolicy | Literal["reregister", "shutdown"] | None = None,
        on_lease_change: LeaseChangeCallback | None = None,
        health_port: int | None = None,
    ) -> DistributedRuntime:
        """A runtime whose backend comes from the environment (``DYN_DISCOVERY_BACKEND``, default ``etcd``,
        and that backend's own variables); the arguments are those of the constructor and win over
        ``DYN_LEASE_TTL``, ``DYN_LEASE_LOSS_POLICY`` and ``DYN_HEALTH_PORT``."""
        return cls(
            None,
            lease_ttl=lease_ttl,
            lease_loss_policy=lease_loss_policy,
            on_lease_change=on_lease_change,
            health_port=health_port,
        )

    # -- lifecycle -------------------------------------------------------------------------------------
    async def __aenter__(self) -> DistributedRuntime:
        if self._stack is not None:
            raise RuntimeError("this DistributedRuntime is already running; create one per process")
        self._failure = None
        async with AsyncExitStack() as stack:
            if self._given_backend is not None:
                backend = self._given_backend
            else:
                assert self._backend_name is not None
                made, self._made_backend = self._made_backend, None
                backend = made or create_backend(self._backend_name)
                stack.push_async_callback(backend.aclose)
            keeper = LeaseKeeper(
                backend, self.lease_ttl, self.lease_loss_policy, self._health, self.on_lease_change
            )
            lease = await keeper.grant()
            log.info(
                "%s runtime started: instance id %x, lease TTL %ss", backend.name, lease.id, self.lease_ttl
            )
            registrations = Registrations()
            registrar = Registrar(backend, keeper, registrations)

            async def leave() -> None:
                registrar.uncount()
                await keeper.release(len(registrations))

            # Exit order (reverse): stop keep-alive and watches, then revoke, then close the backend.
            stack.push_async_callback(leave)
            tasks = await stack.enter_async_context(background_tasks())
            self._parts = RuntimeParts(
                backend=backend,
                keeper=keeper,
                registrations=registrations,
                registrar=registrar,
                metadata=Metadata(backend, keeper, registrar),
                watches=Watches(backend, tasks),
            )
            tasks.start_soon(keeper.run, registrar.carry)
            if self.settings.health_port is not None:
                self.health_port = await tasks.start(
                    serve_probes, self.health, self.settings.health_host, self.settings.health_port
                )
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        parts, self._parts = self._parts, None
        assert stack is not None
        assert parts is not None
        try:
            return await stack.__aexit__(*exc_info)
        finally:
            failure = self._failure = parts.keeper.failure
            why = RuntimeNotStartedError(
                f"the runtime stopped ({type(failure).__name__}: {failure}): this view no longer changes"
                if failure is not None
                else "the runtime left its 'async with': this view no longer changes"
            )
            parts.watches.close(why, clean=failure is None)

    def parts(self) -> RuntimeParts:
        """The parts of the running runtime (what handles use)."""
        if self._parts is None:
            if self._failure is not None:
                raise self._failure
            raise RuntimeNotStartedError(_NOT_STARTED)
        return self._parts

    # -- state -----------------------------------------------------------------------------------------
    @property
    def backend(self) -> DiscoveryBackend:
        """The discovery backend (available once the runtime has started)."""
        if self._parts is None:
            raise RuntimeNotStartedError(_NOT_STARTED)
        return self._parts.backend

    @property
    def lease(self) -> Lease:
        """The current lease."""
        if self._parts is None:
            raise RuntimeNotStartedError(_NOT_STARTED)
        return self._parts.keeper.lease

    @property
    def instance_id(self) -> int:
        """This process's instance id (the lease id): it changes if a lost lease is replaced."""
        return self.lease.id

    def connection_id(self) -> int:
        """Alias of :attr:`instance_id`, the reference runtime's name."""
        return self.instance_id

    @property
    def registrations(self) -> list[Instance]:
        """Every endpoint instance this runtime has written under its current lease."""
        parts = self.parts()
        return parts.registrations.registered(parts.keeper.lease)

    def health(self) -> RuntimeHealth:
        """The lease's state now (held, outage, replacing, failed ...), for the application and probes."""
        parts = self._parts
        held = parts.keeper.held if parts is not None else None
        if parts is not None and held is not None:  # counted when read (a probe, every few seconds)
            self._health.registrations(*parts.registrations.counts(held))
        return self._health.current

    # -- handles ---------------------------------------------------------------------------------------
    def endpoint(self, path: str) -> Endpoint:
        """The endpoint ``"namespace.component.endpoint"`` (or ``"dyn://namespace.component.endpoint"``)."""
        return Endpoint(self, EndpointId.parse(path))

    def namespace(self, name: str) -> Namespace:
        """The namespace ``name``."""
        return Namespace(self, name)

    def bucket(self, name: str) -> Bucket:
        """The metadata bucket ``name`` (``"v1/mdc"`` holds model cards): put, get, delete, watch entries."""
        return Bucket(self, name)

    # -- registrations ---------------------------------------------------------------------------------
    async def register(
        self,
        endpoint: EndpointId,
        transport: TransportArg = None,
        metadata: Mapping[str, Any] | None = None,
        readiness: Readiness = Readiness.READY,
        *,
        device_type: str | None = None,
        request_plane_codec: str | None = None,
    ) -> Instance:
        """Register ``endpoint`` under the runtime's lease; calling again updates the record in place.

        ``transport`` may be a :class:`~dyndisc.DynamoTcp`: its address is rendered for the instance id of
        every lease the runtime holds. The registration is recorded before the backend is called, so it is
        never lost to a lease replacement: one that meets a lease just found gone waits for the new lease
        and completes under it. If this raises (or is cancelled), the registration is forgotten as the
        application would expect; a write that may have landed is removed with the lease, or by
        :meth:`unregister`.
        """
        return await self.parts().registrar.register(
            endpoint,
            transport,
            metadata,
            readiness,
            device_type=device_type,
            request_plane_codec=request_plane_codec,
        )

    async def unregister(self, endpoint: EndpointId) -> None:
        """Remove the registration of ``endpoint`` (a no-op if it is not registered)."""
        await self.parts().registrar.unregister(endpoint)

    # -- reads and watches -----------------------------------------------------------------------------
    async def list(self, query: InstanceQuery | None = None) -> builtins.list[Instance]:
        """One-shot list of the instances matching ``query`` (everything by default)."""
        return await self.parts().backend.list(query or InstanceQuery())

    def watch(
        self, query: InstanceQuery | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[DiscoveryEvent]]:
        """Watch ``query`` (everything by default): ``async with runtime.watch(q) as events:``, then
        ``async for event in events`` gives a ``Resync`` first, then ``Added`` / ``Removed``.

        The watch is live when the block starts and stops when it ends, however the block ends.
        """
        return self.parts().watches.watch(query or InstanceQuery())

    async def instance_set(self, query: InstanceQuery) -> InstanceSet:
        """The shared live set for ``query``, watched once per runtime; established before it returns.

        A set got this way is kept for the runtime's life; clients and ``watch()`` hold theirs only while
        they are used (:meth:`acquire_instance_set`).
        """
        return await self.parts().watches.pinned(query)

    async def acquire_instance_set(self, query: InstanceQuery) -> InstanceSet:
        """The shared live set for ``query``, with one more user: :meth:`InstanceSet.release` it when done.

        The set's watch stops when its last user releases it. Waiting for a watch to be established holds
        no lock of the runtime: a slow watch delays only the users of its own query.
        """
        return await self.parts().watches.acquire(query)

    # -- metadata --------------------------------------------------------------------------------------
    async def put_entry(self, entry: MetadataEntry, *, bound: bool = True) -> MetadataEntry:
        """Write ``entry``; bound to the lease (default) it goes with this process and is written again
        under a replacement lease, unbound it stays until deleted."""
        return await self.parts().metadata.put_entry(entry, bound=bound)

    async def delete_entry(self, bucket: str, key: str) -> None:
        """Delete an entry (bound or not; a no-op if absent)."""
        await self.parts().metadata.delete_entry(bucket, key)

    async def get_entry(self, bucket: str, key: str) -> MetadataEntry | None:
        """The entry ``key`` of ``bucket``, if there is one (live)."""
        return await self.parts().metadata.get_entry(bucket, key)

    async def list_entries(self, bucket: str, prefix: str = "") -> builtins.list[MetadataEntry]:
        """The entries of ``bucket`` whose key starts with ``prefix``."""
        return await self.parts().metadata.list_entries(bucket, prefix)

    def watch_entries(
        self, bucket: str, prefix: str = ""
    ) -> AbstractAsyncContextManager[AsyncIterator[EntryEvent]]:
        """Watch the entries of ``bucket`` under ``prefix`` (see :meth:`Bucket.watch`)."""
        return self.parts().metadata.watch_entries(bucket, prefix)

    async def register_model(
        self, endpoint: EndpointId, card: Mapping[str, Any], lora: str | None = None
    ) -> ModelCard:
        """Publish a model deployment card on ``endpoint``, bound to the lease, at the reference's key
        (``v1/mdc/{ns}/{comp}/{ep}/{instance id:x}[/{lora}]``), written again for a replacement lease."""
        return await self.parts().metadata.register_model(endpoint, card, lora)

    async def unregister_model(self, endpoint: EndpointId, lora: str | None = None) -> None:
        """Withdraw the card :meth:`register_model` published (a no-op if there is none)."""
        await self.parts().metadata.unregister_model(endpoint, lora)

    async def models(self, query: InstanceQuery | None = None) -> builtins.list[ModelCard]:
        """The model cards registered on the endpoints ``query`` covers (everything by default), by every
        process (dyndisc or Dynamo); cards that cannot be read are skipped with a warning."""
        return await self.parts().metadata.models(query)

    async def register_event_channel(self, channel: EventChannel) -> EventChannel:
        """Publish an event channel, bound to the lease, where the reference's subscribers look for it."""
        return await self.parts().metadata.register_event_channel(channel)

    async def unregister_event_channel(self, channel: EventChannel) -> None:
        """Withdraw an event channel."""
        await self.parts().metadata.unregister_event_channel(channel)

    async def event_channels(
        self, query: InstanceQuery | None = None, topic: str | None = None
    ) -> builtins.list[EventChannel]:
        """The event channels under the scope of ``query`` (channels of its components and endpoints too),
        of ``topic`` if given; channels that cannot be read are skipped with a warning."""
        return await self.parts().metadata.event_channels(query, topic)
