"""``DistributedRuntime``: one lease per process, its keep-alive loop, and handles to endpoints."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dyndisc._concurrency import SharedExclusiveLock, Wake, background_tasks
from dyndisc._errors import LeaseLostError, LeaseNotFoundError, RuntimeNotStartedError
from dyndisc._handles import Component, Endpoint, Namespace
from dyndisc._health import HealthRecorder, RuntimeHealth
from dyndisc._instance_set import InstanceSet
from dyndisc._lease import (
    REVOKE_BUDGET,
    LeaseChange,
    LeaseLost,
    keep_lease_alive,
    revoke_on_exit,
    ride_out_outages,
)
from dyndisc._metrics import metrics
from dyndisc._models import DiscoveryEvent, EndpointId, Instance, InstanceQuery, Readiness, Transport
from dyndisc._probe import serve_probes
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
        health_port: int | None = None,
    ) -> None:
        overrides: dict[str, object] = {}
        if health_port is not None:
            overrides["health_port"] = health_port
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
        #: What the application registered (and did not unregister), in the order it did: the runtime makes
        #: this true under whatever lease it holds.
        self._wanted: dict[EndpointId, Instance] = {}
        #: What is written under the current lease.
        self._registered: dict[EndpointId, Instance] = {}
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
            self._sets.clear()

    async def _release_lease(self) -> None:
        """Revoke the lease on a clean exit, retried within its budget; say what stays behind if it fails."""
        assert self._backend is not None
        lease, self._lease = self._lease, None
        self._count_registrations(live=False)
        self._changed.set()
        revoked = False
        if lease is not None and self._failure is None:
            revoked = await revoke_on_exit(self._backend, lease, len(self._registered))
        self._health.closed(revoked)

    async def _hold_lease(self) -> None:
        """The keep-alive task: renew; replace the lease when the server says it is gone (or shut down)."""
        assert self._backend is not None
        try:
            # A backend that watches its leases wakes the loop itself when one changes (Kubernetes).
            async with self._backend.follow_leases(self._renew_now.set):
                while True:
                    lease = self.lease
                    try:
                        await keep_lease_alive(self._backend, lease, self._health, self._renew_now)
                    except LeaseLost as exc:
                        log.error("lost lease %x: %s", lease.id, exc)
                        self._metrics.lease_lost(self._backend.name)
                        if self.lease_loss_policy is LeaseLossPolicy.SHUTDOWN:
                            raise LeaseLostError(
                                f"runtime shut down: {exc} (lease_loss_policy=shutdown)"
                            ) from exc
                        await self._replace_lease(lease, str(exc))
        except Exception as exc:
            # A permanent error, or a lost lease under the shutdown policy: stop, and tell everyone waiting.
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._health.failed(f"{type(exc).__name__}: {exc}")
        self._changed.set()
        log.error("the runtime stops: %s", exc)

    async def _replace_lease(self, old: Lease, reason: str) -> None:
        """Grant a new lease and register every wanted endpoint under it; revoke the old one in the
        background (it is usually gone already, but a server that lost track must not keep it)."""
        backend = self.backend
        self._health.replacing(reason)
        async with self._lease_lock.exclusive():

            async def grant_and_register() -> Lease:
                lease = await backend.grant_lease(self.lease_ttl)
                # The new id is ours from now on: watchers may see it before re-registration completes.
                self._lease = lease
                self._registered = {}
                try:
                    for endpoint, instance in list(self._wanted.items()):
                        moved = instance.replace(instance_id=lease.id)
                        self._registered[endpoint] = await backend.register(moved, lease)
                except BaseException:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(REVOKE_BUDGET):
                        await backend.revoke_lease(lease)
                    raise
                return lease

            new = await ride_out_outages("granting a new lease", grant_and_register)
        assert self._tg is not None
        if old.id != new.id:  # on Kubernetes a pod's lease keeps its id: the "old" one is the new one
            self._tg.start_soon(self._revoke_until_gone, old)
        self._health.granted(new.id, new.ttl)
        self._note_registrations()
        self._changed.set()
        log.warning(
            "replaced lost lease %x with %x and re-registered %d endpoints",
            old.id,
            new.id,
            len(self._registered),
        )
        if self.on_lease_change is not None:
            try:
                result = self.on_lease_change(LeaseChange(old.id, new.id, reason))
                if inspect.isawaitable(result):
                    await result
            except Exception:  # the application's callback must not take the keep-alive loop down
                log.exception("on_lease_change callback failed")

    async def _revoke_until_gone(self, lease: Lease) -> None:
        await ride_out_outages(
            f"revoking the lost lease {lease.id:x}", lambda: self.backend.revoke_lease(lease)
        )

    def _note_registrations(self) -> None:
        lease_id = self._lease.id if self._lease is not None else None
        pending = sum(
            1
            for endpoint in self._wanted
            if (found := self._registered.get(endpoint)) is None or found.instance_id != lease_id
        )
        self._health.registrations(len(self._wanted), pending)
        self._count_registrations()

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
        """Every endpoint instance this runtime has written under its current lease."""
        return list(self._registered.values())

    def health(self) -> RuntimeHealth:
        """The lease's state now (held, outage, replacing, failed ...), for the application and probes."""
        return self._health.current

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
        """Register ``endpoint`` under the runtime's lease; calling again updates the record in place.

        The registration is recorded before the backend is called, so it is never lost to a lease
        replacement: one that meets a lease just found gone waits for the new lease and completes under it.
        If this raises, the registration is forgotten as the application would expect (a write that did
        land is removed with the lease, or by :meth:`unregister`).
        """
        if self._failure is not None:
            raise self._failure
        lease = self.lease
        # Checked before anything is recorded or written: a bad record is the caller's error, at once.
        wanted = Instance(
            endpoint.namespace,
            endpoint.component,
            endpoint.endpoint,
            lease.id,
            transport,
            metadata,
            readiness,
        )
        previous = self._wanted.get(endpoint)
        self._wanted[endpoint] = wanted
        try:
            while True:
                async with self._lease_lock.shared():
                    lease = self.lease
                    instance = (
                        wanted if wanted.instance_id == lease.id else wanted.replace(instance_id=lease.id)
                    )
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
                _restore(self._wanted, endpoint, previous)
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
        async with self._lease_lock.shared():
            self._wanted.pop(endpoint, None)
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


def _restore(mapping: dict[EndpointId, Instance], key: EndpointId, previous: Instance | None) -> None:
    if previous is None:
        mapping.pop(key, None)
    else:
        mapping[key] = previous
