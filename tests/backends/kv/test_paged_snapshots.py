"""A watch's snapshot handed on in parts (etcd's pages; the memory store's when asked): each reader applies
it whole, once its last part is in, and never shows a part of one."""

from __future__ import annotations

import anyio
import pytest
from kv_helpers import virtual

from dyndisc import EntryResync, Instance, InstanceQuery, KvDiscovery, MetadataEntry, Resync
from dyndisc.backends.memory import MemoryStore

NS = "paged"
COUNT = 9


def _instance(n: int, *, draining: bool = False) -> Instance:
    return Instance(
        namespace=NS,
        component="c",
        endpoint="e",
        instance_id=n + 1,
        transport=f"tcp://10.0.0.{n}:1",
        readiness="draining" if draining else "ready",
    )


@pytest.mark.parametrize("layout", ["dyndisc", "dynamo-v1"])
@pytest.mark.parametrize("page_size", [1, 2, 4])
def test_a_snapshot_in_parts_is_one_resync_of_everything(layout: str, page_size: int) -> None:
    """dynamo-v1 keeps draining records under a side prefix of the same watch: both kinds in one snapshot."""

    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time, list_page_size=page_size)
        async with KvDiscovery(store, layout=layout) as backend:
            lease = await backend.grant_lease(30.0)
            written = [await backend.register(_instance(n, draining=n % 3 == 0), lease) for n in range(COUNT)]
            async with backend.watch(InstanceQuery(namespace=NS)) as events:
                first = await anext(events)
            assert isinstance(first, Resync)
            assert sorted(first.instances, key=lambda i: i.instance_id) == written

    virtual(test)


@pytest.mark.parametrize("page_size", [1, 3])
def test_entries_in_parts_are_one_resync_of_every_entry(page_size: int) -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time, list_page_size=page_size)
        async with KvDiscovery(store) as backend:
            entries = [MetadataEntry("cards", f"m{n}", {"n": n}) for n in range(COUNT)]
            for entry in entries:
                await backend.put_entry(entry, None)
            async with backend.watch_entries("cards") as events:
                first = await anext(events)
            assert first == EntryResync(entries=tuple(entries))

    virtual(test)


def test_two_readers_of_one_watch_each_get_every_part() -> None:

    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time, list_page_size=2)
        one, two = KvDiscovery(store, layout="dynamo-v1"), KvDiscovery(store, layout="dynamo-v1")
        async with one, two:
            lease = await one.grant_lease(30.0)
            written = [await one.register(_instance(n, draining=n % 2 == 0), lease) for n in range(COUNT)]
            query = InstanceQuery(namespace=NS)
            async with one.watch(query) as first, two.watch(query) as second:
                seen = [await anext(first), await anext(second)]
            for event in seen:
                assert isinstance(event, Resync)
                assert sorted(event.instances, key=lambda i: i.instance_id) == written

    virtual(test)
