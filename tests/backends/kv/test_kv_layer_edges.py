"""Edges of the key-value layer that the mutants showed unchecked.

KvDiscovery: which draining copies a backend still counts as its own once it has removed them (a copy another
backend wrote later under the same instance id is not its to remove); watch snapshots that come in parts,
start over before their last part came (nothing of the abandoned one is shown) or are listed out of key
order; keys no instance could have, and an unreadable value where an instance was already reported removed;
the warning about an unreadable metadata entry. Layouts: the skip log's warnings (once per version, bounded,
the value shown whole or cut), the bounded prefix cache, key roots and buckets refused, side records read as
draining. The memory store: leases ending on time with nobody calling, the clock read first by the revision,
compaction and time-to-live, TTLs and lease ids refused or granted as etcd's, listings as cancellation
points, the history kept, watches leaving nothing behind. Its change log: cancellation points of listings,
pages and streams, progress only after the interval, a backlog handed on one reply at a time."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from dyndisc import (
    Added,
    ConfigurationError,
    DiscoveryEvent,
    EntryResync,
    Instance,
    InstanceQuery,
    InvalidNameError,
    KvDiscovery,
    MemoryStore,
    MetadataEntry,
    Readiness,
    RemovalReason,
    Removed,
    Resync,
    dynamo_tcp,
)
from dyndisc.backends.base import Lease
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot, layouts
from dyndisc.backends.kv.change_log import ChangeLog
from dyndisc.backends.kv.layouts import DynamoV1Layout, DyndiscLayout, SkipLog
from dyndisc.backends.kv.revisioned import Changes, Created, StreamBroken, WatchReply
from dyndisc.testing.chaos.virtual_time import VirtualLoop

NS = "edges"
WORKER = Instance(namespace=NS, component="c", endpoint="e", instance_id=0x2A, transport="tcp://10.0.0.1:1")
DRAINING = WORKER.replace(readiness=Readiness.DRAINING)
QUERY = InstanceQuery(namespace=NS)


async def _next(events: AsyncIterator[DiscoveryEvent]) -> DiscoveryEvent:
    with anyio.fail_after(5):
        return await anext(events)


async def _two_backends_on_one_store() -> tuple[MemoryStore, KvDiscovery, KvDiscovery, Lease, Lease]:
    """Two dynamo-v1 backends of one store (two processes that were given one instance id), a lease each."""
    store = MemoryStore()
    mine, other = KvDiscovery(store, layout="dynamo-v1"), KvDiscovery(store, layout="dynamo-v1")
    return store, mine, other, await store.grant(30), await store.grant(30)


async def _holds(store: MemoryStore, key: str) -> bool:
    return key in await store.get_prefix("v1/")


async def test_a_draining_copy_removed_on_returning_to_ready_is_no_longer_counted_as_ours() -> None:
    """Back to ready, the backend removes its draining copy; a draining copy written later by another
    backend under the same id is that one's: re-registering ready again leaves it in place."""
    store, mine, other, my_lease, other_lease = await _two_backends_on_one_store()
    side = mine.layout.side_key_for(DRAINING)
    await mine.register(DRAINING, my_lease)
    await mine.register(WORKER, my_lease)
    assert not await _holds(store, side), "the draining copy goes once the ready record is written"
    await other.register(DRAINING, other_lease)
    assert await _holds(store, side)
    await mine.register(WORKER, my_lease)
    assert await _holds(store, side), "the other backend's draining copy is not ours"


async def test_a_draining_copy_removed_by_unregistering_is_no_longer_counted_as_ours() -> None:
    """Unregistered, the backend has removed its draining copy; registering the id again (ready), then
    unregistering it, leaves the draining copy another backend wrote meanwhile."""
    store, mine, other, my_lease, other_lease = await _two_backends_on_one_store()
    side = mine.layout.side_key_for(DRAINING)
    await mine.register(DRAINING, my_lease)
    await mine.unregister(DRAINING)
    assert not await _holds(store, side)
    await other.register(DRAINING, other_lease)
    await mine.register(WORKER, my_lease)
    assert await _holds(store, side), "registering ready again removed the other's copy"
    await mine.unregister(WORKER)
    assert await _holds(store, side), "unregistering ready removed the other's copy"


