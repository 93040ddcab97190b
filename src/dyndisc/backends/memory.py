"""An in-process key-value store with real lease expiry: for development and users' unit tests.

It is not a mock: leases expire on the clock (a runtime whose keep-alive stops disappears after its TTL),
deletions reach watchers, and watches that fall behind get a fresh snapshot. Faults (a lease expired now, a
broken watch) come from :mod:`dyndisc.testing.faults`, which wraps any store.

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
from dyndisc.backends.kv.event_queue import StoreEventQueue


@dataclass
class _LeaseState:
    ttl: float
    deadline: float
    keys: set[str] = field(default_factory=set)


class _Watcher(StoreEventQueue):
    def __init__(self, store: MemoryStore, prefix: str) -> None:
        super().__init__(lambda: store._items(prefix))
        self.store = store
        self.prefix = prefix
        self.leases_changed = anyio.Event()

    async def expire_leases(self) -> None:
        """Drive lease expiry while this watch is open: nobody else may be calling the store."""
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
        self, *, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None
    ) -> None:
        """``clock`` times the leases; ``rng`` draws lease ids (a seeded one makes a simulation replay)."""
        self._clock = clock
        self._rng = rng or random.SystemRandom()
        self._data: dict[str, StoredValue] = {}
        self._leases: dict[int, _LeaseState] = {}
        # A dict, not a set: watchers are told of a change in the order they came (a simulation replays).
        self._watchers: dict[_Watcher, None] = {}

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
            for key in sorted(state.keys):
                self._remove(key, reason)

    def _remove(self, key: str, reason: RemovalReason = RemovalReason.LEFT) -> None:
        old = self._data.pop(key, None)
        if old is None:
            return
        if old.lease_id in self._leases:
            self._leases[old.lease_id].keys.discard(key)
        self._notify(StoreDelete(key=key, reason=reason))

    def _write(self, key: str, value: bytes, lease_id: int) -> None:
        old = self._data.get(key)
        if old is not None and old.lease_id != lease_id and old.lease_id in self._leases:
            self._leases[old.lease_id].keys.discard(key)
        self._data[key] = StoredValue(value=value, lease_id=lease_id)
        if lease_id:
            self._live_lease(lease_id).keys.add(key)
        self._notify(StorePut(key=key, value=value))

    def _live_lease(self, lease_id: int) -> _LeaseState:
        self._expire_due()
        state = self._leases.get(lease_id)
        if state is None:
            raise LeaseNotFoundError(
                f"lease {lease_id:x} is not known to the memory store (expired or revoked)"
            )
        return state

    def _notify(self, event: StorePut | StoreDelete) -> None:
        for watcher in self._watchers:
            if event.key.startswith(watcher.prefix):
                watcher.push(event)

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
        for watcher in self._watchers:
            watcher.leases_changed.set()
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
        self._remove(key)

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        await anyio.lowlevel.checkpoint()
        return self._items(prefix)

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        watcher = _Watcher(self, prefix)
        self._watchers[watcher] = None
        try:
            async with background_tasks() as tg:
                tg.start_soon(watcher.expire_leases)
                yield watcher.events()
        finally:
            self._watchers.pop(watcher, None)


class _MemoryDoctor(BackendDoctor):
    async def check_clock(self, report: Report) -> None:
        report.add("clock", Status.OK, "in-process leases: one clock")


def from_env(*, startup_timeout: float | None = None, startup_timeout_name: str | None = None) -> KvDiscovery:
    """The ``memory`` backend: the process-wide :meth:`MemoryStore.shared` store."""
    return KvDiscovery(MemoryStore.shared(), owns_store=False)
