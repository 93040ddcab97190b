"""The file store's edges the mutants showed unchecked: the exact instant a lease runs out, why a record of no
lease is gone, and lease files whose TTL is no finite positive number of seconds.

At its deadline (``mtime + ttl`` of its file, to the nanosecond) a lease is over for every reader alike: a
listing drops its records and a watch says a record removed then expired. The clock the file backend reads
stands still here and the lease file's mtime is set with ``os.utime``, so the deadline falls exactly on it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import anyio
import pytest

from dyndisc import LeaseNotFoundError, RemovalReason
from dyndisc.backends.file import FileStore
from dyndisc.backends.file.layout import encode_record
from dyndisc.backends.file.leases import TOMBSTONE_SECONDS
from dyndisc.backends.file.records import STALE_TEMP_SECONDS
from dyndisc.backends.file.watch import FileWatch
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot

PROMPT = 5.0
TTL = 10.0
KEY = "/services/n/c/e/1"
K1, K2, K3 = KEY, "/services/n/c/e/2", "/services/n/c/e/3"


class StillClock:
    """The wall clock the file backend's modules read, standing at ``now_ns`` until a test moves it."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def time_ns(self) -> int:
        return self.now_ns

    def time(self) -> float:
        return self.now_ns / 1e9

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)  # sleep, monotonic, ...: the real ones


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> StillClock:
    """A :class:`StillClock` at a whole second (so a deadline of a whole-second mtime plus a whole-second TTL
    is exact in float seconds), in place of ``time`` in every module of the file backend that reads it."""
    import dyndisc.backends.file  # noqa: F401 - loads the backend's modules

    fake = StillClock(time.time_ns() // 10**9 * 10**9)
    for name, module in list(sys.modules.items()):
        ours = name.startswith("dyndisc.backends.file.") and isinstance(module, ModuleType)
        if ours and getattr(module, "time", None) is time:
            monkeypatch.setattr(module, "time", fake)
    return fake


async def leased_record(root: Path, clock: StillClock) -> tuple[FileStore, int]:
    """A store holding a lease of :data:`TTL` seconds renewed at the clock's time, and one record under it."""
    owner = FileStore(root)
    lease = await owner.grant(TTL)
    await owner.create(KEY, b"v", lease.id)
    os.utime(owner.lease_path(lease.id), ns=(clock.now_ns, clock.now_ns))
    return owner, lease.id


# -- the instant a lease runs out -----------------------------------------------------------------------


async def test_a_lease_is_over_for_a_reader_at_its_deadline_exactly(
    tmp_path: Path, clock: StillClock
) -> None:
    owner, lease_id = await leased_record(tmp_path, clock)
    renewed = clock.now_ns
    reader = FileStore(tmp_path)

    clock.now_ns = renewed + int(TTL * 10**9) - 1_000  # a microsecond before
    assert await reader.get_prefix("/services/") == {KEY: b"v"}
    assert owner.lease_path(lease_id).exists()

    clock.now_ns = renewed + int(TTL * 10**9)  # the deadline
    assert await reader.get_prefix("/services/") == {}, "a lease at its deadline is over"
    assert not owner.record_path(KEY).exists()
    assert owner.layout.expired_path(lease_id).exists(), "the reader buried the lease file as expired"
    assert not owner.lease_path(lease_id).exists()


async def test_a_watch_reports_a_lease_over_at_its_deadline_exactly(
    tmp_path: Path, clock: StillClock
) -> None:
    owner, lease_id = await leased_record(tmp_path, clock)
    watcher = FileStore(tmp_path, rescan_interval=60)
    async with watcher.watch("/services/") as events:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={KEY: b"v"})
        clock.now_ns += int(TTL * 10**9)  # nobody writes anything: only the watch's timer can notice
        with anyio.fail_after(PROMPT):
            removed = await anext(events)
    assert removed == StoreDelete(key=KEY)
    assert removed.reason is RemovalReason.EXPIRED
    assert owner.layout.expired_path(lease_id).exists()