class _ScriptedWatches(MemoryStore):
    """A memory store whose watches hand on ``script`` (then nothing more), as a store's watch does whose
    listing was cut between two pages and started over (the etcd store's, see
    tests/backends/kv/test_revisioned_watch.py::test_a_listing_broken_between_two_parts_starts_over_and_says_so)."""

    def __init__(self, script: list[StoreEvent]) -> None:
        super().__init__()
        self.script = script

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        async def events() -> AsyncIterator[StoreEvent]:
            for event in self.script:
                yield event
            await anyio.sleep_forever()

        yield events()


async def test_a_snapshot_that_starts_over_before_its_last_part_shows_nothing_of_the_abandoned_one() -> None:
    one, two, three = (WORKER.replace(instance_id=n, transport=f"tcp://10.0.0.{n}:1") for n in (1, 2, 3))
    records = KvDiscovery(MemoryStore())

    def part(instance: Instance, *, more: bool, continues: bool) -> StoreSnapshot:
        items = {records.key_for(instance): records.encode(instance)}
        return StoreSnapshot(items, more=more, continues=continues)

    store = _ScriptedWatches(
        [
            part(one, more=True, continues=False),  # the abandoned listing's first page
            part(two, more=True, continues=False),  # a listing starting over
            part(three, more=False, continues=True),
        ]
    )
    async with KvDiscovery(store) as backend, backend.watch(QUERY) as events:
        assert await _next(events) == Resync(instances=(two, three))


async def test_an_unreadable_value_where_a_removed_instance_was_removes_nothing_more() -> None:
    """An unreadable value at a reported instance's key removes it (a listing would skip it); at the key of
    one already reported removed, there is nothing left to remove: watchers hear of it once."""
    store = MemoryStore()
    backend = KvDiscovery(store)
    async with backend:
        lease = await backend.grant_lease(30)
        await backend.register(WORKER, lease)
        async with backend.watch(QUERY) as events:
            assert await _next(events) == Resync(instances=(WORKER,))
            await backend.unregister(WORKER)
            assert await _next(events) == Removed(endpoint=WORKER.endpoint_id, instance_id=WORKER.instance_id)
            await store.put(backend.key_for(WORKER), b"not a record", 0)  # skipped, with a warning
            later = WORKER.replace(instance_id=0x2B)
            await backend.register(later, lease)
            assert await _next(events) == Added(instance=later), "the next event is the next instance"


async def test_a_snapshot_listed_out_of_key_order_reaches_watchers_in_key_order() -> None:
    """The memory store lists keys in the order they were written (etcd in key order): a watch's snapshot
    is the same, in key order, whichever store it came from."""
    store = MemoryStore()
    first, second = (WORKER.replace(instance_id=n) for n in (0x1, 0x2))
    backend = KvDiscovery(store)
    async with backend:
        lease = await backend.grant_lease(30)
        await backend.register(second, lease)
        await backend.register(first, lease)
        assert list(await store.get_prefix("")) == [backend.key_for(second), backend.key_for(first)]
        async with backend.watch(QUERY) as events:
            assert await _next(events) == Resync(instances=(first, second))


async def test_entries_listed_in_parts_reach_a_watcher_as_one_resync_of_every_entry() -> None:
    store = MemoryStore(list_page_size=1)
    backend = KvDiscovery(store)
    entries = [MetadataEntry("cards", f"m{n}", {"n": n}) for n in range(3)]
    for entry in entries:
        await backend.put_entry(entry, None)
    async with backend, backend.watch_entries("cards") as events:
        with anyio.fail_after(5):
            assert await anext(events) == EntryResync(entries=tuple(entries))


async def test_an_unreadable_entry_is_left_out_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    backend = KvDiscovery(store)
    good = MetadataEntry("cards", "good", {"n": 1})
    await backend.put_entry(good, None)
    await store.put(backend.entry_key("cards", "bad"), b"not json", 0)
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        assert await backend.list_entries("cards") == [good]
    assert "skipping '/cards/bad' = b'not json': entry cards/bad is not JSON" in caplog.text


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dyndisc.kv"]


def test_an_unreadable_record_is_warned_about_once_per_version(caplog: pytest.LogCaptureFixture) -> None:
    """Read again at every listing, it is warned about once; changed, once more; another key's warning
    between the two readings does not make the first key's warned about again."""
    layout = DyndiscLayout()
    key, other = layout.key_for(WORKER), layout.key_for(WORKER.replace(instance_id=0x2B))
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        for value in (b"garbage", b"garbage", b"other garbage", b"other garbage"):
            assert layout.parse(key, value) is None
            assert layout.parse(other, b"garbage") is None
    assert [m.partition(": not a record")[0] for m in _warnings(caplog)] == [
        f"skipping {key!r} = b'garbage'",
        f"skipping {other!r} = b'garbage'",
        f"skipping {key!r} = b'other garbage'",
    ]


