"""Edges of a revisioned watch (kv/revisioned.py) that its mutants showed unchecked.

What a subscriber is handed when a listing, a relist and a backlog meet before it reads: a listing that
started over hands on no part of the void one; a subscriber a relist reaches after it fell behind takes the
relist's snapshot and lists nothing of its own after it; one that falls behind before reading a relist's
snapshot gets only a snapshot of its own, not the stale one first; and the backlog bound is exact (a
subscriber may hold ``MAX_PENDING_EVENTS`` queued events, and the next one switches it to a resync). How the
shared watch resumes: its backoff doubles while attempts fail and starts over once a stream has worked; a
relist for a changed history says which cluster answered (0 when the stream cannot tell). On the virtual
clock, through the memory store and the scripted source of ``test_revisioned_watch``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from typing import NoReturn

import anyio
import pytest
from kv_helpers import PREFIX, nothing_more, shared, take, virtual
from test_revisioned_watch import A, B, C, ScriptedSource, _established, _part, _put

from dyndisc import _retry
from dyndisc.backends.kv import StoreEvent, StorePut, StoreSnapshot, revisioned
from dyndisc.backends.kv.revisioned import (
    Compacted,
    Created,
    Listing,
    SharedWatch,
    StreamBroken,
    WatchReply,
    subscribe,
)
from dyndisc.backends.memory import MemoryStore

#: The backlog bound these tests run with (the real one is 10,000 events).
BOUND = 3


def _puts(keys: range) -> list[StorePut]:
    return [StorePut(key=f"{PREFIX}{n}", value=b"") for n in keys]


async def _write_and_read(store: MemoryStore, reader: AsyncIterator[StoreEvent], keys: range) -> None:
    """Write a key per ``keys`` and read each from ``reader``: every subscriber has been pushed it then."""
    for n in keys:
        await store.put(f"{PREFIX}{n}", b"", 0)
        assert await anext(reader) == StorePut(key=f"{PREFIX}{n}", value=b"")


def test_a_listing_started_over_before_its_reader_read_hands_on_no_part_of_the_void_one() -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.append([_part(A, 10, more=True, continues=False), StreamBroken("cut mid-listing")])
        source.listings.append(
            [_part(B, 12, more=True, continues=False), _part(C, 12, more=False, continues=True)]
        )
        source.streams.append([Created(12, cluster=1), _put("d", "d", 13)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            # Its first part let the reader in; it reads only once the listing started over is whole.
            await watches[PREFIX].established.wait()
            assert await take(events, 3) == [
                StoreSnapshot(items=B, more=True),
                StoreSnapshot(items=C, continues=True),
                StorePut(key=f"{PREFIX}d", value=b"d"),
            ]
            assert source.lists == 2

    virtual(test)


def test_a_laggard_a_relist_reaches_before_it_read_takes_the_relists_snapshot_and_lists_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(revisioned, "MAX_PENDING_EVENTS", BOUND)

    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        async with store.watch(PREFIX) as reader, store.watch(PREFIX) as laggard:
            assert await anext(reader) == StoreSnapshot(items={})
            assert await anext(laggard) == StoreSnapshot(items={})
            await _write_and_read(store, reader, range(BOUND + 1))  # the laggard is to list for itself
            store.drop_watch_streams()
            for key in ("new", "newer"):  # two writes: the compaction takes the first, which it missed
                await store.put(f"{PREFIX}{key}", b"", 0)
            store.compact()
            everything = {f"{PREFIX}{n}": b"" for n in [*range(BOUND + 1), "new", "newer"]}
            assert await anext(reader) == StoreSnapshot(items=everything)

            # The relist's snapshot came after the laggard fell behind: it is the laggard's fresh one.
            assert await anext(laggard) == StoreSnapshot(items=everything)
            await nothing_more(laggard, store)
            assert shared(store).relists == 1

    virtual(test)


def test_a_laggard_behind_before_it_read_a_relists_snapshot_gets_only_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(revisioned, "MAX_PENDING_EVENTS", BOUND)

    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        async with store.watch(PREFIX) as reader, store.watch(PREFIX) as laggard:
            assert await anext(reader) == StoreSnapshot(items={})
            assert await anext(laggard) == StoreSnapshot(items={})
            store.drop_watch_streams()
            await store.put(f"{PREFIX}a", b"1", 0)
            await store.put(f"{PREFIX}b", b"2", 0)  # the compaction takes the write before it: a relist
            store.compact()
            relisted = {f"{PREFIX}a": b"1", f"{PREFIX}b": b"2"}
            assert await anext(reader) == StoreSnapshot(items=relisted)
            # The laggard has the relist's snapshot unread, and then falls behind: that snapshot is stale.
            await _write_and_read(store, reader, range(BOUND + 1))

            everything = {**relisted, **{f"{PREFIX}{n}": b"" for n in range(BOUND + 1)}}
            assert await anext(laggard) == StoreSnapshot(items=everything)
            await nothing_more(laggard, store)

    virtual(test)


def test_a_subscriber_holds_up_to_the_bound_of_queued_events_and_the_next_one_resyncs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(revisioned, "MAX_PENDING_EVENTS", BOUND)

    async def test() -> None:
        store = MemoryStore(clock=anyio.current_time)
        async with store.watch(PREFIX) as reader, store.watch(PREFIX) as laggard:
            assert await anext(reader) == StoreSnapshot(items={})
            assert await anext(laggard) == StoreSnapshot(items={})
            await _write_and_read(store, reader, range(BOUND))
            assert await take(laggard, BOUND) == _puts(range(BOUND)), "the bound itself is still queued"

            await _write_and_read(store, reader, range(BOUND, 2 * BOUND + 1))  # one past the bound
            everything = {f"{PREFIX}{n}": b"" for n in range(2 * BOUND + 1)}
            assert await anext(laggard) == StoreSnapshot(items=everything)
            await nothing_more(laggard, store)

    virtual(test)


# -- resuming: the backoff, and why a relist ----------------------------------------------------------------
class _Ceiling:
    """A jitter that draws the top of its range: every backoff delay is its ceiling."""

    def uniform(self, low: float, high: float) -> float:
        return high


class _TimedSource(ScriptedSource):
    """A scripted source that notes the virtual time each stream is opened at."""

    def __init__(self) -> None:
        super().__init__()
        self.opened_at: list[float] = []

    async def watch(self, prefix: str, start: int, deliver: Callable[[WatchReply], None]) -> NoReturn:
        self.opened_at.append(anyio.current_time())
        await super().watch(prefix, start, deliver)


def test_the_resume_backoff_doubles_while_attempts_fail_and_starts_over_after_a_working_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_retry, "_RANDOM", _Ceiling())

    async def test() -> None:
        source = _TimedSource()
        source.listings.append(Listing({}, 10, cluster=1))
        away: list[WatchReply | Exception | anyio.Event] = [StreamBroken("away")]
        source.streams.extend([away, away, away, [Created(10, cluster=1), StreamBroken("cut")], away, away])
        source.streams.append([Created(10, cluster=1), _put("a", "1", 11)])
        async with subscribe({}, source, PREFIX, _established) as events:
            assert await take(events, 2) == [StoreSnapshot(items={}), StorePut(key=f"{PREFIX}a", value=b"1")]
        gaps = [later - earlier for earlier, later in pairwise(source.opened_at)]
        first = revisioned.RETRY_MIN
        # Three attempts fail, the fourth stream works (then breaks); two fail, the seventh works.
        assert gaps == pytest.approx([first, 2 * first, 4 * first, first, 2 * first, 4 * first])

    virtual(test)


def test_a_relist_for_a_changed_history_names_the_cluster_or_0_when_the_stream_cannot_tell(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.extend(
            [Listing(A, 10, cluster=0x2A), Listing({}, 5, cluster=0x2A), Listing(B, 7, cluster=0x2B)]
        )
        source.streams.append([Created(10, cluster=0x2A), StreamBroken("cut")])
        source.streams.append([Created(5, cluster=None)])  # gone back, from a proxy that cannot tell
        source.streams.append([Created(5, cluster=0x2B)])  # another cluster
        source.streams.append([Created(7, cluster=0x2B), _put("c", "c", 8)])
        watches: dict[str, SharedWatch] = {}
        async with subscribe(watches, source, PREFIX, _established) as events:
            assert await take(events, 4) == [
                StoreSnapshot(items=A),
                StoreSnapshot(items={}),
                StoreSnapshot(items=B),
                StorePut(key=f"{PREFIX}c", value=b"c"),
            ]
            assert watches[PREFIX].relists == 2

    with caplog.at_level(logging.WARNING, logger="dyndisc.scripted"):
        virtual(test)
    relists = [r.getMessage() for r in caplog.records if "listing the prefix again" in r.getMessage()]
    assert relists == [
        "scripted watch of '/p/': the cluster's history changed (cluster 0 at revision 5, we were at 10); "
        "listing the prefix again",
        "scripted watch of '/p/': the cluster's history changed (cluster 2b at revision 5, we were at 5); "
        "listing the prefix again",
    ]


def test_a_relist_for_a_compaction_names_the_revision_the_watch_needed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.extend([Listing(A, 10, cluster=1), Listing(B, 12, cluster=1)])
        source.streams.append([Created(10, cluster=1), StreamBroken("cut")])
        source.streams.append([Compacted(12)])  # the watch was back, from 11, after the compaction
        source.streams.append([Created(12, cluster=1), _put("c", "c", 13)])
        async with subscribe({}, source, PREFIX, _established) as events:
            assert await take(events, 3) == [
                StoreSnapshot(items=A),
                StoreSnapshot(items=B),
                StorePut(key=f"{PREFIX}c", value=b"c"),
            ]

    with caplog.at_level(logging.WARNING, logger="dyndisc.scripted"):
        virtual(test)
    relists = [r.getMessage() for r in caplog.records if "listing the prefix again" in r.getMessage()]
    assert relists == [
        "scripted watch of '/p/': scripted compacted its history past revision 11 (compacted at 12) while "
        "the watch was away; listing the prefix again"
    ]


def test_a_refusal_the_watch_got_over_is_not_reported_to_a_later_subscriber() -> None:
    async def test() -> None:
        source = ScriptedSource()
        source.listings.extend([Listing({}, 10, cluster=1), Listing(A, 11, cluster=1)])  # the joiner's own
        source.streams.append([PermissionError("denied")])
        source.streams.append([Created(10, cluster=1), _put("a", "a", 11)])
        watches: dict[str, SharedWatch] = {}

        async def until_established(shared: SharedWatch) -> None:
            await shared.established.wait()

        async with subscribe(watches, source, PREFIX, until_established) as first:
            assert await take(first, 2) == [StoreSnapshot(items={}), StorePut(key=f"{PREFIX}a", value=b"a")]
            # Refused once, then established: a subscriber that asks now whether it was refused is not.
            async with subscribe(watches, source, PREFIX, _established) as joiner:
                assert await anext(joiner) == StoreSnapshot(items=A)
            assert watches[PREFIX].last_error is None

    virtual(test)