async def test_a_record_removed_at_its_leases_deadline_exactly_expired(
    tmp_path: Path, clock: StillClock
) -> None:
    """Another reader holds the lease file's lock at the deadline, deciding, and its sweep removes the record
    before the file: a watch hearing of the removal then (the lease file still there) says it expired, as a
    listing then would find the lease over."""
    owner, lease_id = await leased_record(tmp_path, clock)
    watcher = FileStore(tmp_path, rescan_interval=60)
    fd = os.open(owner.lease_path(lease_id), os.O_RDONLY)
    try:
        async with watcher.watch("/services/") as events:
            with anyio.fail_after(PROMPT):
                assert await anext(events) == StoreSnapshot(items={KEY: b"v"})
            fcntl.flock(fd, fcntl.LOCK_EX)  # the other reader, deciding
            clock.now_ns += int(TTL * 10**9)
            owner.record_path(KEY).unlink()
            with anyio.fail_after(PROMPT):
                removed = await anext(events)
            assert owner.lease_path(lease_id).exists(), "the watch judged the lease without its lock"
    finally:
        os.close(fd)
    assert removed == StoreDelete(key=KEY)
    assert removed.reason is RemovalReason.EXPIRED


async def test_an_owner_renewing_at_its_leases_deadline_exactly_is_too_late(
    tmp_path: Path, clock: StillClock
) -> None:
    """The owner's keep-alive finds the lease over, buries its file as expired (a watch then says its records
    expired, not that they left) and removes the records."""
    owner, lease_id = await leased_record(tmp_path, clock)
    watcher = FileStore(tmp_path, rescan_interval=60)
    async with watcher.watch("/services/") as events:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={KEY: b"v"})
        clock.now_ns += int(TTL * 10**9)
        with pytest.raises(LeaseNotFoundError):
            await owner.keep_alive(lease_id)
        assert owner.layout.expired_path(lease_id).exists()
        assert not owner.record_path(KEY).exists()
        with anyio.fail_after(PROMPT):
            removed = await anext(events)
    assert removed == StoreDelete(key=KEY)
    assert removed.reason is RemovalReason.EXPIRED


async def test_a_revoke_landing_while_the_owner_renews_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoke takes no lock: one that removes the lease file after the keep-alive took the file's lock and
    before it set the mtime ends the lease, and the keep-alive says so."""
    owner = FileStore(tmp_path)
    lease = await owner.grant(TTL)
    await owner.create(KEY, b"v", lease.id)
    real_utime = os.utime

    def utime(target: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(target, int):  # the renewal, holding the lock on its open file
            owner.lease_path(lease.id).unlink()  # the revoke, elsewhere
        real_utime(target, *args, **kwargs)

    monkeypatch.setattr(os, "utime", utime)
    with pytest.raises(LeaseNotFoundError):
        await owner.keep_alive(lease.id)
    assert not owner.record_path(KEY).exists()


# -- records of no lease --------------------------------------------------------------------------------


async def test_a_deleted_record_of_no_lease_left(tmp_path: Path) -> None:
    writer, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    async with watcher.watch("/services/") as events:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            await writer.put(KEY, b"v", 0)
            assert await anext(events) == StorePut(key=KEY, value=b"v")
            await writer.delete(KEY)
            removed = await anext(events)
    assert removed == StoreDelete(key=KEY)
    assert removed.reason is RemovalReason.LEFT


async def test_a_lease_file_replaced_by_a_fifo_is_over_for_its_owner_too(tmp_path: Path) -> None:
    """A lease file is never replaced, only renewed in place: something else under its name (a FIFO, which
    every reader finds unreadable) ends the lease, and its owner's keep-alive, which knows the TTL already,
    says so and removes the records rather than renew the stranger."""
    owner = FileStore(tmp_path)
    lease = await owner.grant(TTL)
    await owner.create(KEY, b"v", lease.id)
    owner.lease_path(lease.id).unlink()
    os.mkfifo(owner.lease_path(lease.id), 0o600)
    with anyio.fail_after(PROMPT), pytest.raises(LeaseNotFoundError):
        await owner.keep_alive(lease.id)
    assert not owner.record_path(KEY).exists()
    assert await FileStore(tmp_path).get_prefix("/services/") == {}


# -- files that are not records of ours -----------------------------------------------------------------


async def test_a_record_header_with_no_newline_after_it_is_no_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file cut short after its header (dyndisc writes the header's newline, then the value, in one
    atomic rename) is skipped with a warning and left in place, not read as an empty value."""
    store = FileStore(tmp_path)
    await store.put("/services/n/c/e/2", b"w", 0)
    cut = store.record_path(KEY)
    cut.write_bytes(encode_record(b"", 0).rstrip(b"\n"))
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        assert await store.get_prefix("/services/") == {"/services/n/c/e/2": b"w"}
    assert cut.name in caplog.text
    assert cut.exists()


