"""The one interface every discovery backend implements.

A backend owns the connection to its server. The runtime drives it: one lease per process, registrations
under that lease, lists and watches. Key-value backends share one implementation of this interface
(:class:`dyndisc.backends.kv.KvDiscovery`); Kubernetes implements it directly.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field

from dyndisc._entries import EntryEvent, MetadataEntry
from dyndisc._events import DiscoveryEvent
from dyndisc._models import Instance, InstanceQuery
from dyndisc.backends.diagnosis import BackendDoctor


@dataclass(frozen=True)
class Lease:
    """A lease granted by the backend: every registration of a process hangs off it.

    ``id`` is also the process's instance id. ``ttl`` is the granted time-to-live in seconds. ``holder``
    tells apart grants a backend cannot tell apart by id (on Kubernetes every lease of a pod has the pod's
    id, and several runtimes may share its resource); it takes no part in equality.
    """

    id: int
    ttl: float
    holder: int = field(default=0, compare=False)


class Connected:
    """What backends and stores say about their server, beyond their operations: closing the connection,
    since when the server is lost, the lease TTL their settings ask for, and their ``dyndisc doctor`` checks.

    The defaults suit a store with no server (memory).
    """

    async def aclose(self) -> None:
        """Release the connection. The runtime calls this for backends it created."""

    @property
    def stale_since(self) -> float | None:
        """``time.monotonic()`` when the server was lost, or ``None`` while connected."""
        return None

    @property
    def default_lease_ttl(self) -> float | None:
        """The lease TTL the settings ask for (``ETCD_LEASE_TTL``), or ``None``."""
        return None

    @property
    def tells_lease_time(self) -> bool:
        """Whether a lease's time left can be read here (``lease_time_left``): then ``None`` from it means
        the lease is gone. ``False`` where leases have no TTL (Kubernetes) or it cannot be read (NATS)."""
        return False

    def doctor(self) -> BackendDoctor:
        """What ``dyndisc doctor`` checks here beyond the checks every backend shares."""
        return BackendDoctor()


class DiscoveryBackend(Connected, abc.ABC):
    """Where instances are registered and watched. Subclasses must keep the contract in ``docs/concepts.md``:

    * ``register`` is create-if-absent under the lease, idempotent for the same owner, an upsert of the
      record for the same owner, and a :class:`~dyndisc.RegistrationConflictError` for another owner.
    * ``watch`` is established before its context is entered; its first event is a ``Resync`` and after any
      reconnect or lost history it emits a fresh ``Resync``, so a consumer never keeps a vanished instance.
    * an expired or revoked lease removes every instance registered under it.
    """

    #: Short name used in settings and logs (``etcd``, ``memory`` ...).
    name: str = "backend"

    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> Lease:
        """Grant a new lease of ``ttl`` seconds."""
        raise NotImplementedError

    @abc.abstractmethod
    async def keep_alive(self, lease: Lease) -> float:
        """Renew ``lease``; return the seconds it now has left.

        Raises :class:`~dyndisc.LeaseNotFoundError` if the server no longer knows the lease; any other
        exception is treated as transient and retried by the runtime within the time left.
        """
        raise NotImplementedError

    @abc.abstractmethod
    async def revoke_lease(self, lease: Lease) -> None:
        """Revoke ``lease`` now, removing every registration under it; a no-op for an unknown lease."""
        raise NotImplementedError

    @abc.abstractmethod
    async def register(self, instance: Instance, lease: Lease) -> Instance:
        """Register ``instance`` under ``lease`` (create-if-absent, idempotent); return what is stored.

        A record that cannot be written (:class:`~dyndisc.RecordTooLargeError`, metadata that is not JSON)
        is refused with that error before anything is written.
        """
        raise NotImplementedError

    @abc.abstractmethod
    async def unregister(self, instance: Instance) -> None:
        """Remove the registration of ``instance``. Unregistering something absent is a no-op."""
        raise NotImplementedError

    @abc.abstractmethod
    async def list(self, query: InstanceQuery) -> list[Instance]:
        """The instances matching ``query`` now."""
        raise NotImplementedError

    @abc.abstractmethod
    def watch(self, query: InstanceQuery) -> AbstractAsyncContextManager[AsyncIterator[DiscoveryEvent]]:
        """Watch ``query``: ``async with backend.watch(q) as events: async for event in events: ...``.

        The watch exists once the ``async with`` is entered. It runs until the block exits; transient server
        failures are retried inside, and surface as a new ``Resync`` once the watch is re-established.
        """
        raise NotImplementedError

    async def lease_time_left(self, instance_id: int) -> float | None:
        """Seconds the lease of ``instance_id`` has left on the server, for display (``dyndisc ui``);
        ``None`` where the backend cannot tell (no TTL, as on Kubernetes) or the lease is gone."""
        return None

    # -- metadata entries ------------------------------------------------------------------------------
    # Not abstract: a backend written before entries existed keeps working for instances, and says clearly
    # that it does not store entries when asked.
    async def put_entry(self, entry: MetadataEntry, lease: Lease | None) -> None:
        """Write ``entry`` (replacing any value at its key) under ``lease``, so it goes when the lease does,
        or, with ``lease=None``, until it is deleted."""
        raise NotImplementedError(f"the {self.name} backend does not store metadata entries")

    async def delete_entry(self, bucket: str, key: str) -> None:
        """Delete the entry ``key`` of ``bucket``; a no-op if absent."""
        raise NotImplementedError(f"the {self.name} backend does not store metadata entries")

    async def list_entries(self, bucket: str, prefix: str = "") -> builtins.list[MetadataEntry]:
        """The live entries of ``bucket`` whose key starts with ``prefix``, ordered by key."""
        raise NotImplementedError(f"the {self.name} backend does not store metadata entries")

    def watch_entries(
        self, bucket: str, prefix: str = ""
    ) -> AbstractAsyncContextManager[AsyncIterator[EntryEvent]]:
        """Watch the entries of ``bucket`` whose key starts with ``prefix``: an ``EntryResync`` first, then
        ``EntryAdded`` / ``EntryRemoved``, with the guarantees of :meth:`watch`."""
        raise NotImplementedError(f"the {self.name} backend does not store metadata entries")

    def follow_leases(self, renew_now: Callable[[], None]) -> AbstractAsyncContextManager[object]:
        """Held by a runtime for as long as it holds leases of this backend (around its keep-alive loop).

        A backend that hears about its leases through a watch (Kubernetes follows its worker's resource
        through its shared informer) keeps that watch here and calls ``renew_now()`` when a lease may have
        changed, so the keep-alive loop asks at once instead of at its next period. The default holds
        nothing.
        """
        return nullcontext()

    async def __aenter__(self) -> DiscoveryBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
