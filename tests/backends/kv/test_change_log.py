"""The memory store's revisions, its bounded history and the server's side of its watch streams
(kv/change_log.py): what the resume logic relies on, at the edges, on the virtual clock."""

from __future__ import annotations

import anyio
import pytest
from kv_helpers import PREFIX, nothing_more, shared, take, virtual

from dyndisc.backends.kv import StoreDelete, StorePut, StoreSnapshot
from dyndisc.backends.kv.change_log import ChangeLog
from dyndisc.backends.memory import MemoryStore


def test_every_change_is_the_next_revision_and_a_leases_keys_leave_at_one() -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        assert store.revision == 0, "no change yet"
        lease = await store.grant(60)
        assert store.revision == 0, "a lease is not a change of the keys"
        for name in ("a", "b", "c"):
            assert await store.create(f"{PREFIX}{name}", b"1", lease.id) is None
        assert store.revision == 3
        assert await store.create(f"{PREFIX}a", b"2", lease.id) is not None
        await store.delete(f"{PREFIX}absent")
        assert store.revision == 3, "nothing changed: no revision"
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={f"{PREFIX}{n}": b"1" for n in "abc"})
            await store.revoke(lease.id)
            assert store.revision == 4, "the three keys of the lease left at one revision"
            assert await take(events, 3) == [StoreDelete(key=f"{PREFIX}{n}") for n in "abc"]

    virtual(test)


@pytest.mark.parametrize(("away", "relists"), [(3, 0), (4, 1)])
def test_a_watch_resumes_from_the_kept_history_and_relists_past_it(away: int, relists: int) -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time, keep_revisions=3)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={})
            watch = shared(store)
            store.drop_watch_streams()
            for n in range(away):  # revisions made while the stream is away
                await store.put(f"{PREFIX}{n}", b"", 0)
            if relists:
                assert await anext(events) == StoreSnapshot(items={f"{PREFIX}{n}": b"" for n in range(away)})
            else:
                assert await take(events, away) == [
                    StorePut(key=f"{PREFIX}{n}", value=b"") for n in range(away)
                ]
            await nothing_more(events, store)
            assert (watch.resumes, watch.relists) == (1, relists)

    virtual(test)


def test_a_delete_at_the_compaction_revision_reaches_a_resumed_watch() -> None:
    # etcd seed 1016, on the memory store: a compaction at the very revision a watch resumes from leaves
    # that revision's changes to it.
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        await store.put(f"{PREFIX}a", b"1", 0)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={f"{PREFIX}a": b"1"})
            watch = shared(store)
            store.drop_watch_streams()
            await store.delete(f"{PREFIX}a")
            assert store.revision == watch.revision + 1, "the delete is the one revision the watch missed"
            assert store.compact() == store.revision
            assert await anext(events) == StoreDelete(key=f"{PREFIX}a")
            assert (watch.resumes, watch.relists) == (1, 0)

    virtual(test)


def test_compaction_is_bounded_by_the_current_revision_and_idempotent() -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        for n in range(5):
            await store.put(f"{PREFIX}{n}", b"", 0)
        with pytest.raises(ValueError, match="store is at revision 5"):
            store.compact(6)
        assert store.compact(3) == 3
        assert store.compact(2) == 3, "compacting before where it is does nothing"
        assert store.compact() == 5

    virtual(test)


def test_a_dropped_stream_breaks_at_once_with_nothing_written() -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={})
            store.drop_watch_streams()
            await anyio.sleep(1.5)  # virtual: past the longest first backoff
            assert shared(store).resumes == 1

    virtual(test)


def test_progress_notifications_come_every_interval_not_before() -> None:
    async def test() -> None:
        interval = 5.0
        store = MemoryStore(clock=anyio.current_time, progress_interval=interval)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={})
            await store.put("/elsewhere/a", b"", 0)
            watch = shared(store)
            await anyio.sleep(interval * 0.9)
            assert watch.revision < store.revision, "no notification before the interval"
            await anyio.sleep(interval * 0.2)
            assert watch.revision == store.revision
            await store.put("/elsewhere/b", b"", 0)
            await anyio.sleep(interval * 0.9)
            assert watch.revision < store.revision, "the next one an interval after the last"
            await anyio.sleep(interval * 0.2)
            assert watch.revision == store.revision

    virtual(test)


def test_the_history_and_the_streams_stay_bounded() -> None:
    async def test() -> None:
        log = ChangeLog(lambda prefix: {}, keep=4)
        for n in range(10):
            log.record([StorePut(key=f"{PREFIX}{n}", value=b"")])
        assert (log.revision, log.compacted, len(log._history)) == (10, 7, 4)
        log.compact(9)
        assert len(log._history) == 2
        log.record([])
        assert log.revision == 10, "no change, no revision"
        store = MemoryStore(clock=anyio.current_time)
        for _ in range(3):
            async with store.watch(PREFIX) as events:
                await anext(events)
        assert store._log._streams == {}, "a stream is forgotten once its watch ends"

    virtual(test)


def test_a_history_of_one_revision_is_enough_and_none_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one revision"):
        MemoryStore(keep_revisions=0)

    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time, keep_revisions=1)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={})
            store.drop_watch_streams()
            await store.put(f"{PREFIX}a", b"1", 0)
            assert await anext(events) == StorePut(key=f"{PREFIX}a", value=b"1")
            assert shared(store).relists == 0

    virtual(test)