def test_past_its_bound_the_skip_log_forgets_and_warns_again(caplog: pytest.LogCaptureFixture) -> None:
    """Its memory of keys is bounded: past that many keys, one warned about before is warned about again."""

    class Small(SkipLog):
        LIMIT = 2

    skipped = Small()
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        for n in range(2 * Small.LIMIT + 1):
            skipped.warn(f"/k{n}", b"x", "why")
        caplog.clear()
        skipped.warn("/k0", b"x", "why")
    assert _warnings(caplog) == ["skipping '/k0' = b'x': why"]


def test_a_skipped_value_is_shown_whole_when_it_fits_and_cut_with_its_length_when_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fits, longer = b"a" * SkipLog.PREVIEW, b"b" * (SkipLog.PREVIEW + 1)
    skipped = SkipLog()
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        skipped.warn("/fits", fits, "why")
        skipped.warn("/longer", longer, "why")
    assert _warnings(caplog) == [
        f"skipping '/fits' = {fits!r}: why",
        f"skipping '/longer' = {longer[: SkipLog.PREVIEW]!r}... ({SkipLog.PREVIEW + 1} bytes): why",
    ]


async def test_a_key_no_instance_could_have_is_passed_over_by_a_watch() -> None:
    """Values and deletions under the watched prefix at keys of another shape (too few segments) are no
    instance's: the watch goes on with the next instance."""
    store = MemoryStore()
    backend = KvDiscovery(store)
    async with backend:
        lease = await backend.grant_lease(30)
        async with backend.watch(QUERY) as events:
            assert await _next(events) == Resync(instances=())
            for key in (f"/services/{NS}/c", f"/services/{NS}/c/e"):
                await store.put(key, b"not a record", 0)  # skipped, with a warning
                await store.delete(key)
            await backend.register(WORKER, lease)
            assert await _next(events) == Added(instance=WORKER)


def test_the_key_prefixes_a_layout_remembers_are_bounded() -> None:
    """A layout remembers the key prefix of each endpoint it wrote or read a key of, up to a bound: a
    process that sees endpoints come and go for ever does not keep every one."""
    layout = DyndiscLayout()
    for n in range(layouts._PREFIX_CACHE + 1):
        layout.key_for(WORKER.replace(endpoint=f"e{n}"))
    assert len(layout._prefixes) <= layouts._PREFIX_CACHE


@pytest.mark.parametrize(
    ("root", "bucket"),
    [
        ("/services", "services/more"),  # the bucket's entries would be under the instances' root
        ("/svc/instances", "svc"),  # the instances' root would be under the bucket's
    ],
)
def test_a_bucket_overlapping_the_instances_root_either_way_is_refused(root: str, bucket: str) -> None:
    with pytest.raises(InvalidNameError, match="where the dyndisc layout keeps endpoint instances"):
        DyndiscLayout(root).entry_prefix(bucket)


@pytest.mark.parametrize("root", ["services", "/services/", "services/"])
def test_a_key_root_must_start_with_a_slash_and_not_end_with_one(root: str) -> None:
    with pytest.raises(ConfigurationError, match="must start with '/' and not end with '/'"):
        DyndiscLayout(root)


