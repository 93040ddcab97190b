"""Faults on demand, for tests: wrappers that make any store or backend fail the way real ones do.

* :class:`FaultyStore` wraps any :class:`~dyndisc.backends.kv.KeyValueStore`: break its watch streams (each
  resumes from a fresh snapshot, as after a reconnect that lost history), expire a lease now, take the store
  down (every call fails, watches stall) and bring it back, slow its calls down (a latency per call), refuse
  them (a permission denied), hold them at a :class:`Gate` (before the store applies a call, or after it did
  and before it answers), or plant a bug (lose deletes) to show that a checker notices.
* :class:`CrashableBackend` wraps any :class:`~dyndisc.backends.base.DiscoveryBackend`: after
  :meth:`~CrashableBackend.crash` it renews nothing and revokes nothing, as a killed process would, so its
  lease expires on the server's clock.

Production classes carry no test hooks: everything a test needs to break lives here.
"""

from __future__ import annotations

import builtins
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio

from dyndisc._concurrency import Wake, background_tasks
from dyndisc._entries import EntryEvent, MetadataEntry
from dyndisc._errors import BackendUnavailableError
from dyndisc._events import DiscoveryEvent
from dyndisc._models import Instance, InstanceQuery
from dyndisc.backends.base import Connected, DiscoveryBackend, Lease
from dyndisc.backends.diagnosis import BackendDoctor
from dyndisc.backends.kv import KeyValueStore, StoreDelete, StoredValue, StoreEvent
from dyndisc.backends.kv.event_queue import MAX_PENDING_EVENTS

__all__ = ["CrashableBackend", "FaultyStore", "Gate"]


class _Forwarding:
    """What a wrapper says about its connection is what the wrapped store or backend says."""

    inner: Connected

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def stale_since(self) -> float | None:
        return self.inner.stale_since

    @property
    def default_lease_ttl(self) -> float | None:
        return self.inner.default_lease_ttl

    @property
    def tells_lease_time(self) -> bool:
        return self.inner.tells_lease_time

    def doctor(self) -> BackendDoctor:
        return self.inner.doctor()


#: The calls of a store a latency or a gate can hold, by name.
STORE_CALLS = frozenset(
    {"grant", "keep_alive", "revoke", "time_to_live", "create", "put", "delete", "get_prefix"}
)


class Gate:
    """Holds the calls of one kind until :meth:`open`: a test waits for :attr:`arrived` (a call is held),
    does what the race needs meanwhile, then opens the gate."""

    def __init__(self) -> None:
        self._open = anyio.Event()
        #: Set once a call is held here.
        self.arrived = anyio.Event()
        #: How many calls are held now.
        self.waiting = 0

    def open(self) -> None:
        """Let every held call (and every later one) through."""
        self._open.set()

    async def hold(self) -> None:
        """Hold the calling task until the gate is open."""
        self.waiting += 1
        self.arrived.set()
        try:
            await self._open.wait()
        finally:
            self.waiting -= 1


