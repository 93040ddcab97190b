"""Readers sweeping expired leases while owners renew them, at the exact moment (issue 24, bug 1).

A reader decides from what it read a moment ago; an owner's renewal can land in that moment. Each test here
makes the renewal land at one precise point of a reader's sweep (a controlled wall clock whose reading can
let a paused renewal through, or a file operation that lets a renewal in first), on real files in a
temporary directory, and checks the one thing that must hold: records are removed only with a lease that is
really gone, so a keep-alive that succeeded leaves its records in place.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import anyio
import anyio.to_thread
import pytest

from dyndisc import LeaseNotFoundError, RemovalReason
from dyndisc.backends.file import DynamoFileStore, FileStore
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot

#: Seconds any step of these tests may take before the test fails instead of hanging.
PATIENCE = 10.0
TTL = 10.0
KEY = "/services/n/c/e/1"


class Clock:
    """The wall clock the file backend's modules read, standing still unless a test moves it.

    :meth:`at_next_reading` runs an action the next time someone reads it: a reader reads the clock after it
    has looked at a file and before it decides, so that is where a racing renewal lands.
    """

    def __init__(self) -> None:
        self.now_ns = time.time_ns()
        self._action: Callable[[], None] | None = None

    def set(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def at_next_reading(self, action: Callable[[], None]) -> None:
        self._action = action

    def time_ns(self) -> int:
        action, self._action = self._action, None
        if action is not None:
            action()
        return self.now_ns

    def time(self) -> float:
        return self.time_ns() / 1e9

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)  # sleep, monotonic, ...: the real ones


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A :class:`Clock` in place of ``time`` in every module of the file backend that reads it."""
    import dyndisc.backends.file  # noqa: F401 - loads the backend's modules

    fake = Clock()
    modules = [m for n, m in list(sys.modules.items()) if n.startswith("dyndisc.backends.file.")]
    for module in modules:
        if isinstance(module, ModuleType) and getattr(module, "time", None) is time:
            monkeypatch.setattr(module, "time", fake)
    return fake


