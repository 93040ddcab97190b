"""Discovery over a key-value store with leases: written once, shared by etcd, NATS, file and memory.

:class:`KvDiscovery` turns a :class:`~dyndisc.backends.kv.KeyValueStore` into a
:class:`~dyndisc.backends.base.DiscoveryBackend`: it lays out keys, serialises records, and turns raw store
events into ``Resync`` / ``Added`` / ``Removed``, skipping (with a warning) any record it cannot read. It
stores metadata entries the same way, one key per entry under the bucket's prefix.
"""

from __future__ import annotations

import builtins
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from dyndisc._concurrency import gc_paused
from dyndisc._entries import (
    EntryAdded,
    EntryEvent,
    EntryRemoved,
    EntryResync,
    MetadataEntry,
    validate_entry_key,
)
from dyndisc._errors import ConfigurationError, InvalidNameError, RegistrationConflictError
from dyndisc._events import Added, DiscoveryEvent, RemovalReason, Removed, Resync
from dyndisc._models import EndpointId, Instance, InstanceQuery
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.diagnosis import BackendDoctor
from dyndisc.backends.kv.layouts import KeyLayout, make_layout
from dyndisc.backends.kv.store import KeyValueStore, StoreEvent, StorePut, StoreSnapshot

log = logging.getLogger("dyndisc.kv")