def test_an_unreadable_value_at_a_key_with_an_empty_segment_is_told_not_a_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four segments, one empty: the key has an instance key's shape, so the warning says what is wrong
    with the value (as it says where a readable record at such a key belongs)."""
    layout = DyndiscLayout()
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        assert layout.parse("/services//c/e/1", b"garbage") is None
    assert [m.partition(": not an instance record")[0] for m in _warnings(caplog)] == [
        "skipping '/services//c/e/1' = b'garbage': not a record"
    ]


async def test_a_record_under_the_side_root_is_draining_whatever_it_says() -> None:
    """The dynamo-v1 layout keeps draining records where Dynamo does not look: one there that says ready
    (the reference's record, which has no readiness) is read as draining by lists and watches."""
    names = WORKER.endpoint_id
    ready = WORKER.replace(transport=dynamo_tcp("10.0.0.1", 1, names, WORKER.instance_id))
    draining = ready.replace(readiness=Readiness.DRAINING)
    store = MemoryStore()
    backend = KvDiscovery(store, layout="dynamo-v1")
    layout = DynamoV1Layout()
    async with backend:
        await store.put(layout.side_key_for(ready), layout.encode(ready), 0)
        assert await backend.list(QUERY) == [draining]
        async with backend.watch(QUERY) as events:
            assert await _next(events) == Resync(instances=(draining,))


def _on_virtual_time(body: Callable[[], Awaitable[None]]) -> None:
    anyio.run(body, backend_options={"loop_factory": VirtualLoop})


def test_a_watcher_sees_a_lease_end_at_its_deadline_with_nobody_calling_the_store() -> None:
    async def body() -> None:
        store = MemoryStore(clock=anyio.current_time)
        backend = KvDiscovery(store)
        async with backend, backend.watch(QUERY) as events:
            assert await _next(events) == Resync(instances=())
            granted = anyio.current_time()
            lease = await backend.grant_lease(0.25)
            await backend.register(WORKER, lease)
            assert await _next(events) == Added(instance=WORKER)
            gone = await _next(events)
            assert isinstance(gone, Removed)
            assert gone.reason is RemovalReason.EXPIRED
            # On the virtual clock, where nothing else takes time: heard of at the lease's deadline.
            assert anyio.current_time() - granted == pytest.approx(0.25)

    _on_virtual_time(body)


async def test_a_compaction_counts_the_end_of_a_lease_past_its_deadline() -> None:
    """As every other call, it looks at the clock first: a lease past its deadline has ended, at a revision
    of its own, even if the store's expiry task (not started here) has not dropped it yet."""
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    lease = await store.grant(1.0)
    await store.put("k", b"v", lease.id)
    written = store.revision
    now[0] = 1.5
    assert store.compact() == written + 1, "compacted up to now: the lease's end included"


async def test_the_revision_counts_the_end_of_a_lease_past_its_deadline() -> None:
    """So does the revision: the lease's end is the last change."""
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    lease = await store.grant(1.0)
    await store.put("k", b"v", lease.id)
    written = store.revision
    now[0] = 1.5
    assert store.revision == written + 1


async def test_a_lease_of_no_time_is_refused() -> None:
    store = MemoryStore()
    for ttl in (0.0, -1.0):
        with pytest.raises(ValueError, match="lease TTL must be positive"):
            await store.grant(ttl)
    assert store.lease_ids == set()


async def test_lease_ids_are_what_etcd_could_grant() -> None:
    """Positive and within etcd's signed 64-bit lease id: code tested on memory meets no id etcd could not
    give it."""
    store = MemoryStore(rng=random.Random(3))
    ids = [(await store.grant(30)).id for _ in range(64)]
    assert all(0 < i < 2**63 for i in ids), [f"{i:x}" for i in ids if not 0 < i < 2**63]


async def test_the_time_a_lease_has_left_counts_down_to_its_end() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    lease = await store.grant(2.0)
    now[0] = 1.5
    assert await store.time_to_live(lease.id) == pytest.approx(0.5)
    now[0] = 2.5
    assert await store.time_to_live(lease.id) is None, "past its deadline the lease is gone"


async def test_a_listing_is_a_point_where_its_caller_can_be_cancelled() -> None:
    """As a read from a real server is (the store's calls that change something are checked elsewhere)."""
    store = MemoryStore()
    await store.put("k", b"v", 0)
    listed: list[dict[str, bytes]] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        listed.append(await store.get_prefix(""))
    assert scope.cancelled_caught
    assert listed == []


async def test_a_store_keeps_the_revisions_it_was_told_to_keep() -> None:
    store = MemoryStore(keep_revisions=3)
    for n in range(10):
        await store.put(f"k{n}", b"v", 0)
    assert store.compact(1) == store.revision - 2, "the history starts 3 revisions back (nothing compacted)"


async def test_a_closed_watch_leaves_nothing_behind_in_the_store() -> None:
    """What drives lease expiry for a watch goes with it: a store outliving many watches does not keep
    one for each (the store's own record of them, checked here as nothing else shows it)."""
    store = MemoryStore()
    for _ in range(3):
        async with store.watch("/p/") as events:
            assert await anext(events) == StoreSnapshot(items={})
    assert store._expiries == {}


async def test_a_change_made_once_a_watch_is_open_reaches_it_as_a_change() -> None:
    """Entering the watch waits for it to be up: what is written afterwards comes after its snapshot."""
    store = MemoryStore()
    async with store.watch("/p/") as events:
        await store.put("/p/k", b"v", 0)
        with anyio.fail_after(5):
            assert [await anext(events), await anext(events)] == [
                StoreSnapshot(items={}),
                StorePut(key="/p/k", value=b"v"),
            ]


def _log(page_size: int | None = None) -> ChangeLog:
    return ChangeLog(lambda prefix: {"/p/a": b"1", "/p/b": b"2"}, page_size=page_size)


async def test_a_change_log_listing_is_a_point_where_its_caller_can_be_cancelled() -> None:
    listed = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        listed.append(await _log().list("/p/"))
    assert scope.cancelled_caught
    assert listed == []


async def test_each_page_of_a_change_log_listing_is_a_point_where_its_caller_can_be_cancelled() -> None:
    """The next page is another call, as etcd's: a caller cancelled after the first one gets no more."""
    pages = []
    with anyio.CancelScope() as scope:
        async for page in _log(page_size=1).list_parts("/p/"):
            pages.append(page)
            scope.cancel()
    assert scope.cancelled_caught
    assert [page.items for page in pages] == [{"/p/a": b"1"}]


async def test_a_change_log_stream_opened_in_a_cancelled_scope_delivers_nothing() -> None:
    replies: list[WatchReply] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        await _log().watch("/p/", 1, replies.append)
    assert scope.cancelled_caught
    assert replies == []


def test_a_change_log_stream_with_nothing_to_deliver_tells_its_progress_only_after_the_interval() -> None:
    async def body() -> None:
        log = ChangeLog(lambda prefix: {}, progress_interval=10.0)
        replies: list[WatchReply] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.watch, "/p/", 1, replies.append)
            await anyio.sleep(9.0)
            assert replies == [Created(0)]
            tg.cancel_scope.cancel()

    _on_virtual_time(body)