async def test_names_dyndisc_does_not_write_are_warned_about_and_never_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A listing skips, with a warning naming each, a file whose name is no encoding's output, a file with
    no record suffix, and a symlink to a directory (never walked into: its records are not under the root)."""
    store = FileStore(tmp_path)
    await store.put(KEY, b"v", 0)
    directory = store.record_path(KEY).parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "2.rec").write_bytes(encode_record(b"outside", 0))
    strays = [directory / "notes.txt", directory / "notes", directory / "linked"]
    strays[0].write_text("not ours")
    strays[1].write_text("not ours")
    strays[2].symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        assert await store.get_prefix("/services/") == {KEY: b"v"}
    for stray in strays:
        assert f"ignoring {stray}:" in caplog.text
    assert (elsewhere / "2.rec").read_bytes() == encode_record(b"outside", 0)


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
async def test_a_file_that_cannot_be_read_as_a_record_at_a_key_being_created_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, planted: str
) -> None:
    """A symlink or a FIFO planted at a key (never followed, never opened blocking) is no record: a create
    of the key replaces it, and says so, rather than give up on a key it can never create."""
    store = FileStore(tmp_path)
    lease = await store.grant(TTL)
    path = store.record_path(KEY)
    path.parent.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.write_bytes(encode_record(b"not here", 0))
    if planted == "symlink":
        path.symlink_to(target)
    else:
        os.mkfifo(path)
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        with anyio.fail_after(PROMPT):
            assert await store.create(KEY, b"v", lease.id) is None
    assert "replacing corrupted record" in caplog.text
    assert await store.get_prefix("/services/") == {KEY: b"v"}
    assert path.is_file()
    assert not path.is_symlink()
    assert target.read_bytes() == encode_record(b"not here", 0), "what a symlink pointed to is untouched"


# -- lease files with an impossible TTL -----------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0.0, float("inf"), -1.0])
async def test_a_lease_file_whose_ttl_is_no_positive_finite_number_is_unreadable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ttl: float
) -> None:
    """Written by hand (dyndisc grants none): its records are gone for readers, and the file is left in
    place with a warning naming it, neither judged expired and buried (a TTL of 0) nor live for ever
    (infinity)."""
    store = FileStore(tmp_path)
    lease_id = 0xFEED
    lease_file = store.lease_path(lease_id)
    lease_file.write_text(json.dumps({"ttl": ttl, "pid": 1, "host": "h"}))  # infinity as JSON's Infinity
    record = store.record_path(KEY)
    record.parent.mkdir(parents=True)
    record.write_bytes(encode_record(b"v", lease_id))
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        assert await store.get_prefix("/services/") == {}
    assert lease_file.name in caplog.text
    assert "unreadable" in caplog.text
    assert lease_file.exists(), "an unreadable lease file is left for someone to look at"
    assert not store.layout.expired_path(lease_id).exists(), "it was not taken for an expired lease"
    assert not record.exists()


def test_past_ten_thousand_files_warned_about_the_memory_starts_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The files warned about are remembered up to 10,000 (a bound on memory): past that, the memory starts
    over, and a file warned about before is warned about again."""
    records = FileStore(tmp_path).records
    with caplog.at_level(logging.ERROR, logger="dyndisc.file"):  # remembered, not logged
        for n in range(10_002):
            records.warn_once(tmp_path / f"gone-{n}", "bad file %s", n)
    with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
        records.warn_once(tmp_path / "gone-0", "bad file %s", 0)
    assert [r.getMessage() for r in caplog.records] == ["bad file 0"]