_Key = tuple[EndpointId, int]


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
                f"{', '.join(sorted(store.layouts))}){store.layout_hint}: unset DYN_KV_LAYOUT or pick "
                "another backend"
            )
        self.store = store
        self.root = self.layout.root
        self.name = store.name
        self._owns_store = owns_store
        #: Side keys this backend wrote (draining instances): a registration that stops draining removes its
        #: side copy, and only then costs a delete.
        self._sided: set[str] = set()

    # -- keys -------------------------------------------------------------------------------------------
    def key_for(self, instance: Instance) -> str:
        """The key an instance is stored under (a draining one, in a layout with a side root, there)."""
        return (
            self.layout.side_key_for(instance)
            if self.layout.is_side(instance)
            else self.layout.key_for(instance)
        )

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

    async def lease_time_left(self, instance_id: int) -> float | None:
        # On the key-value backends an instance id is the id of its process's lease.
        return await self.store.time_to_live(instance_id)

    async def register(self, instance: Instance, lease: Lease) -> Instance:
        key = self.key_for(instance)
        value = self.encode(instance)
        draining = self.layout.is_side(instance)
        if draining:
            # Maybe written from now on: a create cancelled or timed out after it landed leaves the side copy,
            # which the next registration or the unregistration must remove (chaos seed 44).
            self._sided.add(key)
        existing = await self.store.create(key, value, lease.id)
        if existing is not None:
            if existing.lease_id != lease.id:
                self._sided.discard(key)  # not ours to remove
                raise RegistrationConflictError(
                    f"{key} is already registered under lease {existing.lease_id:x} (this process holds "
                    f"lease {lease.id:x}); another process uses the same instance id"
                )
            if existing.value != value:
                await self.store.put(key, value, lease.id)  # same owner, new record: an upsert
        if self.layout.side_root is not None:
            # The record may have moved between the bucket Dynamo reads and the side one (it started or
            # stopped draining): the other copy goes once this one is written, so watchers see no gap.
            if draining:
                await self.store.delete(self.layout.key_for(instance))
            elif (side := self.layout.side_key_for(instance)) in self._sided:
                await self.store.delete(side)
                self._sided.discard(side)
        return instance

    async def unregister(self, instance: Instance) -> None:
        await self.store.delete(self.layout.key_for(instance))
        if self.layout.side_root is not None:
            side = self.layout.side_key_for(instance)
            if side in self._sided or self.layout.is_side(instance):
                await self.store.delete(side)
                self._sided.discard(side)

    async def list(self, query: InstanceQuery) -> list[Instance]:
        items = await self.store.get_prefix(self.prefix_for(query))
        side = self.layout.side_prefix_for(query)
        merged = _Merged(self.parse)
        merged.snapshot(0, items)
        if side is not None:
            merged.snapshot(1, await self.store.get_prefix(side))
        return merged.current()

    @asynccontextmanager
    async def watch(self, query: InstanceQuery) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        main = self.prefix_for(query)
        side = self.layout.side_prefix_for(query)
        if side is None:
            async with self.store.watch(main) as raw:
                yield self._translate(raw)
            return
        # One watch over both prefixes, so a record moving between them (draining starts or stops) arrives
        # in the order it was written: the new copy, then the old one's removal, never a gap.
        async with self.store.watch(self.layout.watch_prefix(query)) as raw:
            yield self._translate_merged(raw, (main, side))

    async def _translate(self, raw: AsyncIterator[StoreEvent]) -> AsyncIterator[DiscoveryEvent]:
        # Which instances this watch reported, as endpoint -> ids (the ids are the instances' own int
        # objects): a Removed names only an instance reported, and nothing else is held per instance here.
        known: dict[EndpointId, set[int]] = {}
        parts: list[tuple[Instance, ...]] = []  # the decoded parts of a snapshot still arriving
        async for event in raw:
            if isinstance(event, StoreSnapshot):
                if not event.continues:
                    parts.clear()
                parts.append(self._decode_all(event.items))
                more = event.more
                del event  # the raw snapshot is garbage once decoded: do not hold it while suspended
                if more:
                    continue
                instances = parts[0] if len(parts) == 1 else tuple(itertools.chain.from_iterable(parts))
                parts.clear()
                known = _ids_by_endpoint(instances)
                yield Resync(instances=instances)
                continue
            put = self.parse(event.key, event.value) if isinstance(event, StorePut) else None
            reason = RemovalReason.UNREADABLE if isinstance(event, StorePut) else event.reason
            if put is not None:
                known.setdefault(put.endpoint_id, set()).add(put.instance_id)
                yield Added(instance=put)
            elif (identity := self.layout.identity_of(event.key)) is not None and identity[1] in known.get(
                identity[0], ()
            ):
                # Deleted, or what the key held is gone from it (an unreadable value): remove it here too,
                # as a list or a new watch (which would skip the unreadable value) would not show it either.
                known[identity[0]].discard(identity[1])
                yield Removed(identity[0], identity[1], reason)

    def _decode_all(self, items: dict[str, bytes]) -> tuple[Instance, ...]:
        """Every readable record of a snapshot, in key order."""
        if any(a > b for a, b in itertools.pairwise(items)):  # etcd lists in key order; others may not
            items = dict(sorted(items.items()))
        with gc_paused():  # many objects, none of them garbage: the collector would only rescan them
            return tuple(self.layout.parse_all(items))

    async def _translate_merged(
        self, raw: AsyncIterator[StoreEvent], prefixes: tuple[str, ...]
    ) -> AsyncIterator[DiscoveryEvent]:
        """Events of instances kept under several prefixes of one watch (Dynamo's, and the side one of
        draining records): the side copy wins, and an instance leaves only when no prefix holds it."""

        def source(key: str) -> int | None:
            return next((i for i, p in enumerate(prefixes) if key.startswith(p)), None)

        merged = _Merged(self.parse, len(prefixes))
        snapshot: dict[str, bytes] = {}  # a snapshot's parts so far
        async for event in raw:
            if isinstance(event, StoreSnapshot):
                if not event.continues:
                    snapshot = {}
                snapshot.update(event.items)  # (not the part's own dict: other readers get it too)
                if event.more:
                    continue
                for index, prefix in enumerate(prefixes):
                    merged.snapshot(index, {k: v for k, v in snapshot.items() if k.startswith(prefix)})
                snapshot = {}
                yield Resync(instances=tuple(merged.current()))
                continue
            found = source(event.key)
            if found is None:
                continue  # another bucket under the watched prefix
            for before, after in merged.apply(found, event):
                if after is None:
                    if before is not None:
                        yield Removed(endpoint=before.endpoint_id, instance_id=before.instance_id)
                elif after != before:
                    yield Added(instance=after)

    # -- metadata entries --------------------------------------------------------------------------------
    def entry_key(self, bucket: str, key: str) -> str:
        """The store key of entry ``key`` of ``bucket``."""
        return self.layout.entry_prefix(bucket) + validate_entry_key(key)

    def _parse_entry(self, bucket: str, base: str, key: str, value: bytes) -> MetadataEntry | None:
        try:
            return MetadataEntry.from_json(bucket, key[len(base) :], value)
        except ValueError as exc:  # InvalidRecordError, or a key that is not one
            self.layout.skipped.warn(key, value, str(exc))
            return None

    async def put_entry(self, entry: MetadataEntry, lease: Lease | None) -> None:
        await self.store.put(
            self.entry_key(entry.bucket, entry.key), entry.to_json(), lease.id if lease else 0
        )

    async def delete_entry(self, bucket: str, key: str) -> None:
        await self.store.delete(self.entry_key(bucket, key))

    async def list_entries(self, bucket: str, prefix: str = "") -> builtins.list[MetadataEntry]:
        base = self.layout.entry_prefix(bucket)
        items = await self.store.get_prefix(base + _entry_prefix(prefix))
        found = (self._parse_entry(bucket, base, k, v) for k, v in sorted(items.items()))
        return [e for e in found if e is not None]

    @asynccontextmanager
    async def watch_entries(self, bucket: str, prefix: str = "") -> AsyncIterator[AsyncIterator[EntryEvent]]:
        base = self.layout.entry_prefix(bucket)
        async with self.store.watch(base + _entry_prefix(prefix)) as raw:
            yield self._translate_entries(bucket, base, raw)

    async def _translate_entries(
        self, bucket: str, base: str, raw: AsyncIterator[StoreEvent]
    ) -> AsyncIterator[EntryEvent]:
        known: dict[str, MetadataEntry] = {}
        snapshot: dict[str, bytes] = {}  # a snapshot's parts so far
        async for event in raw:
            if isinstance(event, StoreSnapshot):
                if not event.continues:
                    snapshot = {}
                snapshot.update(event.items)  # (not the part's own dict: other readers get it too)
                if event.more:
                    continue
                found = (self._parse_entry(bucket, base, k, v) for k, v in sorted(snapshot.items()))
                snapshot = {}
                known = {e.key: e for e in found if e is not None}
                yield EntryResync(entries=tuple(known.values()))
                continue
            key = event.key[len(base) :]
            entry = (
                self._parse_entry(bucket, base, event.key, event.value)
                if isinstance(event, StorePut)
                else None
            )
            if entry is None:
                if known.pop(key, None) is not None:
                    yield EntryRemoved(bucket=bucket, key=key)
            elif known.get(key) != entry:
                known[key] = entry
                yield EntryAdded(entry=entry)

    async def aclose(self) -> None:
        if self._owns_store:
            await self.store.aclose()

    @property
    def stale_since(self) -> float | None:
        return self.store.stale_since

    @property
    def tells_lease_time(self) -> bool:
        return self.store.tells_lease_time

    @property
    def default_lease_ttl(self) -> float | None:
        return self.store.default_lease_ttl

    def doctor(self) -> BackendDoctor:
        return self.store.doctor()