class PausedRenewal:
    """An owner's keep-alive in a thread of its own, paused just before it sets the lease file's mtime
    (after it checked that the lease is live): the two steps of a renewal, pulled apart."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, keep_alive: Callable[[], Any]) -> None:
        self.checked = threading.Event()
        self.release = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        real_utime = os.utime

        def utime(*args: Any, **kwargs: Any) -> None:
            if threading.current_thread() is self.thread:
                self.checked.set()
                assert self.release.wait(PATIENCE), "the test never let the renewal through"
            real_utime(*args, **kwargs)

        monkeypatch.setattr(os, "utime", utime)
        self.thread = threading.Thread(target=self._run, args=(keep_alive,), daemon=True)

    def _run(self, keep_alive: Callable[[], Any]) -> None:
        try:
            self.result = anyio.run(keep_alive)
        except BaseException as exc:  # the test looks at it once the thread is done
            self.error = exc

    async def start(self) -> None:
        self.thread.start()
        assert await anyio.to_thread.run_sync(self.checked.wait, PATIENCE), "the keep-alive never renewed"

    def let_through(self) -> None:
        """Let the renewal write and wait until the keep-alive has returned."""
        self.release.set()
        self.thread.join(PATIENCE)
        assert not self.thread.is_alive(), "the keep-alive did not return"


@pytest.fixture
def renewal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], Any]], PausedRenewal]]:
    made: list[PausedRenewal] = []

    def make(keep_alive: Callable[[], Any]) -> PausedRenewal:
        made.append(PausedRenewal(monkeypatch, keep_alive))
        return made[-1]

    yield make
    for paused in made:
        paused.release.set()  # never leave a thread waiting behind a failed test
        paused.thread.join(PATIENCE)


async def leased_record(root: Path, clock: Clock) -> tuple[FileStore, int]:
    """A store holding a lease (its file's mtime at the clock's time) and one record under it."""
    owner = FileStore(root)
    lease = await owner.grant(TTL)
    await owner.create(KEY, b"v", lease.id)
    os.utime(owner.lease_path(lease.id), ns=(clock.now_ns, clock.now_ns))
    return owner, lease.id


def deadline_ns(clock: Clock, seconds: float) -> int:
    return clock.now_ns + int(seconds * 1e9)


async def test_a_renewal_landing_between_a_readers_look_and_its_decision_keeps_the_records(
    tmp_path: Path, clock: Clock, renewal: Callable[[Callable[[], Any]], PausedRenewal]
) -> None:
    owner, lease_id = await leased_record(tmp_path, clock)
    reader = FileStore(tmp_path)
    start = clock.now_ns
    # The owner renews a millisecond before the deadline: it finds the lease live, then stalls before the
    # write while the deadline passes.
    clock.set(deadline_ns(clock, TTL - 0.001))
    paused = renewal(lambda: owner.keep_alive(lease_id))
    await paused.start()
    clock.set(start + int((TTL + 0.001) * 1e9))
    # A reader stats the lease file (the old mtime: expired), and the renewal lands as it reads the clock.
    clock.at_next_reading(paused.let_through)

    seen = await reader.get_prefix("/services/")

    assert paused.error is None, "the owner's keep-alive succeeded"
    assert paused.result == TTL
    assert seen == {KEY: b"v"}, "the reader dropped the records of a lease renewed under its eyes"
    assert owner.record_path(KEY).exists()
    assert owner.lease_path(lease_id).exists()
    assert await owner.keep_alive(lease_id) == TTL


async def test_a_reader_meeting_a_renewal_in_flight_neither_waits_nor_removes_a_renewed_lease(
    tmp_path: Path, clock: Clock, renewal: Callable[[Callable[[], Any]], PausedRenewal]
) -> None:
    owner, lease_id = await leased_record(tmp_path, clock)
    reader = FileStore(tmp_path)
    start = clock.now_ns
    clock.set(deadline_ns(clock, TTL - 0.001))
    paused = renewal(lambda: owner.keep_alive(lease_id))
    await paused.start()
    clock.set(start + int((TTL + 0.001) * 1e9))

    with anyio.fail_after(PATIENCE):
        seen = await reader.get_prefix("/services/")  # while the renewal is stalled mid-way
    paused.let_through()

    # Either the reader removed the lease first (then the renewal must fail) or the renewal wins (then
    # the records stay): never a successful keep-alive with its records gone.
    if paused.error is None:
        assert paused.result == TTL
        assert owner.record_path(KEY).exists(), "a renewed lease lost its records"
        assert seen == {KEY: b"v"}
    else:
        assert isinstance(paused.error, LeaseNotFoundError)
        assert not owner.record_path(KEY).exists()


async def test_a_keep_alive_meeting_a_readers_lock_asks_again_until_it_is_free(tmp_path: Path) -> None:
    owner = FileStore(tmp_path)
    lease = await owner.grant(TTL)
    renewed: list[float] = []
    # A reader holds the lease file's lock, deciding whether the lease expired.
    fd = os.open(owner.lease_path(lease.id), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(renewed, owner.keep_alive(lease.id)))
            await anyio.wait_all_tasks_blocked()  # the keep-alive waits without holding up the event loop
            assert renewed == [], "the lease was renewed while a reader held its lock"
            os.close(fd)
            fd = -1
    finally:
        if fd >= 0:
            os.close(fd)
    assert renewed == [TTL]


async def _append(found: list[float], value: Awaitable[float]) -> None:
    found.append(await value)


async def test_a_put_landing_before_a_sweep_removes_a_dead_record_survives(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_owner, dead = await leased_record(tmp_path, clock)
    os.unlink(dead_owner.lease_path(dead))  # its lease is gone: the record is garbage for every reader
    writer, reader = FileStore(tmp_path), FileStore(tmp_path)
    live = await writer.grant(TTL)
    sweeping = first_destructive_call(monkeypatch, lambda: anyio.run(writer.put, KEY, b"new", live.id))

    seen = await reader.get_prefix("/services/")

    assert sweeping.is_set(), "the reader removed the dead record"
    assert seen in ({}, {KEY: b"new"})
    assert await reader.get_prefix("/services/") == {KEY: b"new"}, "the sweep removed a live lease's record"


def first_destructive_call(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> threading.Event:
    """Run ``action`` (in a thread of its own) just before the first unlink or rename of a file that is not
    temporary: a write landing between a reader's last look at a file and its removal of it."""
    fired = threading.Event()
    real_unlink, real_rename = os.unlink, os.rename

    def before(path: Any) -> None:
        if not fired.is_set() and not Path(path).name.startswith("."):
            fired.set()
            worker = threading.Thread(target=action, daemon=True)
            worker.start()
            worker.join(PATIENCE)
            assert not worker.is_alive()

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        before(path)
        real_unlink(path, *args, **kwargs)

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        before(src)
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rename", rename)
    return fired


# -- the reference's file layout: every file is its own lease ------------------------------------------


