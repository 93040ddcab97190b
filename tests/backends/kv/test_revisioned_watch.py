"""The resume logic of a revisioned watch (kv/revisioned.py), branch by branch, deterministically.

Through the memory store, whose watches run that logic over its change log, and through a scripted source
where the memory store cannot go (another cluster, a history that went backwards, a refusal). Every test
runs on the simulation's virtual clock: a backoff or a progress interval passes at once and the same way
every time, and a test that would wait for ever fails at its virtual deadline instead.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, NoReturn

import anyio
import pytest
from kv_helpers import PREFIX, nothing_more, shared, take, virtual

from dyndisc._outage import OutageLog
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot, revisioned
from dyndisc.backends.kv.revisioned import (
    Cancelled,
    Changes,
    Compacted,
    Created,
    Failure,
    Listing,
    RevisionedSource,
    SharedWatch,
    StreamBroken,
    WatchReply,
    subscribe,
)
from dyndisc.backends.memory import MemoryStore


# -- through the memory store ---------------------------------------------------------------------------
def test_a_stream_dropped_mid_way_resumes_from_the_next_revision_with_no_loss_and_no_duplicate() -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        await store.put(f"{PREFIX}a", b"0", 0)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={f"{PREFIX}a": b"0"})
            watch = shared(store)
            for n in range(1, 4):
                await store.put(f"{PREFIX}a", str(n).encode(), 0)
            # This write is made and the stream dropped before the stream could deliver it: it is in flight.
            await store.put(f"{PREFIX}b", b"in flight", 0)
            assert watch.revision == store.revision - 1, "the watch has not seen the last write yet"
            store.drop_watch_streams()
            await store.delete(f"{PREFIX}a")  # made while the stream is away

            assert await take(events, 5) == [
                *(StorePut(key=f"{PREFIX}a", value=str(n).encode()) for n in range(1, 4)),
                StorePut(key=f"{PREFIX}b", value=b"in flight"),
                StoreDelete(key=f"{PREFIX}a"),
            ]
            await nothing_more(events, store)
            assert (watch.resumes, watch.relists) == (1, 0)

    virtual(test)


def test_a_compaction_while_the_stream_is_away_relists_once_and_sends_a_fresh_snapshot() -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        await store.put(f"{PREFIX}gone", b"1", 0)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={f"{PREFIX}gone": b"1"})
            watch = shared(store)
            store.drop_watch_streams()
            # Virtual time stands still while this task runs: the stream stays away until it has done.
            await store.delete(f"{PREFIX}gone")
            await store.put(f"{PREFIX}new", b"2", 0)
            store.compact()

            assert await anext(events) == StoreSnapshot(items={f"{PREFIX}new": b"2"})
            await nothing_more(events, store)
            assert (watch.resumes, watch.relists) == (1, 1)

    virtual(test)


def test_a_watch_lagging_past_the_kept_history_relists() -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time, keep_revisions=3)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={})
            store.drop_watch_streams()
            for n in range(5):  # more revisions than the store keeps, while the stream is away
                await store.put(f"{PREFIX}{n}", b"", 0)
            assert await anext(events) == StoreSnapshot(items={f"{PREFIX}{n}": b"" for n in range(5)})
            assert shared(store).relists == 1

    virtual(test)


def test_progress_notifications_move_the_resume_revision_past_a_later_compaction() -> None:
    async def test() -> None:
        interval = 5.0
        store = MemoryStore(clock=anyio.current_time, progress_interval=interval)
        async with store.watch(PREFIX) as events:
            assert await anext(events) == StoreSnapshot(items={})
            watch = shared(store)
            for n in range(3):  # changes elsewhere: nothing for this watch to deliver
                await store.put(f"/elsewhere/{n}", b"", 0)
            assert watch.revision < store.revision
            await anyio.sleep(interval * 1.5)  # virtual: the notification due after one interval has come
            assert watch.revision == store.revision, "the progress notification moved the watch on"

            store.drop_watch_streams()
            store.compact()  # at the revision the watch already reached: it needs nothing before it
            await store.put(f"{PREFIX}x", b"1", 0)
            assert await anext(events) == StorePut(key=f"{PREFIX}x", value=b"1")
            assert (watch.resumes, watch.relists) == (1, 0)

    virtual(test)


def test_a_lagging_subscriber_lists_itself_and_skips_what_its_listing_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(revisioned, "MAX_PENDING_EVENTS", 3)

    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        async with store.watch(PREFIX) as reader, store.watch(PREFIX) as laggard:
            assert await anext(reader) == StoreSnapshot(items={})
            assert await anext(laggard) == StoreSnapshot(items={})
            for n in range(6):  # the laggard reads nothing: past 3 queued events it is switched to a resync
                await store.put(f"{PREFIX}{n}", b"", 0)
                assert await anext(reader) == StorePut(key=f"{PREFIX}{n}", value=b"")
            # Queued after the resync, and older than the listing the laggard is about to make: skipped.
            await store.delete(f"{PREFIX}0")
            assert await anext(laggard) == StoreSnapshot(items={f"{PREFIX}{n}": b"" for n in range(1, 6)})
            await nothing_more(laggard, store)
            assert shared(store).relists == 0, "only the laggard listed: the shared watch went on"

    virtual(test)


def test_a_subscriber_joining_a_running_watch_lists_itself_and_the_next_one_resumes() -> None:
    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        await store.put(f"{PREFIX}a", b"1", 0)
        async with store.watch(PREFIX) as first:
            assert await anext(first) == StoreSnapshot(items={f"{PREFIX}a": b"1"})
            watch = shared(store)
            await store.put(f"{PREFIX}b", b"2", 0)
            async with store.watch(PREFIX) as second:
                assert await anext(second) == StoreSnapshot(items={f"{PREFIX}a": b"1", f"{PREFIX}b": b"2"})
                await store.delete(f"{PREFIX}a")
                assert await anext(second) == StoreDelete(key=f"{PREFIX}a")
            assert await take(first, 2) == [
                StorePut(key=f"{PREFIX}b", value=b"2"),
                StoreDelete(key=f"{PREFIX}a"),
            ]
        # The first subscriber pumped the stream: with it gone, a third one takes over from the revision.
        assert store._watches == {}
        assert (watch.relists, watch.resumes) == (0, 0)

    virtual(test)


# -- through a scripted source --------------------------------------------------------------------------
Step = Listing | anyio.Event | Exception


async def _play(script: Sequence[Any]) -> AsyncIterator[Any]:
    """A script's steps in turn, each after a checkpoint: an event is waited for, an error raised, anything
    else handed on."""
    for step in script:
        await anyio.lowlevel.checkpoint()
        if isinstance(step, anyio.Event):
            await step.wait()
        elif isinstance(step, Exception):
            raise step
        else:
            yield step


class ScriptedSource(RevisionedSource):
    """Listings and streams told in advance. A listing may wait for an event before it answers; a stream's
    script holds replies to deliver, errors to raise and events to wait for, and stays open once it has run
    out."""

    name = "scripted"

    def __init__(self) -> None:
        #: What each listing answers: a listing, one answered once an event is set, or (through
        #: :meth:`list_parts`) a script of parts, events to wait for and errors to raise.
        self.listings: deque[Listing | tuple[anyio.Event, Listing] | list[Step]] = deque()
        self.streams: deque[list[WatchReply | Exception | anyio.Event]] = deque()
        #: The start revision of every stream opened.
        self.opened: list[int] = []
        self.lists = 0

    async def list(self, prefix: str) -> Listing:
        await anyio.lowlevel.checkpoint()
        self.lists += 1
        listing = self.listings.popleft()
        assert not isinstance(listing, list), "a listing in parts is read by list_parts"
        if isinstance(listing, tuple):
            answer, listing = listing
            await answer.wait()
        return listing

    async def list_parts(self, prefix: str) -> AsyncGenerator[Listing, None]:
        if not isinstance(self.listings[0], list):
            yield await self.list(prefix)
            return
        self.lists += 1
        script = self.listings.popleft()
        assert isinstance(script, list)
        async for part in _play(script):
            yield part

    async def watch(self, prefix: str, start: int, deliver: Callable[[WatchReply], None]) -> NoReturn:
        self.opened.append(start)
        async for reply in _play(self.streams.popleft() if self.streams else []):
            deliver(reply)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    def classify(self, error: Exception, prefix: str) -> Failure | None:
        if isinstance(error, PermissionError):
            return Failure(error, refused=True)
        return None


async def _established(shared: SharedWatch) -> None:
    await shared.settled.wait()
    if shared.refusal is not None:
        raise shared.refusal


async def _join(watches: dict[str, SharedWatch], source: RevisionedSource, saw: list[StoreEvent]) -> None:
    """A second subscriber: its first two events go to ``saw``."""
    async with subscribe(watches, source, PREFIX, _established) as events:
        saw.extend(await take(events, 2))


def _put(key: str, value: str, revision: int) -> Changes:
    return Changes([(revision, StorePut(key=f"{PREFIX}{key}", value=value.encode()))])


def test_another_cluster_behind_the_same_address_relists() -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.extend([Listing({f"{PREFIX}a": b"1"}, 10, cluster=1), Listing({}, 50, cluster=2)])
        source.streams.append([Created(10, cluster=1), _put("b", "2", 11), StreamBroken("cut")])
        # Another cluster answers at the same address, further on in its own history: only its id tells.
        source.streams.append([Created(50, cluster=2)])
        source.streams.append([Created(50, cluster=2), _put("c", "3", 51)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await take(events, 3) == [
                StoreSnapshot(items={f"{PREFIX}a": b"1"}),
                StorePut(key=f"{PREFIX}b", value=b"2"),
                StoreSnapshot(items={}),
            ]
            assert await anext(events) == StorePut(key=f"{PREFIX}c", value=b"3")
            assert source.opened == [11, 12, 51], (
                "resumed after the break, then listed anew on the new cluster"
            )
            assert watches[PREFIX].relists == 1

    virtual(test)


def test_a_stream_that_cannot_tell_its_cluster_is_not_another_cluster() -> None:
    """etcd's grpc-proxy confirms a watch that joins one it already holds without a cluster id."""

    async def test() -> None:
        source = ScriptedSource()
        source.listings.append(Listing({f"{PREFIX}a": b"1"}, 10, cluster=1))
        source.streams.append([Created(11, cluster=None), _put("b", "2", 11)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await take(events, 2) == [
                StoreSnapshot(items={f"{PREFIX}a": b"1"}),
                StorePut(key=f"{PREFIX}b", value=b"2"),
            ]
            assert watches[PREFIX].relists == 0

    virtual(test)


def test_a_history_that_went_backwards_relists(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.extend([Listing({f"{PREFIX}a": b"1"}, 10, cluster=1), Listing({}, 5, cluster=1)])
        source.streams.append([Created(10, cluster=1), StreamBroken("cut")])
        source.streams.append([Created(5, cluster=1)])  # same cluster, restored from an older backup
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await take(events, 2) == [
                StoreSnapshot(items={f"{PREFIX}a": b"1"}),
                StoreSnapshot(items={}),
            ]
            assert watches[PREFIX].relists == 1

    with caplog.at_level(logging.WARNING, logger="dyndisc.scripted"):
        virtual(test)
    # An operator is told why every watcher of the prefix gets a fresh snapshot.
    assert any("history changed" in m and "listing the prefix again" in m for _, m in _logged(caplog))


def test_a_joiners_own_listing_gives_way_to_a_newer_shared_one() -> None:
    async def test() -> None:
        source, relisted, joiner_answers = ScriptedSource(), anyio.Event(), anyio.Event()
        old, new = Listing({f"{PREFIX}a": b"1"}, 10, cluster=1), Listing({f"{PREFIX}b": b"2"}, 12, cluster=1)
        # The shared listing; the joiner's own (answered late, from before the relist); the relist.
        source.listings.extend([old, (joiner_answers, old), new])
        source.streams.append([Created(10, cluster=1), relisted, Compacted(12)])
        source.streams.append([Created(12, cluster=1), _put("c", "3", 13)])
        watches: dict[str, SharedWatch] = {}
        joiner_saw: list[StoreEvent] = []

        async with subscribe(watches, source, PREFIX, _established) as first, anyio.create_task_group() as tg:
            assert await anext(first) == StoreSnapshot(items=old.items)
            tg.start_soon(_join, watches, source, joiner_saw)
            while source.lists < 2:  # the joiner is listing for itself
                await anyio.lowlevel.checkpoint()
            relisted.set()
            assert await take(first, 2) == [
                StoreSnapshot(items=new.items),
                StorePut(key=f"{PREFIX}c", value=b"3"),
            ]
            joiner_answers.set()
        assert joiner_saw == [StoreSnapshot(items=new.items), StorePut(key=f"{PREFIX}c", value=b"3")]

    virtual(test)


def test_a_cancelled_stream_resumes_from_the_next_revision() -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.append(Listing({}, 10, cluster=1))
        source.streams.append(
            [Created(10, cluster=1), _put("a", "1", 11), Cancelled("the server is stopping")]
        )
        source.streams.append([Created(12, cluster=1), _put("b", "2", 12)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await take(events, 3) == [
                StoreSnapshot(items={}),
                StorePut(key=f"{PREFIX}a", value=b"1"),
                StorePut(key=f"{PREFIX}b", value=b"2"),
            ]
            assert source.opened == [11, 12]
            assert (watches[PREFIX].resumes, watches[PREFIX].relists, source.lists) == (1, 0, 1)

    virtual(test)


def test_a_refused_watch_is_reported_to_its_subscriber_and_an_unknown_error_propagates() -> None:
    async def refused() -> None:
        source = ScriptedSource()
        source.listings.append(Listing({}, 10))
        source.streams.append([PermissionError("denied")])
        with pytest.raises(PermissionError, match="denied"):
            async with subscribe({}, source, PREFIX, _established):
                pass

    async def a_bug() -> None:
        source = ScriptedSource()
        source.listings.append(Listing({}, 10))
        source.streams.append([KeyError("a bug")])
        with pytest.raises(KeyError, match="a bug"):
            async with subscribe({}, source, PREFIX, _established):
                pass

    virtual(refused)
    virtual(a_bug)


# -- the outage log: one line when the watch breaks, one when it is back --------------------------------
def _logged(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG]


def test_an_outage_is_logged_in_two_lines_however_many_attempts_fail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.append(Listing({}, 10, cluster=1))
        source.streams.append([Created(10, cluster=1), StreamBroken("cut")])
        source.streams.extend([[StreamBroken("still away")]] * 3)
        source.streams.append([Created(10, cluster=1), _put("a", "1", 11)])
        async with subscribe({}, source, PREFIX, _established) as events:
            assert await take(events, 2) == [StoreSnapshot(items={}), StorePut(key=f"{PREFIX}a", value=b"1")]

    with caplog.at_level(logging.DEBUG, logger="dyndisc.scripted"):
        virtual(test)
    logged = _logged(caplog)
    assert [level for level, _ in logged] == [logging.WARNING, logging.WARNING], logged
    assert logged[0][1] == (
        "scripted watch of '/p/': cut; resuming from revision 11; retrying (one line when it is back)"
    )
    assert logged[1][1].startswith("scripted watch of '/p/': back after "), logged
    assert logged[1][1].endswith("(4 failed attempts)"), logged
    assert sum("still failing" in r.getMessage() for r in caplog.records) == 3, "the others at DEBUG"


def test_a_refused_watch_logs_one_error_not_one_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.append(Listing({}, 10, cluster=1))
        source.streams.extend([[PermissionError("denied")]] * 3)
        source.streams.append([Created(10, cluster=1)])

        async def until_established(shared: SharedWatch) -> None:
            await shared.established.wait()

        async with subscribe({}, source, PREFIX, until_established) as events:
            assert await anext(events) == StoreSnapshot(items={})

    with caplog.at_level(logging.DEBUG, logger="dyndisc.scripted"):
        virtual(test)
    logged = _logged(caplog)
    assert [level for level, _ in logged] == [logging.ERROR, logging.WARNING], logged
    assert logged[0][1] == (
        "scripted watch of '/p/': denied; resuming from revision 11; retrying (one line when it is back)"
    )
    assert logged[1][1].endswith("(3 failed attempts)"), logged


def test_an_outage_outliving_its_watch_is_logged_once_by_the_next_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.extend([Listing({}, 10, cluster=1), Listing({}, 10, cluster=1)])
        source.streams.extend([[StreamBroken("away")]] * 4)
        outages: dict[str, OutageLog] = {}

        async def at_once(shared: SharedWatch) -> None:
            pass

        async with subscribe({}, source, PREFIX, at_once, outages):
            await anyio.sleep(5)  # virtual: four attempts fail, the fifth hangs; then the watch goes away
            assert len(source.opened) == 5
        source.streams.append([Created(10, cluster=1)])
        async with subscribe({}, source, PREFIX, _established, outages) as events:
            assert await anext(events) == StoreSnapshot(items={})

    with caplog.at_level(logging.DEBUG, logger="dyndisc.scripted"):
        virtual(test)
    logged = _logged(caplog)
    assert logged == [
        (
            logging.WARNING,
            "scripted watch of '/p/': away; resuming from revision 11; retrying (one line when it is back)",
        ),
        (logging.WARNING, "scripted watch of '/p/': back after 5.0s (4 failed attempts)"),
    ], "one outage over both watches (its time on the virtual clock)"


def test_an_outage_after_a_refusal_is_a_warning_again(caplog: pytest.LogCaptureFixture) -> None:
    """A refusal is an error of its own outage; the next outage, a stream cut, is a warning as ever."""

    async def test() -> None:
        source = ScriptedSource()
        source.listings.append(Listing({}, 10, cluster=1))
        source.streams.append([PermissionError("denied")])
        source.streams.append([Created(10, cluster=1), _put("a", "1", 11), StreamBroken("cut")])
        source.streams.append([Created(11, cluster=1), _put("b", "2", 12)])

        async def until_established(shared: SharedWatch) -> None:
            await shared.established.wait()

        async with subscribe({}, source, PREFIX, until_established) as events:
            assert await take(events, 3) == [
                StoreSnapshot(items={}),
                StorePut(key=f"{PREFIX}a", value=b"1"),
                StorePut(key=f"{PREFIX}b", value=b"2"),
            ]

    with caplog.at_level(logging.DEBUG, logger="dyndisc.scripted"):
        virtual(test)
    levels = [level for level, _ in _logged(caplog)]
    assert levels == [logging.ERROR, logging.WARNING, logging.WARNING, logging.WARNING], _logged(caplog)


# -- a snapshot in parts --------------------------------------------------------------------------------
def _part(items: dict[str, bytes], revision: int, *, more: bool, continues: bool) -> Listing:
    return Listing(items, revision, cluster=1, more=more, continues=continues)


A, B, C = ({f"{PREFIX}{k}": k.encode()} for k in "abc")


def test_a_snapshot_in_parts_reaches_the_consumer_while_the_rest_is_read() -> None:
    async def test() -> None:
        source, second_page = ScriptedSource(), anyio.Event()
        source.listings.append(
            [_part(A, 10, more=True, continues=False), second_page, _part(B, 10, more=False, continues=True)]
        )
        source.streams.append([Created(10, cluster=1), _put("c", "c", 11)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            # The watch is not confirmed yet (its listing is not over): the first part is here already.
            assert not watches[PREFIX].established.is_set()
            assert await anext(events) == StoreSnapshot(items=A, more=True)
            second_page.set()
            assert await take(events, 2) == [
                StoreSnapshot(items=B, continues=True),
                StorePut(key=f"{PREFIX}c", value=b"c"),
            ]
            assert source.opened == [11], "the watch starts after the listing's revision"

    virtual(test)


def test_a_listing_broken_between_two_parts_starts_over_and_says_so() -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.append([_part(A, 10, more=True, continues=False), StreamBroken("cut mid-listing")])
        source.listings.append(
            [_part(B, 12, more=True, continues=False), _part(C, 12, more=False, continues=True)]
        )
        source.streams.append([Created(12, cluster=1)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await take(events, 3) == [
                StoreSnapshot(items=A, more=True),
                StoreSnapshot(items=B, more=True),  # does not continue: the parts before it are void
                StoreSnapshot(items=C, continues=True),
            ]
            assert source.opened == [13]
            assert watches[PREFIX].relists == 0, "the first listing was never finished"

    virtual(test)


def test_a_subscriber_joining_in_the_middle_of_a_listing_lists_for_itself() -> None:
    async def test() -> None:
        source, second_page = ScriptedSource(), anyio.Event()
        source.listings.append(
            [_part(A, 10, more=True, continues=False), second_page, _part(B, 10, more=False, continues=True)]
        )
        source.listings.append(Listing({**A, **B}, 10, cluster=1))  # the joiner's own
        source.streams.append([Created(10, cluster=1), _put("c", "c", 11)])
        watches: dict[str, SharedWatch] = {}
        joiner_saw: list[StoreEvent] = []

        async with subscribe(watches, source, PREFIX, _established) as first, anyio.create_task_group() as tg:
            assert await anext(first) == StoreSnapshot(items=A, more=True)
            tg.start_soon(_join, watches, source, joiner_saw)
            while len(watches[PREFIX].subscribers) < 2:
                await anyio.lowlevel.checkpoint()
            second_page.set()  # the joiner missed the first part: it will list the prefix itself
            assert await take(first, 2) == [
                StoreSnapshot(items=B, continues=True),
                StorePut(key=f"{PREFIX}c", value=b"c"),
            ]
        assert joiner_saw == [StoreSnapshot(items={**A, **B}), StorePut(key=f"{PREFIX}c", value=b"c")]
        assert source.lists == 2

    virtual(test)


def test_a_watch_refused_after_its_snapshot_began_raises_to_the_reader() -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.append(
            [_part(A, 10, more=True, continues=False), PermissionError("no more reading for you")]
        )
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await anext(events) == StoreSnapshot(items=A, more=True)
            with pytest.raises(PermissionError, match="no more reading"):
                await anext(events)

    virtual(test)


def test_a_listing_that_ends_before_its_last_part_is_read_again() -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.append([_part(A, 10, more=True, continues=False)])  # and then nothing
        source.listings.append(Listing(B, 11, cluster=1))
        source.streams.append([Created(11, cluster=1)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await take(events, 2) == [StoreSnapshot(items=A, more=True), StoreSnapshot(items=B)]
            assert "ended before its last part" in (watches[PREFIX].last_error or "")

    virtual(test)


def test_a_subscriber_resynced_in_the_middle_of_a_listing_lists_for_itself() -> None:
    """``resync()`` means "your next event is a snapshot of your own": parts of a shared listing it was
    receiving are not continued for it (it would apply a snapshot without its beginning)."""

    async def test() -> None:
        source, second_page = ScriptedSource(), anyio.Event()
        source.listings.append(
            [_part(A, 10, more=True, continues=False), second_page, _part(B, 10, more=False, continues=True)]
        )
        source.listings.append(Listing({**A, **B}, 10, cluster=1))  # its own
        source.streams.append([Created(10, cluster=1), _put("c", "c", 11)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await anext(events) == StoreSnapshot(items=A, more=True)
            (subscriber,) = watches[PREFIX].subscribers
            subscriber.resync()
            second_page.set()
            assert await take(events, 2) == [
                StoreSnapshot(items={**A, **B}),
                StorePut(key=f"{PREFIX}c", value=b"c"),
            ]
            assert source.lists == 2

    virtual(test)


def test_a_joiners_own_listing_in_parts_stops_reading_once_a_newer_snapshot_came() -> None:
    """Its own listing is void then: reading it on would make the reader wait on pages it will drop."""

    async def test() -> None:
        source, relisted, own_page, never = ScriptedSource(), anyio.Event(), anyio.Event(), anyio.Event()
        source.listings.append(Listing(A, 10, cluster=1))  # the shared listing
        source.listings.append(  # the joiner's own, in parts; its third part would never come
            [
                _part(A, 10, more=True, continues=False),
                own_page,
                _part(B, 10, more=True, continues=True),
                never,
                _part(C, 10, more=False, continues=True),
            ]
        )
        source.listings.append(Listing(B, 12, cluster=1))  # the relist
        source.streams.append([Created(10, cluster=1), relisted, Compacted(12)])
        source.streams.append([Created(12, cluster=1), _put("c", "c", 13)])
        watches: dict[str, SharedWatch] = {}
        joiner_saw: list[StoreEvent] = []

        async def join() -> None:
            async with subscribe(watches, source, PREFIX, _established) as events:
                for _ in range(2):
                    joiner_saw.append(await anext(events))

        async with subscribe(watches, source, PREFIX, _established) as first, anyio.create_task_group() as tg:
            assert await anext(first) == StoreSnapshot(items=A)
            tg.start_soon(join)
            while not joiner_saw:  # the first part of the joiner's own listing
                await anyio.lowlevel.checkpoint()
            relisted.set()
            assert await anext(first) == StoreSnapshot(items=B)
            own_page.set()  # its second part arrives after the newer snapshot: the listing stops there
        assert joiner_saw == [StoreSnapshot(items=A, more=True), StoreSnapshot(items=B)]

    virtual(test)
