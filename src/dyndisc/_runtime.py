"""``DistributedRuntime``: one lease per process, its keep-alive loop, and handles to endpoints."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dyndisc._concurrency import SharedExclusiveLock, background_tasks
from dyndisc._errors import LeaseLostError, RuntimeNotStartedError
from dyndisc._handles import Component, Endpoint, Namespace
from dyndisc._instance_set import InstanceSet
from dyndisc._lease import LeaseChange, LeaseExpired, keep_lease_alive, retry_forever
from dyndisc._metrics import metrics
from dyndisc._models import DiscoveryEvent, EndpointId, Instance, InstanceQuery, Readiness, Transport
from dyndisc._settings import DEFAULT_LEASE_TTL, LeaseLossPolicy, RuntimeSettings, canonical_backend_name
from dyndisc.backends import create_backend
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.kv import KeyValueStore, KvDiscovery

__all__ = ["Component", "DistributedRuntime", "Endpoint", "LeaseChangeCallback", "Namespace"]

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
        if lease_ttl is not None:
            overrides["lease_ttl"] = lease_ttl
        if lease_loss_policy is not None:
            overrides["lease_loss_policy"] = lease_loss_policy
        self.settings: RuntimeSettings = RuntimeSettings.load(**overrides)
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
        self._sets_lock = anyio.Lock()
        self._registered: dict[EndpointId, Instance] = {}
        self._sets: dict[InstanceQuery, InstanceSet] = {}
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
                assert self._backend_name is not None
                made, self._made_backend = self._made_backend, None
                self._backend = made or create_backend(self._backend_name)
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
        if lease is None:
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
                await keep_lease_alive(self._backend, lease)
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
                        moved = instance.replace(instance_id=lease.id)
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
        return Namespace(self, name)

    # -- operations used by the handles ----------------------------------------------------------------
    async def register(
        self,
        endpoint: EndpointId,
        transport: Transport | str | Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
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
                metadata=metadata,
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

    @asynccontextmanager
    async def watch(self, query: InstanceQuery | None = None) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        """Watch ``query`` (everything by default): ``async with runtime.watch(q) as events:``, then
        ``async for event in events`` gives a ``Resync`` first, then ``Added`` / ``Removed``.

        The watch is live when the block starts and stops when it ends, however the block ends.
        """
        source = await self.instance_set(query or InstanceQuery())
        subscription = source.subscribe()
        try:
            yield subscription
        finally:
            source.unsubscribe(subscription)
