"""Discovery over a key-value store with leases: written once, shared by etcd, NATS, file and memory.

:class:`KvDiscovery` turns a :class:`~dyndisc.backends.kv.KeyValueStore` into a
:class:`~dyndisc.backends.base.DiscoveryBackend`: it lays out keys, serialises records, and turns raw store
events into ``Resync`` / ``Added`` / ``Removed``, skipping (with a warning) any record it cannot read.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dyndisc._concurrency import gc_paused
from dyndisc._diagnosis import BackendDoctor
from dyndisc._errors import ConfigurationError, RegistrationConflictError
from dyndisc._models import Added, DiscoveryEvent, EndpointId, Instance, InstanceQuery, Removed, Resync
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.kv.layouts import KeyLayout, make_layout
from dyndisc.backends.kv.store import KeyValueStore, StoreEvent, StorePut, StoreSnapshot

log = logging.getLogger("dyndisc.kv")


class KvDiscovery(DiscoveryBackend):
    """Discovery over any :class:`KeyValueStore`.

    By default keys are ``{root}/{namespace}/{component}/{endpoint}/{instance_id:x}`` and values are the
    compact JSON record of the :class:`~dyndisc.Instance`; ``layout="dynamo-v1"`` (or
    ``DYN_KV_LAYOUT=dynamo-v1``) reads and writes the reference runtime's keys and records instead (see
    :mod:`dyndisc.backends.kv.layouts`). The instance id of a process is its lease id.
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
        if self.layout.name not in store.layouts:
            raise ConfigurationError(
                f"the {store.name} store cannot hold the {self.layout.name} key layout (it holds "
                f"{', '.join(sorted(store.layouts))}): unset DYN_KV_LAYOUT or pick another backend"
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
        # Which instances this watch reported, as endpoint -> ids (the ids are the instances' own int
        # objects): a Removed names only an instance reported, and nothing else is held per instance here.
        known: dict[EndpointId, set[int]] = {}
        async for event in raw:
            if isinstance(event, StoreSnapshot):
                instances = self._decode_all(event.items)
                del event  # the raw snapshot is garbage once decoded: do not hold it while suspended
                known = _ids_by_endpoint(instances)
                yield Resync(instances=instances)
                continue
            put = self.parse(event.key, event.value) if isinstance(event, StorePut) else None
            if put is not None:
                known.setdefault(put.endpoint_id, set()).add(put.instance_id)
                yield Added(instance=put)
            elif (identity := self.layout.identity_of(event.key)) is not None and identity[1] in known.get(
                identity[0], ()
            ):
                # Deleted, or what the key held is gone from it (an unreadable value): remove it here too,
                # as a list or a new watch (which would skip the unreadable value) would not show it either.
                known[identity[0]].discard(identity[1])
                yield Removed(endpoint=identity[0], instance_id=identity[1])

    def _decode_all(self, items: dict[str, bytes]) -> tuple[Instance, ...]:
        """Every readable record of a snapshot, in key order."""
        if any(a > b for a, b in itertools.pairwise(items)):  # etcd lists in key order; others may not
            items = dict(sorted(items.items()))
        with gc_paused():  # many objects, none of them garbage: the collector would only rescan them
            return tuple(self.layout.parse_all(items))

    async def aclose(self) -> None:
        if self._owns_store:
            await self.store.aclose()

    @property
    def stale_since(self) -> float | None:
        return self.store.stale_since

    @property
    def default_lease_ttl(self) -> float | None:
        return self.store.default_lease_ttl

    def doctor(self) -> BackendDoctor:
        return self.store.doctor()


def _ids_by_endpoint(instances: tuple[Instance, ...]) -> dict[EndpointId, set[int]]:
    found: dict[EndpointId, set[int]] = {}
    ids: set[int] = set()
    names: tuple[str, str, str] | None = None
    for instance in instances:
        # A snapshot holds long runs of one endpoint: look its set up only when the endpoint changes.
        if names != (instance.namespace, instance.component, instance.endpoint):
            names = (instance.namespace, instance.component, instance.endpoint)
            ids = found.setdefault(instance.endpoint_id, set())
        ids.add(instance.instance_id)
    return found