# -- a reader's removals ---------------------------------------------------------------------------------


async def test_a_reader_logs_each_record_it_removes_for_a_dead_lease(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    owner, reader = FileStore(tmp_path), FileStore(tmp_path)
    dead, live = await owner.grant(TTL), await owner.grant(TTL)
    await owner.create(KEY, b"v", dead.id)
    await owner.create("/services/n/c/e/2", b"w", live.id)
    past = time.time_ns() - 3600 * 10**9
    os.utime(owner.lease_path(dead.id), ns=(past, past))
    with caplog.at_level(logging.DEBUG, logger="dyndisc.file"):
        assert await reader.get_prefix("/services/") == {"/services/n/c/e/2": b"w"}
    removals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed ")]
    assert removals == [f"removed {owner.record_path(KEY)}: its lease {dead.id:x} is gone"]


async def test_a_record_renamed_aside_by_a_reader_is_removed_only_once_that_reader_is_long_gone(
    tmp_path: Path, clock: StillClock
) -> None:
    """A reader renames a record aside (``.grave-...``) to judge it: that file keeps the record's old mtime,
    so its age counts from the rename (its ctime), and a scan removes it only past STALE_TEMP_SECONDS."""
    store = FileStore(tmp_path)
    await store.put(KEY, b"v", 0)
    grave = store.record_path(KEY).parent / ".grave-0123456789abcdef"
    grave.write_bytes(encode_record(b"judged", 0))
    written_long_ago = time.time_ns() - 3600 * 10**9
    os.utime(grave, ns=(written_long_ago, written_long_ago))  # the record's mtime; the ctime is now
    renamed = grave.stat().st_ctime_ns
    clock.now_ns = renamed + int((STALE_TEMP_SECONDS - 1) * 10**9)
    assert await store.get_prefix("/services/") == {KEY: b"v"}
    assert grave.exists(), "the reader judging it may still put it back"
    clock.now_ns = renamed + int((STALE_TEMP_SECONDS + 1) * 10**9)
    assert await store.get_prefix("/services/") == {KEY: b"v"}
    assert not grave.exists(), "a reader that died judging it left it behind"


# -- a watch's periodic rescan ---------------------------------------------------------------------------


class Scans:
    """Every scan of the disk a store's reader makes, by the thread that made it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: FileStore) -> None:
        self.threads: list[int] = []
        self.changed = threading.Condition()
        scan = store.records.scan

        def scanning(prefix: str, under: Path | None = None) -> Any:
            found = scan(prefix, under)
            with self.changed:
                self.threads.append(threading.get_ident())
                self.changed.notify_all()
            return found

        monkeypatch.setattr(store.records, "scan", scanning)

    async def wait(self, count: int) -> None:
        """Until ``count`` scans were made."""

        def enough() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: len(self.threads) >= count, PROMPT)

        assert await anyio.to_thread.run_sync(enough), f"only {len(self.threads)} scans"

    async def watch_until(self, store: FileStore, count: int) -> None:
        """Run a watch of ``/services/`` (its snapshot, then its periodic rescans) until ``count`` scans."""

        async def drain(events: AsyncIterator[StoreEvent]) -> None:
            async for _event in events:
                pass

        async with store.watch("/services/") as events, anyio.create_task_group() as tg:
            tg.start_soon(drain, events)
            await self.wait(count)
            tg.cancel_scope.cancel()


async def test_a_watchs_periodic_rescan_reads_the_disk_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path, rescan_interval=0.1)
    await store.put(KEY, b"v", 0)
    scans = Scans(monkeypatch, store)
    await scans.watch_until(store, 3)  # the snapshot's, then two rescans'
    assert threading.get_ident() not in scans.threads, "a rescan read every record on the event loop"


async def test_a_watchs_periodic_rescan_sweeps_old_tombstones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: StillClock
) -> None:
    """A reader that found a lease expired left its tombstone: a watch that runs for long sweeps it once it is
    older than TOMBSTONE_SECONDS, though no process grants a lease meanwhile."""
    store = FileStore(tmp_path, rescan_interval=0.1)
    tombstone = store.layout.expired_path(0xDEAD)
    tombstone.write_text(json.dumps({"ttl": TTL, "pid": 1, "host": "h"}))
    clock.now_ns = tombstone.stat().st_ctime_ns + int((TOMBSTONE_SECONDS + 1) * 10**9)
    scans = Scans(monkeypatch, store)
    await scans.watch_until(store, 2)  # the snapshot's, then the first rescan's
    assert not tombstone.exists()


async def test_an_old_tombstone_is_swept_by_its_own_age_and_never_followed(
    tmp_path: Path, clock: StillClock
) -> None:
    """A symlink with a tombstone's name (none of dyndisc's), dangling: judged by its own ctime, it goes once
    older than TOMBSTONE_SECONDS, when a lease is granted."""
    store = FileStore(tmp_path)
    tombstone = store.layout.expired_path(0xDEAD)
    tombstone.symlink_to(tmp_path / "nothing-here")
    clock.now_ns = tombstone.lstat().st_ctime_ns + int((TOMBSTONE_SECONDS + 1) * 10**9)
    await store.grant(TTL)
    assert not tombstone.is_symlink()


async def test_a_watchs_first_periodic_rescan_waits_its_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot has just read every record: the first rescan comes an interval later, not at once."""
    store = FileStore(tmp_path, rescan_interval=60)
    await store.put(KEY, b"v", 0)
    scans = Scans(monkeypatch, store)
    async with store.watch("/services/") as events:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={KEY: b"v"})
            await store.put(KEY, b"w", 0)
            assert await anext(events) == StorePut(key=KEY, value=b"w")
    assert len(scans.threads) == 1, "the watch rescanned at once"