class FaultyStore(_Forwarding, KeyValueStore):
    """``inner`` with faults injected on demand; with none injected it behaves exactly as ``inner``."""

    inner: KeyValueStore

    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.layouts = inner.layouts
        self._down: BackendUnavailableError | None = None
        self._down_since: float | None = None
        self._outages: list[str] = []
        self._healed = anyio.Event()
        self._breaks: dict[Wake, None] = {}
        #: A planted bug: watches drop every delete (a checker must notice the phantoms).
        self.lose_deletes = False
        #: A planted bug: writes are acknowledged and never applied (a checker must notice the loss).
        self.lose_writes = False
        #: Seconds each call waits before it reaches the store, by call name (see :data:`STORE_CALLS`);
        #: a seeded function gives a simulation its latency.
        self.latency: Callable[[str], float] | None = None
        self._gates: dict[tuple[str, bool], Gate] = {}
        self._refusals: dict[str, BaseException] = {}

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r})"

    # -- faults ------------------------------------------------------------------------------------------
    def gate(self, call: str, *, after: bool = False) -> Gate:
        """Hold every ``call`` (``"create"``, ``"keep_alive"`` ...) at a new :class:`Gate` until it is opened:
        before the store applies it, or with ``after=True`` once the store applied it and before it
        answers (the write landed, the caller does not know yet)."""
        if call not in STORE_CALLS:
            raise ValueError(f"no store call {call!r}: one of {', '.join(sorted(STORE_CALLS))}")
        gate = self._gates[call, after] = Gate()
        return gate

    def refuse(self, call: str, error: BaseException) -> None:
        """Every ``call`` fails with ``error`` until :meth:`allow` (a refusal the server would give: revoked
        credentials, a denied write)."""
        if call not in STORE_CALLS:
            raise ValueError(f"no store call {call!r}: one of {', '.join(sorted(STORE_CALLS))}")
        self._refusals[call] = error

    def allow(self, call: str) -> None:
        """End a :meth:`refuse`."""
        self._refusals.pop(call, None)

    def ungate(self, call: str, *, after: bool = False) -> None:
        """Remove the gate of ``call`` (opening it)."""
        gate = self._gates.pop((call, after), None)
        if gate is not None:
            gate.open()

    async def _enter(self, call: str) -> None:
        self._check()
        if (refusal := self._refusals.get(call)) is not None:
            raise refusal
        if self.latency is not None and (delay := self.latency(call)) > 0:
            await anyio.sleep(delay)
            self._check()
        if (gate := self._gates.get((call, False))) is not None:
            await gate.hold()
            self._check()

    async def _leave(self, call: str) -> None:
        if (gate := self._gates.get((call, True))) is not None:
            await gate.hold()

    def break_watches(self) -> None:
        """Break every open watch stream now: events in flight are lost, each watch resumes from a fresh
        snapshot, as after a reconnect that could not prove it missed nothing."""
        for wake in self._breaks:
            wake.set()

    async def expire_lease(self, lease_id: int) -> None:
        """Expire a lease now, as if its keep-alives had stopped: its keys go and every watcher sees it."""
        await self.inner.revoke(lease_id)

    def take_down(self, why: str = "the store is down (a fault injected by the test)") -> None:
        """Every call fails with :class:`~dyndisc.BackendUnavailableError` and watches stall until
        :meth:`bring_back`; watches then resume from a fresh snapshot. Outages nest: the store is back when
        each one (told apart by ``why``) has been brought back."""
        self._outages.append(why)
        if self._down is None:
            self._down = BackendUnavailableError(why)
            self._down_since = time.monotonic()
            self._healed = anyio.Event()
            self.break_watches()

    def bring_back(self, why: str | None = None) -> None:
        """End the outage ``why`` (default: the last one) of :meth:`take_down`."""
        if why in self._outages:
            self._outages.remove(why)
        elif self._outages:
            self._outages.pop()
        if not self._outages and self._down is not None:
            self._down = None
            self._down_since = None
            self._healed.set()

    @property
    def down(self) -> bool:
        """Whether the store is taken down."""
        return self._down is not None

    @property
    def stale_since(self) -> float | None:
        """Since when the store is taken down (``time.monotonic()``), else what the store itself says."""
        return self._down_since if self._down_since is not None else self.inner.stale_since

    def _check(self) -> None:
        if self._down is not None:
            raise self._down

    # -- KeyValueStore -----------------------------------------------------------------------------------
    async def grant(self, ttl: float) -> Lease:
        await self._enter("grant")
        lease = await self.inner.grant(ttl)
        await self._leave("grant")
        return lease

    async def keep_alive(self, lease_id: int) -> float:
        await self._enter("keep_alive")
        left = await self.inner.keep_alive(lease_id)
        await self._leave("keep_alive")
        return left

    async def revoke(self, lease_id: int) -> None:
        await self._enter("revoke")
        await self.inner.revoke(lease_id)
        await self._leave("revoke")

    async def time_to_live(self, lease_id: int) -> float | None:
        await self._enter("time_to_live")
        left = await self.inner.time_to_live(lease_id)
        await self._leave("time_to_live")
        return left

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        await self._enter("create")
        if self.lose_writes:
            return None
        existing = await self.inner.create(key, value, lease_id)
        await self._leave("create")
        return existing

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        await self._enter("put")
        if not self.lose_writes:
            await self.inner.put(key, value, lease_id)
        await self._leave("put")

    async def delete(self, key: str) -> None:
        await self._enter("delete")
        await self.inner.delete(key)
        await self._leave("delete")

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        await self._enter("get_prefix")
        found = await self.inner.get_prefix(prefix)
        await self._leave("get_prefix")
        return found

    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        self._check()
        relay = _Relay()
        self._breaks[relay.broken] = None
        try:
            async with background_tasks() as tg:
                tg.start_soon(self._relay, prefix, relay)
                yield relay.events()
        finally:
            self._breaks.pop(relay.broken, None)

    async def _relay(self, prefix: str, relay: _Relay) -> None:
        """Forward the inner watch's events; when broken, drop what is in flight and open it again."""
        while True:
            while self._down is not None:
                await self._healed.wait()
            relay.broken.clear()
            async with anyio.create_task_group() as tg:

                async def on_break(scope: anyio.CancelScope = tg.cancel_scope) -> None:
                    await relay.broken.wait()
                    relay.drop()
                    scope.cancel()

                tg.start_soon(on_break)
                async with self.inner.watch(prefix) as events:
                    async for event in events:
                        if not (self.lose_deletes and isinstance(event, StoreDelete)):
                            relay.put(event)
                tg.cancel_scope.cancel()  # the inner watch ended by itself: open it again


