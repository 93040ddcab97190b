"""``DistributedRuntime``: one lease per process, its keep-alive loop, and handles to endpoints."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dyndisc._client import Client
from dyndisc._concurrency import SharedExclusiveLock, background_tasks
from dyndisc._errors import LeaseLostError, RuntimeNotStartedError
from dyndisc._instance_set import InstanceSet
from dyndisc._lease import LeaseChange, LeaseExpired, keep_lease_alive, retry_forever
from dyndisc._metrics import metrics
from dyndisc._models import (
    DiscoveryEvent,
    EndpointId,
    Instance,
    InstanceQuery,
    Readiness,
    Transport,
    validate_name,
)
from dyndisc._settings import LeaseLossPolicy, RuntimeSettings, load_settings
from dyndisc.backends import create_backend
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.kv import KeyValueStore, KvDiscovery

log = logging.getLogger("dyndisc.runtime")

LeaseChangeCallback = Callable[[LeaseChange], Any]


class DistributedRuntime:
    """The discovery side of a process: one lease, kept alive, and every endpoint registered under it.

    ``async with DistributedRuntime("memory") as runtime:`` grants the lease and starts the keep-alive loop;
    leaving the block revokes the lease (every registration disappears at once) and stops every watch.

    ``backend`` is a backend name (``etcd``, ``kubernetes``, ``memory``/``mem``, ``nats``, ``file``), a
    :class:`~dyndisc.backends.DiscoveryBackend`, or a :class:`~dyndisc.backends.KeyValueStore` (wrapped in
    :class:`~dyndisc.backends.KvDiscovery`); ``None`` reads ``DYN_DISCOVERY_BACKEND`` (default ``etcd``).
    A backend passed in is not closed by the runtime; one it created is.

    When the lease is lost (expired or revoked behind its back), ``lease_loss_policy`` decides: ``reregister``
    (default) grants a new lease and registers every endpoint again under the new instance id, then calls
    ``on_lease_change``; ``shutdown`` cancels the body and ``async with`` raises
    :class:`~dyndisc.LeaseLostError`.
    """

    def __init__(
        self,
        backend: str | DiscoveryBackend | KeyValueStore | None = None,
        *,
        lease_ttl: float | None = None,
        lease_loss_policy: LeaseLossPolicy | str | None = None,
        on_lease_change: LeaseChangeCallback | None = None,
    ) -> None:
        overrides: dict[str, object] = {}
        if isinstance(backend, str):
            overrides["discovery_backend"] = backend
        if lease_ttl is not None:
            overrides["lease_ttl"] = lease_ttl
        if lease_loss_policy is not None:
            overrides["lease_loss_policy"] = lease_loss_policy
        self.settings: RuntimeSettings = load_settings(**overrides)
        self.lease_ttl = self.settings.effective_lease_ttl()
        self.lease_loss_policy = self.settings.lease_loss_policy
        self.on_lease_change = on_lease_change
        self._given_backend: DiscoveryBackend | None = None
        if isinstance(backend, KeyValueStore):
            self._given_backend = KvDiscovery(backend, owns_store=False)
        elif isinstance(backend, DiscoveryBackend):
            self._given_backend = backend
        self._backend: DiscoveryBackend | None = None
        self._lease: Lease | None = None
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._lease_lock = SharedExclusiveLock()
        self._sets_lock = anyio.Lock()
        self._registered: dict[EndpointId, Instance] = {}
        self._sets: dict[InstanceQuery, InstanceSet] = {}
        self._keepalive_scope: anyio.CancelScope | None = None
        self._abandoned = False
        self._metrics = metrics()
        #: Registrations reported to the metrics (so leaving the runtime subtracts exactly those).
        self._counted = 0

    @classmethod
    def from_env(cls, **kwargs: Any) -> DistributedRuntime:
        """A runtime configured from the environment (``DYN_DISCOVERY_BACKEND``, ``DYN_LEASE_TTL`` ...)."""
        return cls(None, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def __aenter__(self) -> DistributedRuntime:
        if self._stack is not None:
            raise RuntimeError("this DistributedRuntime is already running; create one per process")
        async with AsyncExitStack() as stack:
            if self._given_backend is not None:
                self._backend = self._given_backend
            else:
                self._backend = create_backend(self.settings.discovery_backend)
                stack.push_async_callback(self._backend.aclose)
            self._lease = await self._backend.grant_lease(self.lease_ttl)
            log.info(
                "%s runtime started: instance id %x, lease TTL %ss",
                self._backend.name,
                self._lease.id,
                self.lease_ttl,
            )
            # Exit order (reverse): stop keep-alive and watches, then revoke, then close the backend.
            stack.push_async_callback(self._release_lease)
            self._tg = await stack.enter_async_context(background_tasks())
            self._tg.start_soon(self._hold_lease)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        try:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            return await stack.__aexit__(*exc_info)
        finally:
            self._tg = None
            self._sets.clear()

    async def _release_lease(self) -> None:
        assert self._backend is not None
        lease, self._lease = self._lease, None
        self._count_registrations(live=False)
        if lease is None or self._abandoned:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self._backend.revoke_lease(lease)
                log.info("revoked lease %x: every registration of this runtime is gone", lease.id)
            except Exception as exc:  # the lease will expire on its own; say so instead of failing the exit
                log.warning(
                    "could not revoke lease %x (%s); its registrations expire within %ss",
                    lease.id,
                    exc,
                    lease.ttl,
                )

    async def _hold_lease(self) -> None:
        assert self._backend is not None
        while True:
            lease = self.lease
            try:
                with anyio.CancelScope() as self._keepalive_scope:
                    await keep_lease_alive(self._backend, lease)
                return  # cancelled by _abandon()
            except LeaseExpired as exc:
                log.error("lost lease %x: %s", lease.id, exc)
                self._metrics.lease_lost(self.backend.name)
                if self.lease_loss_policy is LeaseLossPolicy.SHUTDOWN:
                    raise LeaseLostError(f"runtime shut down: {exc} (lease_loss_policy=shutdown)") from exc
                await self._replace_lease(lease, str(exc))

    async def _replace_lease(self, old: Lease, reason: str) -> None:
        backend = self.backend
        with anyio.move_on_after(1):  # in case the server still holds it: never leave a duplicate behind
            try:
                await backend.revoke_lease(old)
            except Exception as exc:
                log.debug("revoking lost lease %x failed: %s", old.id, exc)
        async with self._lease_lock.exclusive():

            async def grant_and_register() -> Lease:
                lease = await backend.grant_lease(self.lease_ttl)
                # The new id is ours from now on: watchers may see it before re-registration completes.
                self._lease = lease
                try:
                    for endpoint, instance in list(self._registered.items()):
                        moved = instance.model_copy(update={"instance_id": lease.id})
                        self._registered[endpoint] = await backend.register(moved, lease)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await backend.revoke_lease(lease)
                    raise
                return lease

            self._lease = await retry_forever("re-granting the lease", grant_and_register)
        log.warning(
            "replaced lost lease %x with %x and re-registered %d endpoints",
            old.id,
            self._lease.id,
            len(self._registered),
        )
        if self.on_lease_change is not None:
            try:
                result = self.on_lease_change(LeaseChange(old.id, self._lease.id, reason))
                if inspect.isawaitable(result):
                    await result
            except Exception:  # the application's callback must not take the keep-alive loop down
                log.exception("on_lease_change callback failed")

    def _abandon(self) -> None:
        """Testing aid: stop renewing the lease and skip the revoke on exit, as if the process had crashed."""
        self._abandoned = True
        if self._keepalive_scope is not None:
            self._keepalive_scope.cancel()

    def _count_registrations(self, *, live: bool = True) -> None:
        if self._metrics.enabled and self._backend is not None:
            now = len(self._registered) if live else 0
            if now != self._counted:
                self._metrics.registered(self._backend.name, now - self._counted)
                self._counted = now

    # -- state -----------------------------------------------------------------------------------------
    @property
    def backend(self) -> DiscoveryBackend:
        """The discovery backend (available once the runtime has started)."""
        if self._backend is None or self._stack is None:
            raise RuntimeNotStartedError(
                "use the runtime inside 'async with DistributedRuntime(...) as runtime:'"
            )
        return self._backend

    @property
    def lease(self) -> Lease:
        """The current lease."""
        if self._lease is None:
            raise RuntimeNotStartedError(
                "use the runtime inside 'async with DistributedRuntime(...) as runtime:'"
            )
        return self._lease

    @property
    def instance_id(self) -> int:
        """This process's instance id (the lease id): it changes if a lost lease is replaced."""
        return self.lease.id

    def connection_id(self) -> int:
        """Alias of :attr:`instance_id`, the reference runtime's name."""
        return self.instance_id

    @property
    def registrations(self) -> list[Instance]:
        """Every endpoint instance this runtime has registered."""
        return list(self._registered.values())

    # -- handles ---------------------------------------------------------------------------------------
    def endpoint(self, path: str) -> Endpoint:
        """The endpoint ``"namespace.component.endpoint"`` (or ``"dyn://namespace.component.endpoint"``)."""
        return Endpoint(self, EndpointId.parse(path))

    def namespace(self, name: str) -> Namespace:
        """The namespace ``name``."""
        return Namespace(self, validate_name("namespace", name))

    # -- operations used by the handles ----------------------------------------------------------------
    async def register(
        self,
        endpoint: EndpointId,
        transport: Transport | str | dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        readiness: Readiness = Readiness.READY,
    ) -> Instance:
        """Register ``endpoint`` under the runtime's lease; calling again updates the record in place."""
        async with self._lease_lock.shared():
            instance = Instance(
                namespace=endpoint.namespace,
                component=endpoint.component,
                endpoint=endpoint.endpoint,
                instance_id=self.lease.id,
                transport=Transport.coerce(transport),
                metadata=metadata or {},
                readiness=readiness,
            )
            stored = await self.backend.register(instance, self.lease)
            self._registered[endpoint] = stored
            self._count_registrations()
            return stored

    async def unregister(self, endpoint: EndpointId) -> None:
        """Remove the registration of ``endpoint`` (a no-op if it is not registered)."""
        async with self._lease_lock.shared():
            instance = self._registered.pop(endpoint, None)
            if instance is not None:
                try:
                    await self.backend.unregister(instance)
                finally:
                    self._count_registrations()

    async def instance_set(self, query: InstanceQuery) -> InstanceSet:
        """The shared live set for ``query``, watched once per runtime; established before it returns."""
        async with self._sets_lock:  # two first clients of one endpoint must not start two watches
            found = self._sets.get(query)
            if found is None:
                if self._tg is None:
                    raise RuntimeNotStartedError(
                        "watches need a running runtime: 'async with DistributedRuntime()'"
                    )
                found = InstanceSet(self.backend, query)
                await self._tg.start(found.run)
                self._sets[query] = found
            return found

    async def list(self, query: InstanceQuery | None = None) -> list[Instance]:
        """One-shot list of the instances matching ``query`` (everything by default)."""
        return await self.backend.list(query or InstanceQuery())

    async def watch(self, query: InstanceQuery | None = None) -> AsyncIterator[DiscoveryEvent]:
        """Async-iterate events for ``query``: a ``Resync`` first, then ``Added`` / ``Removed``."""
        source = await self.instance_set(query or InstanceQuery())
        async for event in source.events():
            yield event