async def test_a_change_log_stream_hands_on_a_backlog_one_reply_at_a_time() -> None:
    """A stream catching up on two revisions: the store dropping its streams as the first one is delivered
    (the next thing that runs) cuts it before the second, which the watch then resumes from."""
    log = ChangeLog(lambda prefix: {})
    log.record([StorePut(key="/p/a", value=b"1")])
    log.record([StorePut(key="/p/b", value=b"2")])
    delivered: list[int] = []
    broken: list[StreamBroken] = []
    first = anyio.Event()

    def deliver(reply: WatchReply) -> None:
        if isinstance(reply, Changes):
            delivered.extend(revision for revision, _ in reply.events)
            first.set()

    async def stream() -> None:
        try:
            await log.watch("/p/", 1, deliver)
        except StreamBroken as exc:
            broken.append(exc)

    async def drop_at_the_first() -> None:
        await first.wait()
        log.drop_streams()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drop_at_the_first)
            tg.start_soon(stream)
    assert len(broken) == 1
    assert delivered == [1]


async def test_a_change_log_stream_without_progress_notifications_waits_for_the_next_change() -> None:
    """With ``progress_interval=None`` a stream with nothing to deliver waits (it neither spins nor ends) and
    delivers the next change made."""
    log = ChangeLog(lambda prefix: {}, progress_interval=None)
    replies: list[WatchReply] = []
    created, arrived = anyio.Event(), anyio.Event()

    def deliver(reply: WatchReply) -> None:
        replies.append(reply)
        (arrived if isinstance(reply, Changes) else created).set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(log.watch, "/p/", 1, deliver)
        with anyio.fail_after(5):
            await created.wait()  # the stream went on (without a pause) to wait: nothing is due
            log.record([StorePut(key="/p/a", value=b"1")])
            await arrived.wait()
        tg.cancel_scope.cancel()
    assert replies == [Created(0), Changes([(1, StorePut(key="/p/a", value=b"1"))])]


async def test_a_lease_ending_once_a_watch_is_entered_reaches_it_as_a_deletion() -> None:
    # The watch exists once its ``async with`` is entered: a lease that ends right after (seen by the next
    # look at the clock, here the revision) is told to it as an expiry, after a snapshot that held its key.
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    lease = await store.grant(1.0)
    await store.put("/p/k", b"v", lease.id)
    async with store.watch("/p/") as events:
        now[0] = 1.5
        assert store.revision == 2
        with anyio.fail_after(5):
            assert await anext(events) == StoreSnapshot(items={"/p/k": b"v"})
            gone = await anext(events)
        assert isinstance(gone, StoreDelete)
        assert (gone.key, gone.reason) == ("/p/k", RemovalReason.EXPIRED)
