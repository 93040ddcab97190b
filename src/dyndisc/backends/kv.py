"""Discovery over a key-value store with leases: written once, shared by etcd, NATS, file and memory.

A :class:`KeyValueStore` is small (grant / keep-alive / revoke a lease, create-if-absent, put, delete, read a
prefix, watch a prefix). :class:`KvDiscovery` turns it into a
:class:`~dyndisc.backends.base.DiscoveryBackend`:
it lays out keys, serialises records, and turns raw store events into ``Resync`` / ``Added`` / ``Removed``,
skipping (with a warning) any record it cannot read.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from dyndisc._errors import ConfigurationError, RegistrationConflictError
from dyndisc._models import Added, DiscoveryEvent, Instance, InstanceQuery, Removed, Resync
from dyndisc.backends._layouts import DEFAULT_ROOT as DEFAULT_ROOT  # re-exported: the default key root
from dyndisc.backends._layouts import KeyLayout, make_layout
from dyndisc.backends.base import DiscoveryBackend, Lease

log = logging.getLogger("dyndisc.kv")


@dataclass(frozen=True)
class StoredValue:
    """A value in the store and the lease that owns it (0 when the value has no lease)."""

    value: bytes
    lease_id: int


@dataclass(frozen=True)
class StorePut:
    """A key was created or changed."""

    key: str
    value: bytes


@dataclass(frozen=True)
class StoreDelete:
    """A key was deleted (by a client, or because its lease ended)."""

    key: str


@dataclass(frozen=True)
class StoreSnapshot:
    """Every key under the watched prefix, authoritatively: replace what you had."""

    items: dict[str, bytes]


StoreEvent = StorePut | StoreDelete | StoreSnapshot


class KeyValueStore(abc.ABC):
    """A key-value store with leases and prefix watches. Keys are ``/``-separated strings.

    Implementations own their server connection and translate its failures: a watch resumes by itself
    and, when it cannot prove it missed nothing, emits a new :class:`StoreSnapshot`.
    """

    #: Short name used in settings and logs.
    name: str = "kv"

    def __repr__(self) -> str:
        """Where the store is; stores with a server or a directory override it to say which."""
        return f"{type(self).__name__}()"

    @abc.abstractmethod
    async def grant(self, ttl: float) -> Lease:
        """Grant a lease of ``ttl`` seconds; its id is never 0."""
        raise NotImplementedError

    @abc.abstractmethod
    async def keep_alive(self, lease_id: int) -> float:
        """Renew a lease and return the seconds left; :class:`~dyndisc.LeaseNotFoundError` if gone."""
        raise NotImplementedError

    @abc.abstractmethod
    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete every key attached to it; a no-op for an unknown lease."""
        raise NotImplementedError

    @abc.abstractmethod
    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        """Create ``key`` under ``lease_id`` if absent and return ``None``; else return what is there."""
        raise NotImplementedError

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        """Write ``key`` under ``lease_id`` whether or not it exists."""
        raise NotImplementedError

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete ``key``; a no-op if absent."""
        raise NotImplementedError

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every key starting with ``prefix`` and its value."""
        raise NotImplementedError

    @abc.abstractmethod
    def watch(self, prefix: str) -> AbstractAsyncContextManager[AsyncIterator[StoreEvent]]:
        """Watch every key starting with ``prefix``; the first event is a :class:`StoreSnapshot`."""
        raise NotImplementedError

    async def aclose(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the connection."""

    @property
    def stale_since(self) -> float | None:
        """``time.monotonic()`` when the store lost its server, or ``None`` while connected."""
        return None


class KvDiscovery(DiscoveryBackend):
    """Discovery over any :class:`KeyValueStore`.

    By default keys are ``{root}/{namespace}/{component}/{endpoint}/{instance_id:x}`` and values are the
    compact JSON record of the :class:`~dyndisc.Instance`; ``layout="dynamo-v1"`` (or
    ``DYN_KV_LAYOUT=dynamo-v1``) reads and writes the reference runtime's keys and records instead (see
    :mod:`dyndisc.backends._layouts`). The instance id of a process is its lease id.
    """

    def __init__(
        self,
        store: KeyValueStore,
        *,
        root: str | None = None,
        owns_store: bool = True,
        layout: str | KeyLayout | None = None,
    ) -> None:
        self.layout = make_layout(layout, root=root)
        if self.layout.name == "dynamo-v1" and store.name == "file":
            raise ConfigurationError(
                "the dynamo-v1 key layout needs a store the reference runtime shares (etcd, nats or memory); "
                "the file backend keeps its own layout: unset DYN_KV_LAYOUT or pick another backend"
            )
        self.store = store
        self.root = self.layout.root
        self.name = store.name
        self._owns_store = owns_store

    # -- keys -------------------------------------------------------------------------------------------
    def key_for(self, instance: Instance) -> str:
        """The key an instance is stored under."""
        return self.layout.key_for(instance)

    def prefix_for(self, query: InstanceQuery) -> str:
        """The key prefix covering ``query``; it ends with ``/`` so ``ns`` never matches ``ns2``."""
        return self.layout.prefix_for(query)

    def encode(self, instance: Instance) -> bytes:
        """The record stored for ``instance`` under this layout."""
        return self.layout.encode(instance)

    def parse(self, key: str, value: bytes) -> Instance | None:
        """Read one stored record, or warn and return ``None`` if it is not one of ours."""
        return self.layout.parse(key, value)

    # -- DiscoveryBackend ----------------------------------------------------------------------------------
    async def grant_lease(self, ttl: float) -> Lease:
        return await self.store.grant(ttl)

    async def keep_alive(self, lease: Lease) -> float:
        return await self.store.keep_alive(lease.id)

    async def revoke_lease(self, lease: Lease) -> None:
        await self.store.revoke(lease.id)

    async def register(self, instance: Instance, lease: Lease) -> Instance:
        key = self.key_for(instance)
        value = self.encode(instance)
        existing = await self.store.create(key, value, lease.id)
        if existing is None:
            return instance
        if existing.lease_id != lease.id:
            raise RegistrationConflictError(
                f"{key} is already registered under lease {existing.lease_id:x} (this process holds lease "
                f"{lease.id:x}); another process uses the same instance id"
            )
        if existing.value != value:
            await self.store.put(key, value, lease.id)  # same owner, new record: an upsert
        return instance

    async def unregister(self, instance: Instance) -> None:
        await self.store.delete(self.key_for(instance))

    async def list(self, query: InstanceQuery) -> list[Instance]:
        items = await self.store.get_prefix(self.prefix_for(query))
        found = (self.parse(k, v) for k, v in sorted(items.items()))
        return [i for i in found if i is not None]

    @asynccontextmanager
    async def watch(self, query: InstanceQuery) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        async with self.store.watch(self.prefix_for(query)) as raw:
            yield self._translate(raw)

    async def _translate(self, raw: AsyncIterator[StoreEvent]) -> AsyncIterator[DiscoveryEvent]:
        known: dict[str, Instance] = {}
        async for event in raw:
            if isinstance(event, StoreSnapshot):
                known = {}
                for key, value in sorted(event.items.items()):
                    instance = self.parse(key, value)
                    if instance is not None:
                        known[key] = instance
                yield Resync(instances=tuple(known.values()))
            elif isinstance(event, StorePut):
                instance = self.parse(event.key, event.value)
                # An unreadable update keeps the last good record (as the reference runtime does): the
                # instance is still leased, and a later valid write or a delete settles it.
                if instance is not None and known.get(event.key) != instance:
                    known[event.key] = instance
                    yield Added(instance=instance)
            else:
                gone = known.pop(event.key, None)
                if gone is not None:
                    yield Removed(endpoint=gone.endpoint_id, instance_id=gone.instance_id)

    async def aclose(self) -> None:
        if self._owns_store:
            await self.store.aclose()

    @property
    def stale_since(self) -> float | None:
        return self.store.stale_since