async def test_a_watchs_rescans_come_one_interval_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch's monotonic clock stands still but where the test puts it: at the first rescan's time exactly
    the rescan is due, and the next one is an interval after it, not at once again."""
    from dyndisc.backends.file import watch as watch_module

    monotonic = [1000.0]
    monkeypatch.setattr(watch_module, "time", SimpleNamespace(time=time.time, monotonic=lambda: monotonic[0]))
    store = FileStore(tmp_path, rescan_interval=60)
    await store.put(KEY, b"v", 0)
    scans = Scans(monkeypatch, store)
    send, heard = anyio.create_memory_object_stream[StoreEvent](16)

    async def forward(events: AsyncIterator[StoreEvent]) -> None:
        async for event in events:
            await send.send(event)

    async with store.watch("/services/") as events, anyio.create_task_group() as tg, heard:
        tg.start_soon(forward, events)
        with anyio.fail_after(PROMPT):
            assert await heard.receive() == StoreSnapshot(items={KEY: b"v"})
            monotonic[0] += 60  # the first rescan is due
            await store.put(KEY, b"w", 0)
            assert await heard.receive() == StorePut(key=KEY, value=b"w")
            await scans.wait(2)  # the snapshot's and the rescan's
            await store.put(KEY, b"x", 0)
            assert await heard.receive() == StorePut(key=KEY, value=b"x")
        tg.cancel_scope.cancel()
    assert len(scans.threads) == 2, "the watch rescanned again before its interval"


async def test_a_watch_reports_an_expiry_due_in_a_moment_in_that_moment(tmp_path: Path) -> None:
    """The watch waits for the nearest lease deadline however near it is (not a second at least)."""
    owner, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    lease = await owner.grant(TTL)
    await owner.create(KEY, b"v", lease.id)
    # 0.4 s left: room for the watch to start on a loaded machine, and well before the 1 s a floor would take.
    renewed = time.time_ns() - int((TTL - 0.4) * 10**9)
    os.utime(owner.lease_path(lease.id), ns=(renewed, renewed))
    async with watcher.watch("/services/") as events:
        assert await anext(events) == StoreSnapshot(items={KEY: b"v"})
        with anyio.fail_after(0.95):
            removed = await anext(events)
    assert removed == StoreDelete(key=KEY)
    assert removed.reason is RemovalReason.EXPIRED


async def test_an_idle_watch_sleeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once it has reported a change, a watch with nothing to do waits to be woken: it reads its clock a few
    times while it waits, not in a loop."""
    from dyndisc.backends.file import watch as watch_module

    readings = [0]

    def monotonic() -> float:
        readings[0] += 1
        return time.monotonic()

    monkeypatch.setattr(watch_module, "time", SimpleNamespace(time=time.time, monotonic=monotonic))
    store = FileStore(tmp_path, rescan_interval=60)
    async with store.watch("/services/") as events, anyio.create_task_group() as tg:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            await store.put(KEY, b"v", 0)
            assert await anext(events) == StorePut(key=KEY, value=b"v")

        async def next_event() -> None:
            await anext(events)

        tg.start_soon(next_event)
        before = readings[0]
        await anyio.sleep(0.3)
        idle = readings[0] - before
        tg.cancel_scope.cancel()
    assert idle < 50, f"the idle watch read its clock {idle} times in 0.3 s"