class _Relay:
    """The events of one faulty watch, between the task reading the inner watch and the consumer."""

    def __init__(self) -> None:
        self.broken = Wake()
        self._pending: deque[StoreEvent] = deque()
        self._wake = Wake()

    def put(self, event: StoreEvent) -> None:
        if len(self._pending) >= MAX_PENDING_EVENTS:
            self.broken.set()  # a slow consumer: resync it, as the stores themselves do
            return
        self._pending.append(event)
        self._wake.set()

    def drop(self) -> None:
        self._pending.clear()

    async def events(self) -> AsyncIterator[StoreEvent]:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            yield self._pending.popleft()


class CrashableBackend(_Forwarding, DiscoveryBackend):
    """``inner`` until :meth:`crash`; then, like a killed process, it renews and revokes nothing.

    A runtime built on it can be made to vanish the way a SIGKILLed worker does: its lease expires on the
    server's clock and every watcher sees its instances leave after the TTL. Watches keep working (what a
    dead process would have watched no longer matters). :meth:`pause` and :meth:`resume` freeze it for a
    while instead, as a SIGSTOPped process: nothing it sends reaches the server meanwhile.
    """

    inner: DiscoveryBackend

    def __init__(self, inner: DiscoveryBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.crashed = False
        self._running = anyio.Event()
        self._running.set()

    def crash(self) -> None:
        """From now on: keep-alives, grants and writes never answer; revokes do nothing."""
        self.crashed = True

    def pause(self) -> None:
        """Until :meth:`resume`: keep-alives, grants and writes wait (a stopped process sends nothing)."""
        if self._running.is_set():
            self._running = anyio.Event()

    def resume(self) -> None:
        """End a :meth:`pause`."""
        self._running.set()

    async def _hang_if_crashed(self) -> None:
        if self.crashed:
            await anyio.sleep_forever()
        await self._running.wait()

    async def grant_lease(self, ttl: float) -> Lease:
        await self._hang_if_crashed()
        return await self.inner.grant_lease(ttl)

    async def keep_alive(self, lease: Lease) -> float:
        await self._hang_if_crashed()
        return await self.inner.keep_alive(lease)

    async def revoke_lease(self, lease: Lease) -> None:
        if not self.crashed:
            await self.inner.revoke_lease(lease)

    async def register(self, instance: Instance, lease: Lease) -> Instance:
        await self._hang_if_crashed()
        return await self.inner.register(instance, lease)

    async def unregister(self, instance: Instance) -> None:
        await self._hang_if_crashed()
        await self.inner.unregister(instance)

    async def list(self, query: InstanceQuery) -> list[Instance]:
        return await self.inner.list(query)

    def watch(self, query: InstanceQuery) -> AbstractAsyncContextManager[AsyncIterator[DiscoveryEvent]]:
        return self.inner.watch(query)

    async def lease_time_left(self, instance_id: int) -> float | None:
        return await self.inner.lease_time_left(instance_id)

    async def put_entry(self, entry: MetadataEntry, lease: Lease | None) -> None:
        await self._hang_if_crashed()
        await self.inner.put_entry(entry, lease)

    async def delete_entry(self, bucket: str, key: str) -> None:
        await self._hang_if_crashed()
        await self.inner.delete_entry(bucket, key)

    async def list_entries(self, bucket: str, prefix: str = "") -> builtins.list[MetadataEntry]:
        return await self.inner.list_entries(bucket, prefix)

    def watch_entries(
        self, bucket: str, prefix: str = ""
    ) -> AbstractAsyncContextManager[AsyncIterator[EntryEvent]]:
        return self.inner.watch_entries(bucket, prefix)

    def follow_leases(self, renew_now: Callable[[], None]) -> AbstractAsyncContextManager[object]:
        return self.inner.follow_leases(renew_now)