class Namespace:
    """A namespace handle: ``runtime.namespace("ns")``."""

    def __init__(self, runtime: DistributedRuntime, name: str) -> None:
        self.runtime = runtime
        self.name = name

    def component(self, name: str) -> Component:
        """The component ``name`` in this namespace."""
        return Component(self, validate_name("component", name))

    def watch(self) -> AsyncIterator[DiscoveryEvent]:
        """Events for every instance in this namespace."""
        return self.runtime.watch(InstanceQuery(namespace=self.name))


class Component:
    """A component handle: ``runtime.namespace("ns").component("comp")``."""

    def __init__(self, namespace: Namespace, name: str) -> None:
        self.namespace = namespace
        self.name = name

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint ``name`` of this component."""
        endpoint = EndpointId(namespace=self.namespace.name, component=self.name, endpoint=name)
        return Endpoint(self.namespace.runtime, endpoint)

    def watch(self) -> AsyncIterator[DiscoveryEvent]:
        """Events for every instance of this component."""
        return self.namespace.runtime.watch(InstanceQuery(namespace=self.namespace.name, component=self.name))


class Endpoint:
    """An endpoint handle: register it (worker side) or get a client of it (frontend/router side)."""

    def __init__(self, runtime: DistributedRuntime, endpoint_id: EndpointId) -> None:
        self.runtime = runtime
        self.id = endpoint_id

    async def register(
        self,
        transport: Transport | str | dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
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
        """A :class:`Client` of this endpoint; the watch behind it is live when this returns."""
        source = await self.runtime.instance_set(InstanceQuery.for_endpoint(self.id))
        return Client(self.id, source)

    def watch(self) -> AsyncIterator[DiscoveryEvent]:
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