async def test_a_watch_leaves_alone_the_lease_of_records_it_no_longer_holds(
    tmp_path: Path, clock: StillClock
) -> None:
    """Its record unregistered, a lease is none of the watch's business: when it runs out, the watch does not
    look at it (its owner, or a reader meeting its records, finds it over)."""
    owner, lease_id = await leased_record(tmp_path, clock)
    watcher = FileStore(tmp_path, rescan_interval=60)
    async with watcher.watch("/services/") as events:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={KEY: b"v"})
            await owner.delete(KEY)
            removed = await anext(events)
            assert removed == StoreDelete(key=KEY)
            assert removed.reason is RemovalReason.LEFT
            clock.now_ns += int((TTL + 1) * 10**9)  # the lease runs out: its owner stopped renewing it
            await owner.put(K2, b"w", 0)
            assert await anext(events) == StorePut(key=K2, value=b"w")
    assert owner.lease_path(lease_id).exists(), "the watch judged a lease none of its records hold"
    assert not owner.layout.expired_path(lease_id).exists()


async def test_a_kv_directory_replaced_unnoticed_is_found_by_the_periodic_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change feed does not report the watched directory going (deletions of it are lost, as inotify may
    lose them): the periodic rescan finds it replaced and restarts the watcher, and the watch starts over from
    a snapshot and follows the new directory."""
    from dyndisc.backends.file import changes as changes_module

    writer, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=0.3)
    async with watcher.watch("/services/") as events:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
        monkeypatch.setattr(changes_module, "_DELETED", -1)  # no change is a deletion any more
        os.rename(watcher.kv_dir, tmp_path / "kv-old")
        watcher.kv_dir.mkdir(mode=0o700)
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            await writer.put(KEY, b"v", 0)
            assert await anext(events) == StorePut(key=KEY, value=b"v")


# -- a watch told to start over ------------------------------------------------------------------------
#
# These drive a FileWatch by hand: the changed paths are pushed by the test (as the store's change feed
# pushes them), so what the watch has queued when it is told to start over is known exactly.


def changed(store: FileStore, *keys: str) -> set[tuple[int, str]]:
    """The change feed's report of ``keys``' record files (added, modified or deleted: all are one to it)."""
    return {(1, str(store.record_path(key))) for key in keys}


def events_of(watch: FileWatch) -> AsyncGenerator[StoreEvent, None]:
    events = watch.events()
    assert isinstance(events, AsyncGenerator)
    return events


async def test_events_queued_before_a_resync_are_dropped_for_its_snapshot(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    watch = FileWatch(store.records, store.changes, "/services/", rescan_interval=60)
    async with aclosing(events_of(watch)) as events:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            await store.put(K1, b"v", 0)
            await store.put(K2, b"v", 0)
            watch.push(changed(store, K1, K2))
            assert await anext(events) == StorePut(key=K1, value=b"v")  # K2's put is queued
            await store.delete(K2)
            watch.resync()  # the change feed restarted: what the watch queued may be stale
            assert await anext(events) == StoreSnapshot(items={K1: b"v"})
            await store.put(K3, b"w", 0)
            watch.push(changed(store, K3))
            assert await anext(events) == StorePut(key=K3, value=b"w"), "an event queued before the resync"


async def test_a_resync_wakes_a_waiting_watch_at_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    watch = FileWatch(store.records, store.changes, "/services/", rescan_interval=60)
    got: list[StoreEvent] = []
    async with aclosing(events_of(watch)) as events, anyio.create_task_group() as tg:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})

        heard = anyio.Event()

        async def next_event() -> None:
            got.append(await anext(events))
            heard.set()

        tg.start_soon(next_event)
        await anyio.wait_all_tasks_blocked()  # the watch waits: nothing changed, no lease, no rescan due
        await store.put(K1, b"v", 0)  # written while the change feed restarts: nobody reports it
        watch.resync()
        with anyio.fail_after(PROMPT):
            await heard.wait()
    assert got == [StoreSnapshot(items={K1: b"v"})]


async def test_a_watch_too_far_behind_starts_over_from_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dyndisc.backends.file import watch as watch_module

    monkeypatch.setattr(watch_module, "MAX_PENDING_PATHS", 2)
    store = FileStore(tmp_path)
    watch = FileWatch(store.records, store.changes, "/services/", rescan_interval=60)
    async with aclosing(events_of(watch)) as events:
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            for key in (K1, K2, K3):
                await store.put(key, b"v", 0)
            watch.push(changed(store, K1, K2, K3))  # one path more than it queues
            assert await anext(events) == StoreSnapshot(items={K1: b"v", K2: b"v", K3: b"v"})


# -- what a watch makes of the changed paths pushed to it ------------------------------------------------


def driven(
    store: FileStore, prefix: str = "/services/"
) -> tuple[FileWatch, AsyncGenerator[StoreEvent, None]]:
    watch = FileWatch(store.records, store.changes, prefix, rescan_interval=60)
    return watch, events_of(watch)


def hand_made_lease(store: FileStore, lease_id: int, key: str, renewed_ns: int) -> None:
    """A lease file of :data:`TTL` seconds renewed at ``renewed_ns`` (a chosen id), and a record under it."""
    store.lease_path(lease_id).write_text(json.dumps({"ttl": TTL, "pid": 1, "host": "h"}))
    os.utime(store.lease_path(lease_id), ns=(renewed_ns, renewed_ns))
    store.record_path(key).parent.mkdir(parents=True, exist_ok=True)
    store.record_path(key).write_bytes(encode_record(b"v", lease_id))


async def test_a_lease_first_seen_in_a_change_is_timed_and_its_expiry_reported_by_the_watch_itself(
    tmp_path: Path, clock: StillClock
) -> None:
    """No file event tells of an expiry (nor are the removal's own events needed: none are pushed here)."""
    store = FileStore(tmp_path)
    watch, events = driven(store)
    async with aclosing(events):
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            hand_made_lease(store, 1, KEY, clock.now_ns)
            watch.push(changed(store, KEY))
            assert await anext(events) == StorePut(key=KEY, value=b"v")
            clock.now_ns += int(TTL * 10**9)
            removed = await anext(events)
    assert removed == StoreDelete(key=KEY)
    assert removed.reason is RemovalReason.EXPIRED


async def test_a_lease_first_seen_by_a_rescan_is_timed_too(tmp_path: Path, clock: StillClock) -> None:
    monotonic = [1000.0]
    clock.monotonic = lambda: monotonic[0]  # type: ignore[attr-defined]
    store = FileStore(tmp_path)
    _watch, events = driven(store)
    async with aclosing(events):
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            hand_made_lease(store, 1, KEY, clock.now_ns)  # its events lost
            monotonic[0] += 60
            assert await anext(events) == StorePut(key=KEY, value=b"v")  # found by the rescan
            clock.now_ns += int(TTL * 10**9)
            removed = await anext(events)
    assert removed == StoreDelete(key=KEY)
    assert removed.reason is RemovalReason.EXPIRED


async def test_every_lease_changed_in_one_batch_is_looked_at(tmp_path: Path, clock: StillClock) -> None:
    """Lease 1 renewed and lease 2 removed (its owner crashed while revoking it, before its records): the
    watch hears of both lease files at once, and reports lease 2's records gone then, not at its deadline."""
    store = FileStore(tmp_path)
    hand_made_lease(store, 1, K1, clock.now_ns)
    hand_made_lease(store, 2, K2, clock.now_ns)
    watch, events = driven(store)
    async with aclosing(events):
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={K1: b"v", K2: b"v"})
            os.utime(store.lease_path(1), ns=(clock.now_ns + 10**9,) * 2)
            store.lease_path(2).unlink()
            watch.push({(2, str(store.lease_path(1))), (3, str(store.lease_path(2)))})
            removed = await anext(events)
    assert removed == StoreDelete(key=K2)
    assert removed.reason is RemovalReason.LEFT
    assert not store.record_path(K2).exists()


