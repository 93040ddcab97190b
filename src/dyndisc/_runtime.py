"""``DistributedRuntime``: one lease per process, its keep-alive loop, and handles to endpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Literal

from anyio.abc import TaskGroup

from dyndisc._concurrency import SharedExclusiveLock, Wake, background_tasks
from dyndisc._dynamo import DynamoTcp
from dyndisc._entries import MetadataEntry
from dyndisc._errors import LeaseNotFoundError, RuntimeNotStartedError
from dyndisc._events import DiscoveryEvent
from dyndisc._handles import Bucket, Component, Endpoint, Namespace, TransportArg
from dyndisc._health import HealthRecorder, RuntimeHealth
from dyndisc._instance_set import InstanceSet
from dyndisc._lease import (
    LeaseChange,
)
from dyndisc._metrics import metrics
from dyndisc._models import EndpointId, Instance, InstanceQuery, Readiness, Transport
from dyndisc._probe import serve_probes
from dyndisc._runtime_lease import LeaseKeeping
from dyndisc._runtime_metadata import RuntimeMetadata, restore
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

__all__ = ["Bucket", "Component", "DistributedRuntime", "Endpoint", "LeaseChangeCallback", "Namespace"]

log = logging.getLogger("dyndisc.runtime")

LeaseChangeCallback = Callable[[LeaseChange], Any]


class DistributedRuntime(LeaseKeeping, RuntimeMetadata):
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
        self._backend: DiscoveryBackend | None = None
        self._lease: Lease | None = None
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._lease_lock = SharedExclusiveLock()
        #: What the application registered (and did not unregister), in the order it did: the runtime makes
        #: this true under whatever lease it holds.
        self._wanted: dict[EndpointId, Instance] = {}
        #: What is written under the current lease.
        self._registered: dict[EndpointId, Instance] = {}
        #: Transports rendered for each lease (the instance id is inside their address).
        self._templates: dict[EndpointId, DynamoTcp] = {}
        #: Metadata entries bound to the lease that the application wants, by a stable identity (a model
        #: card's key holds the instance id): each renders its entry for a lease id.
        self._wanted_entries: dict[Hashable, Callable[[int], MetadataEntry]] = {}
        #: What of those is written under the current lease.
        self._written_entries: dict[Hashable, MetadataEntry] = {}
        self._sets: dict[InstanceQuery, InstanceSet] = {}
        self._health = HealthRecorder()
        #: Set when the lease was replaced, the runtime failed or left: registrations waiting look again.
        self._changed = Wake()
        #: Asks the keep-alive loop to renew now (a registration found the lease gone).
        self._renew_now = Wake()
        self._failure: BaseException | None = None
        #: The port of the probe endpoint once listening (``DYN_HEALTH_PORT``; 0 picks a free one).
        self.health_port: int | None = None
        self._metrics = metrics()
        #: Registrations reported to the metrics (so leaving the runtime subtracts exactly those).
        self._counted = 0
        #: Whether the registrations changed since the health last counted them.
        self._registrations_changed = False

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
        async with AsyncExitStack() as stack:
            if self._given_backend is not None:
                self._backend = self._given_backend
            else:
                assert self._backend_name is not None
                made, self._made_backend = self._made_backend, None
                self._backend = made or create_backend(self._backend_name)
                stack.push_async_callback(self._backend.aclose)
            self._failure = None
            self._lease = await self._backend.grant_lease(self.lease_ttl)
            self._health.granted(self._lease.id, self._lease.ttl)
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
            if self.settings.health_port is not None:
                self.health_port = await self._tg.start(
                    serve_probes, self.health, self.settings.health_host, self.settings.health_port
                )
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
            failure = self._failure
            why = RuntimeNotStartedError(
                f"the runtime stopped ({type(failure).__name__}: {failure}): this view no longer changes"
                if failure is not None
                else "the runtime left its 'async with': this view no longer changes"
            )
            for found in self._sets.values():
                found.detach()
                found.close(why, clean=failure is None)
            self._sets.clear()

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
        """Every endpoint instance this runtime has written under its current lease."""
        return list(self._registered.values())

    def health(self) -> RuntimeHealth:
        """The lease's state now (held, outage, replacing, failed ...), for the application and probes."""
        if self._registrations_changed:
            self._update_registration_health()
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

    # -- operations used by the handles ----------------------------------------------------------------
    def _for_lease(self, endpoint: EndpointId, instance: Instance, lease_id: int) -> Instance:
        """``instance`` under ``lease_id``: its id, and a transport rendered for that id if it has a
        template."""
        if instance.instance_id == lease_id:
            return instance
        template = self._templates.get(endpoint)
        if template is None:
            return instance.replace(instance_id=lease_id)
        return instance.replace(instance_id=lease_id, transport=template.render(endpoint, lease_id))

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
        and completes under it. If this raises, the registration is forgotten as the application would
        expect (a write that did land is removed with the lease, or by :meth:`unregister`).
        """
        if self._failure is not None:
            raise self._failure
        lease = self.lease
        template: DynamoTcp | None = None
        given: Transport | str | Mapping[str, str] | None
        if isinstance(transport, DynamoTcp):
            template, given = transport, transport.render(endpoint, lease.id)
        else:
            given = transport
        # Checked before anything is recorded or written: a bad record is the caller's error, at once.
        previous = self._wanted.get(endpoint)
        previous_template = self._templates.get(endpoint)
        wanted = Instance.for_endpoint(
            endpoint,
            lease.id,
            given,
            metadata,
            readiness,
            device_type=device_type,
            request_plane_codec=request_plane_codec,
            # When the endpoint was first registered: an update keeps it, so the age a reader shows is honest.
            registered_at=previous.registered_at if previous is not None else time.time(),
        )
        self._wanted[endpoint] = wanted
        restore(self._templates, endpoint, template)
        try:
            while True:
                async with self._lease_lock.shared():
                    lease = self.lease
                    instance = self._for_lease(endpoint, wanted, lease.id)
                    try:
                        stored = await self.backend.register(instance, lease)
                    except LeaseNotFoundError:
                        self._renew_now.set()  # ask the server now; it decides whether the lease is gone
                    else:
                        self._registered[endpoint] = stored
                        self._note_registrations()
                        return stored
                await self._wait_for_another_lease(lease)
        except BaseException:
            if self._wanted.get(endpoint) is wanted:
                restore(self._wanted, endpoint, previous)
                restore(self._templates, endpoint, previous_template)
                self._note_registrations()
            raise

    async def _wait_for_another_lease(self, lease: Lease) -> None:
        """Wait until the lease is replaced (or the runtime fails, or leaves)."""
        while self._lease is lease and self._failure is None:
            self._changed.clear()
            await self._changed.wait()
        if self._failure is not None:
            raise self._failure
        if self._lease is None:
            raise RuntimeNotStartedError("the runtime left its 'async with' during the registration")

    async def unregister(self, endpoint: EndpointId) -> None:
        """Remove the registration of ``endpoint`` (a no-op if it is not registered)."""
        # Forgotten before waiting for the lock: a lease replacement under way must not register it again
        # (found by chaos seed 1004 on an etcd cluster: it came back for a moment under the new lease).
        self._wanted.pop(endpoint, None)
        self._templates.pop(endpoint, None)
        async with self._lease_lock.shared():
            instance = self._registered.pop(endpoint, None)
            try:
                if instance is not None:
                    await self.backend.unregister(instance)
            except BaseException:
                # Still written: keep it known, so that unregistering again (or the revoke) removes it.
                self._registered[endpoint] = instance  # type: ignore[assignment]
                raise
            finally:
                self._note_registrations()

    async def instance_set(self, query: InstanceQuery) -> InstanceSet:
        """The shared live set for ``query``, watched once per runtime; established before it returns.

        A set got this way is kept for the runtime's life; clients and ``watch()`` hold theirs only while
        they are used (:meth:`acquire_instance_set`).
        """
        found = await self.acquire_instance_set(query)
        found.pin()
        return found

    async def acquire_instance_set(self, query: InstanceQuery) -> InstanceSet:
        """The shared live set for ``query``, with one more user: :meth:`InstanceSet.release` it when done.

        The set's watch stops when its last user releases it. Waiting for a watch to be established holds
        no lock of the runtime: a slow watch delays only the users of its own query.
        """
        while True:
            found = self._sets.get(query)
            if found is None:
                if self._tg is None:
                    raise RuntimeNotStartedError(
                        "watches need a running runtime: 'async with DistributedRuntime()'"
                    )
                # Recorded before the watch starts: a second first user of the query waits for this one.
                found = self._sets[query] = InstanceSet(self.backend, query, on_unused=self._forget_set)
                found.acquire()
                try:
                    await self._tg.start(found.run_until_unused)
                except BaseException as exc:
                    found.failed(exc)
                    raise
                return found
            found.acquire()
            try:
                await found.wait_started()
            except BaseException:
                found.release()
                raise
            if self._sets.get(query) is found:
                return found
            found.release()  # it was stopped while we waited: start another

    def _forget_set(self, found: InstanceSet) -> None:
        if self._sets.get(found.query) is found:
            del self._sets[found.query]

    async def list(self, query: InstanceQuery | None = None) -> list[Instance]:
        """One-shot list of the instances matching ``query`` (everything by default)."""
        return await self.backend.list(query or InstanceQuery())

    @asynccontextmanager
    async def watch(self, query: InstanceQuery | None = None) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        """Watch ``query`` (everything by default): ``async with runtime.watch(q) as events:``, then
        ``async for event in events`` gives a ``Resync`` first, then ``Added`` / ``Removed``.

        The watch is live when the block starts and stops when it ends, however the block ends.
        """
        source = await self.acquire_instance_set(query or InstanceQuery())
        subscription = source.subscribe()
        try:
            yield subscription
        finally:
            source.unsubscribe(subscription)
            source.release()