def _entry_prefix(prefix: str) -> str:
    """``prefix`` checked as the start of an entry key (anything a key may start with, or nothing)."""
    if prefix:
        if not isinstance(prefix, str):
            raise InvalidNameError(f"an entry key prefix must be a string, got {type(prefix).__name__}")
        # A prefix ending with '/' is a key's whole first segments; without, a key's beginning.
        validate_entry_key(prefix.rstrip("/") or "x")
    return prefix


class _Merged:
    """The instances held under several prefixes (index 0: the records Dynamo reads; 1: the side records),
    and the one each instance key resolves to: the highest index that holds it."""

    def __init__(self, parse: Callable[[str, bytes], Instance | None], sources: int = 2) -> None:
        self._parse = parse
        self._by_key: list[dict[str, Instance]] = [{} for _ in range(sources)]
        self._by_id: list[dict[_Key, Instance]] = [{} for _ in range(sources)]

    def snapshot(self, index: int, items: dict[str, bytes]) -> None:
        by_key: dict[str, Instance] = {}
        for key, value in sorted(items.items()):
            instance = self._parse(key, value)
            if instance is not None:
                by_key[key] = instance
        self._by_key[index] = by_key
        self._by_id[index] = {i.key: i for i in by_key.values()}

    def apply(self, index: int, event: StoreEvent) -> list[tuple[Instance | None, Instance | None]]:
        """Apply a put or delete of one prefix; return each affected instance before and after."""
        assert not isinstance(event, StoreSnapshot)
        old = self._by_key[index].get(event.key)
        new = self._parse(event.key, event.value) if isinstance(event, StorePut) else None
        keys = [k.key for k in (old, new) if k is not None]
        before = {k: self.effective(k) for k in keys}
        if old is not None:
            del self._by_key[index][event.key]
            self._by_id[index].pop(old.key, None)
        if new is not None:
            self._by_key[index][event.key] = new
            self._by_id[index][new.key] = new
        return [(before[k], self.effective(k)) for k in dict.fromkeys(keys)]

    def effective(self, key: _Key) -> Instance | None:
        for by_id in reversed(self._by_id):
            found = by_id.get(key)
            if found is not None:
                return found
        return None

    def current(self) -> list[Instance]:
        keys = {k for by_id in self._by_id for k in by_id}
        found = (self.effective(k) for k in keys)
        return sorted(
            (i for i in found if i is not None),
            key=lambda i: (i.namespace, i.component, i.endpoint, i.instance_id),
        )


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