async def test_every_record_changed_in_one_batch_is_reported(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    watch, events = driven(store)
    async with aclosing(events):
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            await store.put(K1, b"v", 0)
            await store.put(K2, b"w", 0)
            watch.push(changed(store, K1, K2))
            assert [await anext(events), await anext(events)] == [
                StorePut(key=K1, value=b"v"),
                StorePut(key=K2, value=b"w"),
            ]


async def test_a_directory_change_is_reconciled_within_the_watch_only(tmp_path: Path) -> None:
    """A directory above the watched one changed: the watch reads its own keys again, never its siblings'."""
    store = FileStore(tmp_path)
    await store.put("/services/m/c/e/1", b"sibling", 0)
    watch, events = driven(store, "/services/n/")
    async with aclosing(events):
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={})
            watch.push({(1, str(store.kv_dir / "services"))})
            await store.put("/services/n/c/e/1", b"v", 0)
            watch.push(changed(store, "/services/n/c/e/1"))
            assert await anext(events) == StorePut(key="/services/n/c/e/1", value=b"v")


async def test_a_deletion_found_by_reconciling_a_directory_is_reported(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put(K1, b"v", 0)
    watch, events = driven(store)
    async with aclosing(events):
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={K1: b"v"})
            await store.delete(K1)  # its own event lost
            watch.push({(2, str(store.record_path(K1).parent))})
            assert await anext(events) == StoreDelete(key=K1)