async def test_a_touch_landing_before_a_sweep_removes_an_expired_file_keeps_it(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, reader = DynamoFileStore(tmp_path), DynamoFileStore(tmp_path)
    lease = await owner.grant(10)
    await owner.create("v1/instances/n/c/e/1", b"v", lease.id)
    path = owner.files.path_of("v1/instances/n/c/e/1")
    os.utime(path, ns=(clock.now_ns, clock.now_ns))
    clock.set(deadline_ns(clock, 10.001))  # the file is a millisecond past its expiry
    # Its writer (a reference process touches every owned file every few seconds) touches it just before
    # the reader removes it.
    touched = first_destructive_call(monkeypatch, lambda: os.utime(path, ns=(clock.now_ns, clock.now_ns)))

    seen = await reader.get_prefix("v1/instances/")

    assert touched.is_set()
    assert path.exists(), "a reader deleted a file its writer had just touched"
    assert seen == {"v1/instances/n/c/e/1": b"v"}


async def test_a_touch_landing_between_a_readers_look_and_its_decision_is_no_removal(
    tmp_path: Path, clock: Clock
) -> None:
    owner, reader = DynamoFileStore(tmp_path), DynamoFileStore(tmp_path)
    lease = await owner.grant(10)
    await owner.create("v1/instances/n/c/e/1", b"v", lease.id)
    path = owner.files.path_of("v1/instances/n/c/e/1")
    os.utime(path, ns=(clock.now_ns, clock.now_ns))
    clock.set(deadline_ns(clock, 10.001))
    clock.at_next_reading(lambda: os.utime(path, ns=(clock.now_ns, clock.now_ns)))

    seen = await reader.get_prefix("v1/instances/")

    assert path.exists()
    assert seen == {"v1/instances/n/c/e/1": b"v"}, "a touched file was reported gone (a phantom removal)"


async def test_a_keep_alive_behind_a_reader_stuck_on_the_lock_gives_up_at_the_deadline(
    tmp_path: Path,
) -> None:
    owner = FileStore(tmp_path)
    lease = await owner.grant(1.0)
    # A reader took the lease file's lock and never lets go (stopped, or hung on a slow disk).
    fd = os.open(owner.lease_path(lease.id), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        with anyio.fail_after(PATIENCE), pytest.raises(LeaseNotFoundError):
            await owner.keep_alive(lease.id)
        # Not renewed past its deadline: the lease is over for everyone, and its owner is told so then.
        assert time.monotonic() - started < 2.5
    finally:
        os.close(fd)


async def test_a_watch_meeting_a_lease_locked_by_its_renewer_waits_without_holding_up_the_event_loop(
    tmp_path: Path,
) -> None:
    owner, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    lease = await owner.grant(1.0)
    await owner.create(KEY, b"v", lease.id)
    fd = os.open(owner.lease_path(lease.id), os.O_RDONLY)
    release = threading.Timer(2.5, os.close, (fd,))  # past the deadline; lets go even if the loop is stuck
    heard: list[StoreEvent] = []
    got = anyio.Event()
    try:
        async with watcher.watch("/services/") as events:
            with anyio.fail_after(PATIENCE):
                assert isinstance(await anext(events), StoreSnapshot)
            # Someone holds the lease file's lock (a renewal, or a reader deciding) from before the deadline
            # until well after it: the watch must look again later, not in a loop that starves every task.
            fcntl.flock(fd, fcntl.LOCK_EX)
            release.start()
            async with anyio.create_task_group() as tg:

                async def listen() -> None:
                    heard.append(await anext(events))
                    got.set()

                tg.start_soon(listen)
                slowest = 0.0
                until = time.monotonic() + 2.0
                while time.monotonic() < until:
                    before = time.monotonic()
                    await anyio.sleep(0.02)
                    slowest = max(slowest, time.monotonic() - before)
                assert slowest < 0.5, f"the event loop was held for {slowest:.2f}s"
                assert heard == [], "the lease was judged while its lock was held"
                # Once the lock is free, the lease (not renewed) is found expired and its record goes.
                with anyio.fail_after(PATIENCE):
                    await got.wait()
            assert heard == [StoreDelete(key=KEY)]
    finally:
        if release.ident is None:
            os.close(fd)
        else:
            release.join(PATIENCE)


async def test_a_record_swept_by_another_reader_while_the_watch_waited_for_the_lock_expired(
    tmp_path: Path,
) -> None:
    """Another reader holds the lease file's lock past the deadline while it removes the expired lease: the
    watch, told to look again shortly, hears the record go meanwhile. It expired, it did not leave (chaos
    seed 1 on files: the time to look again was taken for the lease's deadline)."""
    owner, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    lease = await owner.grant(1.0)
    await owner.create(KEY, b"v", lease.id)
    fd = os.open(owner.lease_path(lease.id), os.O_RDONLY)
    try:
        async with watcher.watch("/services/") as events:
            with anyio.fail_after(PATIENCE):
                assert isinstance(await anext(events), StoreSnapshot)
            fcntl.flock(fd, fcntl.LOCK_EX)  # the other reader, deciding
            deadline = owner.lease_path(lease.id).stat().st_mtime + 1.0
            # Past the deadline the watch finds the lock held, and looks again every BUSY_RECHECK (waited for
            # by the clock: nothing tells when the watch has looked).
            await anyio.sleep(max(deadline - time.time(), 0.0) + 0.5)
            owner.record_path(KEY).unlink()  # the other reader's sweep: the records first, still locked
            with anyio.fail_after(PATIENCE):
                removed = await anext(events)
            assert removed == StoreDelete(key=KEY)
            assert removed.reason is RemovalReason.EXPIRED
    finally:
        os.close(fd)


async def test_a_revoke_after_a_renewal_the_watch_has_not_read_yet_left(tmp_path: Path) -> None:
    """The watch last read the lease's deadline before a renewal it has not heard of yet (it was busy); the
    owner then exits cleanly. Its records left: the deadline the watch remembers has passed, but the lease
    did not run out (chaos seeds 2003, 2004, 2007, 2008 on files: the remembered deadline was taken for the
    lease's)."""
    owner, watcher = FileStore(tmp_path), FileStore(tmp_path, rescan_interval=60)
    lease = await owner.grant(1.0)
    async with watcher.watch("/services/") as events:
        with anyio.fail_after(PATIENCE):
            assert isinstance(await anext(events), StoreSnapshot)
            await owner.create(KEY, b"v", lease.id)
            assert await anext(events) == StorePut(key=KEY, value=b"v")  # the watch reads the deadline now
        remembered = owner.lease_path(lease.id).stat().st_mtime + 1.0
        # The watch is not asked for events from here on (a busy consumer): it hears nothing until then.
        await anyio.sleep(0.6)
        assert await owner.keep_alive(lease.id) == 1.0
        await anyio.sleep(max(remembered - time.time(), 0.0) + 0.1)  # past the remembered deadline only
        await owner.revoke(lease.id)
        with anyio.fail_after(PATIENCE):
            removed = await anext(events)
        assert removed == StoreDelete(key=KEY)
        assert removed.reason is RemovalReason.LEFT


async def test_a_lease_found_expired_leaves_a_tombstone_that_says_so_until_swept(tmp_path: Path) -> None:
    """A reader that finds a lease expired buries its file (a revoke removes it): a watch that hears of the
    records later still knows why they went; old tombstones are swept when a lease is granted."""
    from dyndisc.backends.file import leases

    owner, reader = FileStore(tmp_path), FileStore(tmp_path)
    lease = await owner.grant(0.2)
    await owner.create(KEY, b"v", lease.id)
    await anyio.sleep(0.3)
    assert await reader.get_prefix("/services/") == {}
    tombstone = owner.layout.expired_path(lease.id)
    assert tombstone.exists()
    assert not owner.lease_path(lease.id).exists()
    revoked = await owner.grant(5.0)
    await owner.revoke(revoked.id)
    assert not owner.layout.expired_path(revoked.id).exists()
    made = tombstone.stat().st_ctime  # when it was made; the sweep's clock says that was long ago:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(leases, "time", SimpleNamespace(time=lambda: made + leases.TOMBSTONE_SECONDS + 1))
        await owner.grant(5.0)
    assert not tombstone.exists()


async def test_a_resync_asked_for_while_the_watch_scans_scans_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch told to start over (its change feed restarted, or too many changes queued) while its first
    scan runs off the event loop throws that scan away and scans again: it goes on, with a snapshot."""
    from dyndisc.backends.file import watch as watch_module

    store = FileStore(tmp_path)
    lease = await store.grant(TTL)
    await store.create(KEY, b"v", lease.id)
    watches: list[Any] = []
    events_of = watch_module.FileWatch.events

    def events(self: Any) -> Any:
        watches.append(self)
        return events_of(self)

    monkeypatch.setattr(watch_module.FileWatch, "events", events)
    scan, scans = store.records.scan, []

    def scanning(prefix: str, under: Path | None = None) -> Any:
        scans.append(prefix)
        if len(scans) == 1:
            watches[0].needs_snapshot = True  # as resync() sets it, while this scan runs
        return scan(prefix, under)

    monkeypatch.setattr(store.records, "scan", scanning)
    async with store.watch("/services/") as found:
        with anyio.fail_after(PATIENCE):
            first = await anext(found)
    assert first == StoreSnapshot(items={KEY: b"v"})
    assert len(scans) == 2
