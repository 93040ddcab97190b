"""An in-process key-value store with real lease expiry and revisions: for development, users' unit tests and
the simulation.

It is not a mock: leases expire on the clock (a runtime whose keep-alive stops disappears after its TTL),
deletions reach watchers, and watches that fall behind get a fresh snapshot. Every change has a revision, as
in etcd, and watches are etcd's: one shared watch per prefix, fed by a stream from a bounded history
(:mod:`~dyndisc.backends.kv.change_log`) through the same resume logic as the etcd store's
(:mod:`~dyndisc.backends.kv.revisioned`). What a server does on its own is here too: compacting its history
(:meth:`MemoryStore.compact`, and by itself past ``keep_revisions``), dropping watch streams
(:meth:`MemoryStore.drop_watch_streams`), progress notifications. Faults of the client side (a lease expired
now, a broken watch, an outage, latency) come from :mod:`dyndisc.testing.faults`, which wraps any store.

One store serves one event loop at a time (it is not thread-safe), which is what tests and single-process
applications need.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from dyndisc._concurrency import background_tasks
from dyndisc._errors import LeaseNotFoundError
from dyndisc._events import RemovalReason
from dyndisc.backends.base import Lease
from dyndisc.backends.diagnosis import BackendDoctor, Report, Status
from dyndisc.backends.kv import KeyValueStore, KvDiscovery, StoreDelete, StoredValue, StoreEvent, StorePut
from dyndisc.backends.kv.change_log import KEEP_REVISIONS, PROGRESS_INTERVAL, ChangeLog
from dyndisc.backends.kv.revisioned import SharedWatch, subscribe


@dataclass
class _LeaseState:
    ttl: float
    deadline: float
    keys: set[str] = field(default_factory=set)


class _LeaseExpiry:
    """Drives lease expiry while a watch is open (a watcher must see a lease end even if nobody calls the
    store meanwhile): woken by the next deadline, or by a new lease."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.leases_changed = anyio.Event()

    async def run(self) -> None:
        while True:
            self.store._expire_due()
            delay = self.store._next_deadline() - self.store._clock()
            with anyio.move_on_after(max(delay, 0.0)):
                await self.leases_changed.wait()
                self.leases_changed = anyio.Event()