async def test_records_made_in_a_new_directory_before_it_was_watched_are_reported(tmp_path: Path) -> None:
    """Only the directory's creation is reported (its files came before inotify watched it)."""
    store = FileStore(tmp_path)
    await store.put(K1, b"v", 0)
    watch, events = driven(store)
    async with aclosing(events):
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={K1: b"v"})
            await store.put("/services/n/c/e2/1", b"w", 0)
            watch.push({(1, str(store.record_path("/services/n/c/e2/1").parent))})
            assert await anext(events) == StorePut(key="/services/n/c/e2/1", value=b"w")


async def test_a_changed_file_dyndisc_does_not_write_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileStore(tmp_path)
    await store.put(K1, b"v", 0)
    stray = store.record_path(K1).parent / "notes.txt"
    watch, events = driven(store)
    async with aclosing(events):
        with anyio.fail_after(PROMPT):
            assert await anext(events) == StoreSnapshot(items={K1: b"v"})
            stray.write_text("not ours")
            await store.put(K2, b"w", 0)
            with caplog.at_level(logging.WARNING, logger="dyndisc.file"):
                watch.push({(1, str(stray)), *changed(store, K2)})
                assert await anext(events) == StorePut(key=K2, value=b"w")
    assert f"ignoring {stray}:" in caplog.text