class MemoryStore(KeyValueStore):
    """A process-local :class:`~dyndisc.backends.kv.KeyValueStore` with leases that expire on a clock."""

    name = "memory"
    _shared: MemoryStore | None = None

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        keep_revisions: int = KEEP_REVISIONS,
        progress_interval: float | None = PROGRESS_INTERVAL,
        list_page_size: int | None = None,
    ) -> None:
        """``clock`` times the leases; ``rng`` draws lease ids (a seeded one makes a simulation replay);
        ``keep_revisions`` bounds the history watches resume from; ``progress_interval`` is the seconds
        between progress notifications to a watch stream with nothing to deliver (``None``: never);
        ``list_page_size`` hands a watch's listing on in parts of that many keys, as etcd's pages (``None``:
        whole)."""
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._data: dict[str, StoredValue] = {}
        self._leases: dict[int, _LeaseState] = {}
        self._log = ChangeLog(
            self._items, keep=keep_revisions, progress_interval=progress_interval, page_size=list_page_size
        )
        self._watches: dict[str, SharedWatch] = {}
        # A dict, not a set: woken in the order they came (a simulation replays).
        self._expiries: dict[_LeaseExpiry, None] = {}

    @classmethod
    def shared(cls) -> MemoryStore:
        """The process-wide store used by ``DYN_DISCOVERY_BACKEND=memory``."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def doctor(self) -> BackendDoctor:
        return _MemoryDoctor()

    @property
    def lease_ids(self) -> set[int]:
        """Ids of the live leases (after expiring the due ones)."""
        self._expire_due()
        return set(self._leases)

    # -- what a server does by itself ------------------------------------------------------------------
    @property
    def revision(self) -> int:
        """The revision of the last change (after expiring the due leases)."""
        self._expire_due()
        return self._log.revision

    def compact(self, revision: int | None = None) -> int:
        """Forget the history before ``revision`` (default: now), as etcd's compaction: a watch that needs
        it (its stream was away, or it lags that far) lists the prefix again. Returns the revision the history
        now starts at."""
        self._expire_due()
        return self._log.compact(revision)

    def drop_watch_streams(self) -> None:
        """Break every watch stream now, as a server restart or a lost connection does: each watch resumes
        from the revision it had reached (nothing lost, nothing twice), or relists if that history is gone
        by the time it is back."""
        self._log.drop_streams()

    # -- internals -------------------------------------------------------------------------------------
    def _items(self, prefix: str) -> dict[str, bytes]:
        self._expire_due()
        return {k: v.value for k, v in self._data.items() if k.startswith(prefix)}

    def _next_deadline(self) -> float:
        return min((s.deadline for s in self._leases.values()), default=self._clock() + 3600.0)

    def _expire_due(self) -> None:
        now = self._clock()
        for lease_id in [i for i, s in self._leases.items() if s.deadline <= now]:
            self._drop_lease(lease_id, RemovalReason.EXPIRED)

    def _drop_lease(self, lease_id: int, reason: RemovalReason) -> None:
        state = self._leases.pop(lease_id, None)
        if state is not None:
            # Every key of the lease leaves at one revision, as in etcd.
            self._log.record([d for key in sorted(state.keys) if (d := self._pop(key, reason)) is not None])

    def _pop(self, key: str, reason: RemovalReason) -> StoreDelete | None:
        old = self._data.pop(key, None)
        if old is None:
            return None
        if old.lease_id in self._leases:
            self._leases[old.lease_id].keys.discard(key)
        return StoreDelete(key=key, reason=reason)

    def _write(self, key: str, value: bytes, lease_id: int) -> None:
        old = self._data.get(key)
        if old is not None and old.lease_id != lease_id and old.lease_id in self._leases:
            self._leases[old.lease_id].keys.discard(key)
        self._data[key] = StoredValue(value=value, lease_id=lease_id)
        if lease_id:
            self._live_lease(lease_id).keys.add(key)
        self._log.record([StorePut(key=key, value=value)])

    def _live_lease(self, lease_id: int) -> _LeaseState:
        self._expire_due()
        state = self._leases.get(lease_id)
        if state is None:
            raise LeaseNotFoundError(
                f"lease {lease_id:x} is not known to the memory store (expired or revoked)"
            )
        return state

    # -- KeyValueStore ---------------------------------------------------------------------------------
    # Every operation starts with a checkpoint: like a call to a real server, it lets other tasks (the
    # watchers) run and honours cancellation, so code tested on memory is scheduled as it will be in prod.
    async def grant(self, ttl: float) -> Lease:
        await anyio.lowlevel.checkpoint()
        if ttl <= 0:
            raise ValueError(f"lease TTL must be positive, got {ttl}")
        lease_id = 0
        while lease_id == 0 or lease_id in self._leases:
            lease_id = self._rng.getrandbits(63)
        self._leases[lease_id] = _LeaseState(ttl=ttl, deadline=self._clock() + ttl)
        for expiry in self._expiries:
            expiry.leases_changed.set()
        return Lease(id=lease_id, ttl=ttl)

    async def keep_alive(self, lease_id: int) -> float:
        await anyio.lowlevel.checkpoint()
        state = self._live_lease(lease_id)
        state.deadline = self._clock() + state.ttl
        return state.ttl

    @property
    def tells_lease_time(self) -> bool:
        return True

    async def time_to_live(self, lease_id: int) -> float | None:
        self._expire_due()
        state = self._leases.get(lease_id)
        return None if state is None else max(state.deadline - self._clock(), 0.0)

    async def revoke(self, lease_id: int) -> None:
        await anyio.lowlevel.checkpoint()
        self._drop_lease(lease_id, RemovalReason.LEFT)

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        await anyio.lowlevel.checkpoint()
        if lease_id:
            self._live_lease(lease_id)
        existing = self._data.get(key)
        if existing is not None:
            return existing
        self._write(key, value, lease_id)
        return None

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        await anyio.lowlevel.checkpoint()
        if lease_id:
            self._live_lease(lease_id)
        self._write(key, value, lease_id)

    async def delete(self, key: str) -> None:
        await anyio.lowlevel.checkpoint()
        if (deleted := self._pop(key, RemovalReason.LEFT)) is not None:
            self._log.record([deleted])

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        await anyio.lowlevel.checkpoint()
        return self._items(prefix)

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        expiry = _LeaseExpiry(self)
        self._expiries[expiry] = None
        try:
            async with background_tasks() as tg:
                tg.start_soon(expiry.run)
                async with subscribe(self._watches, self._log, prefix, _established) as events:
                    yield events
        finally:
            self._expiries.pop(expiry, None)


async def _established(shared: SharedWatch) -> None:
    # The store answers at once and refuses nothing: the watch is up once its stream is.
    await shared.established.wait()


class _MemoryDoctor(BackendDoctor):
    async def check_clock(self, report: Report) -> None:
        report.add("clock", Status.OK, "in-process leases: one clock")


def from_env(*, startup_timeout: float | None = None, startup_timeout_name: str | None = None) -> KvDiscovery:
    """The ``memory`` backend: the process-wide :meth:`MemoryStore.shared` store."""
    return KvDiscovery(MemoryStore.shared(), owns_store=False)
