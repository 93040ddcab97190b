"""The edges of the runtime's parts that the mutants of ``tools/mutate.py`` showed unchecked: what a keeper
does with a server that answers TTL 0, refuses, or is away while it replaces or revokes a lease; what the
registrar keeps when a write or an unregistration fails. On virtual time where timing is the point."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import anyio
import pytest

from dyndisc import (
    AccessDeniedError,
    BackendUnavailableError,
    EndpointId,
    KvDiscovery,
    LeaseLossPolicy,
    LeaseNotFoundError,
    LeaseState,
    MemoryStore,
    MetadataEntry,
    RecordTooLargeError,
    RuntimeNotStartedError,
)
from dyndisc._retry import seed_jitter
from dyndisc.backends.base import Lease
from dyndisc.runtime.health import HealthRecorder
from dyndisc.runtime.lease_keeper import LeaseChange, LeaseKeeper
from dyndisc.runtime.registrar import Registrar
from dyndisc.runtime.registrations import Registrations
from dyndisc.testing import FaultyStore
from dyndisc.testing.chaos.virtual_time import VirtualLoop

E = EndpointId("ns", "c", "e")


def on_virtual_time(body: Callable[[], Awaitable[None]]) -> None:
    seed_jitter(7)
    try:
        anyio.run(body, backend_options={"loop_factory": VirtualLoop})
    finally:
        seed_jitter(None)


class Parts:
    """A keeper and a registrar over a faulty memory store (virtual clock when run on virtual time),
    counting every call of the store by name, answered or not."""

    def __init__(self, ttl: float = 10.0, backend: KvDiscovery | None = None) -> None:
        self.store = FaultyStore(MemoryStore(clock=anyio.current_time, rng=random.Random(1)))
        self.calls: dict[str, int] = {}
        for name in ("grant", "keep_alive", "revoke", "create", "delete", "put"):
            self._count(name)
        self.backend = backend or KvDiscovery(self.store)
        self.changes: list[LeaseChange] = []
        self.keeper = LeaseKeeper(
            self.backend, ttl, LeaseLossPolicy.REREGISTER, HealthRecorder(), self.changes.append
        )
        self.registrations = Registrations()
        self.registrar = Registrar(self.backend, self.keeper, self.registrations)

    def _count(self, name: str) -> None:
        call = getattr(self.store, name)

        async def counted(*args: object) -> object:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await call(*args)

        setattr(self.store, name, counted)

    @property
    def leases(self) -> list[int]:
        return list(self.store.inner.lease_ids)  # type: ignore[attr-defined]


# -- the keeper ----------------------------------------------------------------------------------------------
class AnswersZero(KvDiscovery):
    """A backend whose server answers a renewal with TTL 0 once (the lease ran out on the server)."""

    zero = False

    async def keep_alive(self, lease: Lease) -> float:
        if self.zero:
            self.zero = False
            return 0.0
        return await super().keep_alive(lease)


def test_a_renewal_answered_with_ttl_zero_is_a_lost_lease() -> None:
    async def body() -> None:
        store = FaultyStore(MemoryStore(clock=anyio.current_time, rng=random.Random(1)))
        backend = AnswersZero(store)
        parts = Parts(backend=backend)
        first = await parts.keeper.grant()
        async with anyio.create_task_group() as tg:
            tg.start_soon(parts.keeper.run, parts.registrar.carry)
            backend.zero = True
            await anyio.sleep(6.0)  # the renewal at 5 s answers 0
            tg.cancel_scope.cancel()
        assert [c.old_instance_id for c in parts.changes] == [first.id]

    on_virtual_time(body)


def test_the_outage_backoff_starts_over_after_a_renewal() -> None:
    async def body() -> None:
        parts = Parts(ttl=30.0)
        await parts.keeper.grant()
        async with anyio.create_task_group() as tg:
            tg.start_soon(parts.keeper.run, parts.registrar.carry)
            first = parts.keeper.lease
            await anyio.sleep(16.0)  # renewed once, at 15 s: the lease lasts until 45 s
            parts.store.take_down()
            await anyio.sleep(20.0)  # a long outage: the backoff reaches its cap (a second)
            parts.store.bring_back()
            await anyio.sleep(2.0)  # renewed again (within a second)
            assert parts.keeper.health.current.state is LeaseState.HELD
            assert parts.keeper.lease is first, "the same lease, so the same keep-alive loop and backoff"
            parts.store.take_down()
            before = parts.calls["keep_alive"]
            parts.keeper.renew_now.set()  # a renewal now meets the fresh outage
            await anyio.sleep(0.5)  # and retries quickly again (from 50 ms, doubling)
            quick = parts.calls["keep_alive"] - before
            tg.cancel_scope.cancel()
        assert quick >= 3, quick

    on_virtual_time(body)


def test_a_replacement_grant_rides_out_an_outage_at_a_sane_pace() -> None:
    async def body() -> None:
        parts = Parts(ttl=30.0)
        first = await parts.keeper.grant()
        await parts.registrar.register(E, "tcp://h:1")
        parts.store.refuse("keep_alive", LeaseNotFoundError("gone"))
        parts.store.refuse("grant", BackendUnavailableError("the server is away"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(parts.keeper.run, parts.registrar.carry)
            parts.keeper.renew_now.set()
            await anyio.sleep(10.0)
            tries = parts.calls.get("grant", 0)
            assert parts.keeper.health.current.state is LeaseState.REPLACING
            parts.store.allow("keep_alive")
            parts.store.allow("grant")
            await anyio.sleep(2.0)
            tg.cancel_scope.cancel()
        assert 5 <= tries <= 40, f"{tries} grants in 10 s: retried with backoff, not given up, not spun"
        assert [c.old_instance_id for c in parts.changes] == [first.id]
        assert parts.registrations.is_written(E, parts.keeper.lease)

    on_virtual_time(body)


def test_the_exit_revokes_even_when_it_is_cancelled() -> None:
    async def body() -> None:
        parts = Parts()
        lease = await parts.keeper.grant()
        with anyio.CancelScope() as scope:
            scope.cancel()  # leaving under cancellation (Ctrl-C, a cancelled task group)
            await parts.keeper.release(0)
        assert lease.id not in parts.leases

    on_virtual_time(body)


def test_a_refused_revoke_is_given_up_at_once_and_said(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        parts = Parts()
        lease = await parts.keeper.grant()
        parts.store.refuse("revoke", AccessDeniedError("the user may not revoke"))
        started = anyio.current_time()
        with caplog.at_level(logging.WARNING, logger="dyndisc.lease"):
            await parts.keeper.release(2)
        assert anyio.current_time() - started < 0.1, "a refusal is final: no retry within the budget"
        assert parts.calls["revoke"] == 1
        assert lease.id in parts.leases
        assert "may not revoke" in caplog.text, "the warning says why"

    on_virtual_time(body)


def test_a_revoke_that_hangs_is_tried_again_within_the_budget() -> None:
    async def body() -> None:
        parts = Parts()
        await parts.keeper.grant()
        parts.store.gate("revoke")  # never opened: every revoke hangs
        await parts.keeper.release(0)
        # A 5 s budget, each attempt cut at a quarter of it: four attempts, then the lease is left to expire.
        assert parts.calls["revoke"] == 4, parts.calls
        assert parts.keeper.health.current.reason is not None
        assert "expires on its own" in parts.keeper.health.current.reason

    on_virtual_time(body)


async def test_a_registration_waiting_for_a_replacement_is_told_when_the_runtime_leaves() -> None:
    parts = Parts()
    first = await parts.keeper.grant()
    await parts.registrar.register(E, "tcp://h:1")
    await parts.store.expire_lease(first.id)  # gone on the server; the keeper has not noticed yet
    told: list[BaseException] = []

    async def register_f() -> None:
        try:
            await parts.registrar.register(EndpointId("ns", "c", "f"), "tcp://h:2")
        except RuntimeNotStartedError as exc:
            told.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(register_f)  # its write is refused: it waits for the replacement to carry everything
        await anyio.wait_all_tasks_blocked()
        gate = parts.store.gate("create")  # the replacement's writes never finish
        async with anyio.create_task_group() as keeping:
            keeping.start_soon(parts.keeper.run, parts.registrar.carry)
            with anyio.fail_after(5):
                await gate.arrived.wait()  # replaced, and carrying
            keeping.cancel_scope.cancel()
        await parts.keeper.release(0)  # the runtime leaves meanwhile
    gate.open()
    assert [str(e) for e in told] == ["the runtime left its 'async with' during the registration"]


# -- the registrar -------------------------------------------------------------------------------------------
def test_a_replacement_lease_carries_its_registrations_through_an_outage() -> None:
    async def body() -> None:
        parts = Parts()
        first = await parts.keeper.grant()
        await parts.registrar.register(E, "tcp://h:1")
        async with anyio.create_task_group() as tg:
            tg.start_soon(parts.keeper.run, parts.registrar.carry)
            parts.store.refuse("create", BackendUnavailableError("no answer (a fault injected by the test)"))
            await parts.store.expire_lease(first.id)
            parts.keeper.renew_now.set()
            await anyio.sleep(5.0)  # the new lease's write meets the outage, again and again
            second = parts.keeper.lease
            assert second is not first
            assert parts.registrations.counts(second) == (1, 1), "wanted, not written yet"
            parts.store.allow("create")
            await anyio.sleep(2.0)  # the next retry (within a second) writes it
            assert parts.keeper.failure is None, "an outage does not stop the runtime"
            assert parts.registrations.counts(second) == (1, 0)
            tg.cancel_scope.cancel()

    on_virtual_time(body)


async def test_a_refused_update_leaves_the_previous_registration_surely_written() -> None:
    parts = Parts()
    lease = await parts.keeper.grant()
    await parts.registrar.register(E, "tcp://h:1")
    with pytest.raises(RecordTooLargeError):  # refused by the backend's encoder, before anything is written
        await parts.registrar.register(E, "tcp://h:2", {"blob": "x" * 70_000})
    assert [i.transport for i in parts.registrations.registered(lease)] == [
        parts.registrations.registered(lease)[0].transport
    ]
    (still,) = parts.registrations.registered(lease)
    assert still.transport is not None
    assert still.transport.address == "h:1"
    assert parts.registrations.counts(lease) == (1, 0)


async def test_a_failed_unregistration_can_be_done_again() -> None:
    parts = Parts()
    lease = await parts.keeper.grant()
    await parts.registrar.register(E, "tcp://h:1")
    parts.store.take_down()
    with pytest.raises(BackendUnavailableError):
        await parts.registrar.unregister(E)
    assert parts.registrations.registered(lease) == [], "maybe deleted: no longer surely written"
    parts.store.bring_back()
    await parts.registrar.unregister(E)  # the record is still known: this removes it
    assert await parts.backend.store.get_prefix("") == {}


async def test_an_entry_refused_for_a_lost_lease_waits_for_the_next_lease_without_asking_again() -> None:
    parts = Parts()
    first = await parts.keeper.grant()
    await parts.store.expire_lease(first.id)  # gone on the server; the keeper has not noticed yet
    entry = MetadataEntry("v1/custom", "k", {"v": 1})
    with anyio.move_on_after(0.5):
        await parts.registrar.put_bound(("entry", "v1/custom", "k"), lambda _lease: entry)
        raise AssertionError("written with no lease to write under")
    assert parts.calls["put"] == 1, "refused once, then waiting for a new lease (none comes here)"


def test_an_entry_refused_for_a_lost_lease_has_the_server_asked_at_once() -> None:
    async def body() -> None:
        parts = Parts()  # TTL 10 s: the next renewal is 5 s away
        first = await parts.keeper.grant()
        await parts.store.expire_lease(first.id)  # gone on the server; the keeper has not noticed yet
        async with anyio.create_task_group() as tg:
            tg.start_soon(parts.keeper.run, parts.registrar.carry)
            started = anyio.current_time()
            entry = MetadataEntry("v1/custom", "k", {"v": 1})
            await parts.registrar.put_bound(("entry", "v1/custom", "k"), lambda _lease: entry)
            assert anyio.current_time() - started < 1.0, "written under a new lease, not at the next renewal"
            assert parts.keeper.lease is not first
            tg.cancel_scope.cancel()

    on_virtual_time(body)


async def test_a_bad_entry_is_refused_at_once_even_while_the_entry_is_being_written() -> None:
    parts = Parts()
    await parts.keeper.grant()
    ident = ("entry", "v1/custom", "k")
    gate = parts.store.gate("put")
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            parts.registrar.put_bound, ident, lambda _lease: MetadataEntry("v1/custom", "k", {"v": 1})
        )
        with anyio.fail_after(5):
            await gate.arrived.wait()  # version 1 is being written
        too_large = MetadataEntry("v1/custom", "k", {"blob": "x" * 300_000})
        with anyio.fail_after(1), pytest.raises(RecordTooLargeError):
            await parts.registrar.put_bound(ident, lambda _lease: too_large)
        gate.open()
    assert [e.value for e in await parts.backend.list_entries("v1/custom")] == [{"v": 1}]


async def test_an_entry_waiting_for_its_turn_when_the_runtime_stops_is_not_written() -> None:
    parts = Parts()
    await parts.keeper.grant()
    ident = ("entry", "v1/custom", "k")
    gate = parts.store.gate("put")
    failed: list[BaseException] = []

    async def put_version_2() -> None:
        try:
            await parts.registrar.put_bound(ident, lambda _lease: MetadataEntry("v1/custom", "k", {"v": 2}))
        except AccessDeniedError as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            parts.registrar.put_bound, ident, lambda _lease: MetadataEntry("v1/custom", "k", {"v": 1})
        )
        with anyio.fail_after(5):
            await gate.arrived.wait()  # version 1 is being written
        tg.start_soon(put_version_2)
        await anyio.wait_all_tasks_blocked()  # version 2 waits for its turn
        parts.keeper.fail(AccessDeniedError("the server refused the keep-alive"))
        gate.open()
    assert [str(e) for e in failed] == ["the server refused the keep-alive"]
    assert [e.value for e in await parts.backend.list_entries("v1/custom")] == [{"v": 1}]


async def test_an_entry_deleted_while_its_put_waits_is_not_written_and_the_put_says_what_it_was() -> None:
    parts = Parts()
    await parts.keeper.grant()
    ident = ("entry", "v1/custom", "k")
    version_2 = MetadataEntry("v1/custom", "k", {"v": 2})
    returned: list[MetadataEntry] = []
    gate = parts.store.gate("put")

    async def put_version_2() -> None:
        returned.append(await parts.registrar.put_bound(ident, lambda _lease: version_2))

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            parts.registrar.put_bound, ident, lambda _lease: MetadataEntry("v1/custom", "k", {"v": 1})
        )
        with anyio.fail_after(5):
            await gate.arrived.wait()  # version 1 is being written
        tg.start_soon(put_version_2)
        await anyio.wait_all_tasks_blocked()  # version 2 waits for its turn
        tg.start_soon(parts.registrar.forget_entry, ident, "v1/custom", "k")  # and is deleted meanwhile
        await anyio.wait_all_tasks_blocked()
        gate.open()
    assert returned == [version_2]
    assert await parts.backend.list_entries("v1/custom") == []


async def test_a_stopped_runtime_says_why_before_judging_what_it_is_asked() -> None:
    parts = Parts()
    await parts.keeper.grant()
    parts.keeper.fail(AccessDeniedError("the server refused the keep-alive"))
    with pytest.raises(AccessDeniedError, match="refused the keep-alive"):
        await parts.registrar.register(E, "not a transport")
    too_large = MetadataEntry("v1/custom", "k", {"blob": "x" * 300_000})
    with pytest.raises(AccessDeniedError, match="refused the keep-alive"):
        await parts.registrar.put_bound(("entry", "v1/custom", "k"), lambda _lease: too_large)
    assert parts.registrations.counts(parts.keeper.lease) == (0, 0), "nothing is wanted"


async def test_a_bad_entry_is_refused_before_the_store_is_asked() -> None:
    parts = Parts()
    await parts.keeper.grant()
    parts.store.take_down()  # were the store asked, this would be an outage instead
    too_large = MetadataEntry("v1/custom", "k", {"blob": "x" * 300_000})
    with pytest.raises(RecordTooLargeError):
        await parts.registrar.put_bound(("entry", "v1/custom", "k"), lambda _lease: too_large)
    assert parts.calls.get("put", 0) == 0


async def test_a_registration_refused_for_a_lost_lease_leaves_nothing_to_remove() -> None:
    parts = Parts()
    lease = await parts.keeper.grant()
    await parts.store.expire_lease(lease.id)  # gone on the server; the keeper has not noticed yet
    async with anyio.create_task_group() as tg:
        tg.start_soon(parts.registrar.register, E, "tcp://h:1")
        await anyio.wait_all_tasks_blocked()  # the store refused the write: it waits for another lease
        tg.cancel_scope.cancel()  # the application gives up on it
    assert parts.calls["create"] == 1
    assert parts.registrations.written(E) is None
    await parts.registrar.unregister(E)
    assert parts.calls.get("delete", 0) == 0, "nothing was written: there is nothing to delete"


class RefusesOneEntryWrite(KvDiscovery):
    """Holds the next write of an entry until :attr:`go` is set, then refuses it (once)."""

    def __init__(self, store: FaultyStore) -> None:
        super().__init__(store)
        self.armed = False
        self.held = anyio.Event()
        self.go = anyio.Event()

    async def put_entry(self, entry: MetadataEntry, lease: Lease | None) -> None:
        if self.armed:
            self.armed = False
            self.held.set()
            await self.go.wait()
            raise AccessDeniedError("refused writing the entry (a fault injected by the test)")
        await super().put_entry(entry, lease)


async def test_an_entry_put_again_while_a_replacements_write_of_it_is_refused_is_still_written() -> None:
    store = FaultyStore(MemoryStore(clock=anyio.current_time, rng=random.Random(1)))
    backend = RefusesOneEntryWrite(store)
    parts = Parts(backend=backend)
    first = await parts.keeper.grant()
    ident = ("entry", "v1/custom", "k")
    await parts.registrar.put_bound(ident, lambda _lease: MetadataEntry("v1/custom", "k", {"v": 1}))
    backend.armed = True  # the replacement's write of version 1 is refused
    await store.expire_lease(first.id)
    async with anyio.create_task_group() as tg:
        tg.start_soon(parts.keeper.run, parts.registrar.carry)
        parts.keeper.renew_now.set()
        with anyio.fail_after(5):
            await backend.held.wait()  # replaced, and carrying version 1
        # Meanwhile the application puts version 2: its own call settles it, whatever befalls version 1.
        put = anyio.Event()

        async def put_version_2() -> None:
            await parts.registrar.put_bound(ident, lambda _lease: MetadataEntry("v1/custom", "k", {"v": 2}))
            put.set()

        tg.start_soon(put_version_2)
        await anyio.wait_all_tasks_blocked()
        backend.go.set()
        with anyio.fail_after(5):
            await put.wait()
        tg.cancel_scope.cancel()
    assert [e.value for e in await backend.list_entries("v1/custom")] == [{"v": 2}]
    assert parts.registrations.wanted_entry(ident) is not None, "version 2 is still wanted"


def test_a_set_released_after_its_event_loop_ended_raises_nothing() -> None:
    """A client collected by the garbage collector once its event loop is gone (a runtime abandoned by a
    cancellation, at interpreter exit) releases its set from no loop at all: nothing to cancel then, and
    nothing may be raised into the collector."""
    from dyndisc._instance_set import InstanceSet
    from dyndisc._models import InstanceQuery
    from dyndisc.backends.kv import KvDiscovery
    from dyndisc.backends.memory import MemoryStore

    kept: list[InstanceSet] = []

    async def main() -> None:
        found = InstanceSet(KvDiscovery(MemoryStore()), InstanceQuery("ns"))
        found.acquire()
        async with anyio.create_task_group() as tg:
            await tg.start(found.run_until_unused)
            kept.append(found)
            tg.cancel_scope.cancel()  # abandoned: nobody detaches or releases it while the loop runs

    anyio.run(main)
    kept[0].release()


class _StoreWithTtl(MemoryStore):
    @property
    def default_lease_ttl(self) -> float | None:
        return 3.0


def test_a_given_backend_s_own_lease_ttl_is_the_runtime_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """``DistributedRuntime(backend)`` takes the TTL the backend's settings ask for (``ETCD_LEASE_TTL``)
    when neither the argument nor ``DYN_LEASE_TTL`` gives one, as a backend made by name does."""
    from dyndisc import DistributedRuntime

    monkeypatch.delenv("DYN_LEASE_TTL", raising=False)
    assert DistributedRuntime(KvDiscovery(_StoreWithTtl())).lease_ttl == 3.0
    assert DistributedRuntime(KvDiscovery(MemoryStore())).lease_ttl == 10.0


async def test_a_subscriber_s_lag_after_a_resync_counts_from_the_resync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backlog replaced by one ``Resync`` takes its arrival times with it: the lag measured for the
    ``Resync``, and for every event after it, is that event's own."""
    from types import SimpleNamespace

    from dyndisc import _instance_set
    from dyndisc._events import Resync

    clock = [0.0]
    monkeypatch.setattr(_instance_set, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    lags: list[float] = []
    metrics = SimpleNamespace(enabled=True, watch_lag=lambda backend, seconds: lags.append(seconds))
    source = SimpleNamespace(
        resync_event=lambda: Resync(instances=()), metrics=metrics, backend=SimpleNamespace(name="memory")
    )
    sub = _instance_set.Subscription(source)  # type: ignore[arg-type]
    await anext(sub)  # its first Resync, taken at once
    clock[0] = 1.0
    sub._push(Resync(instances=()))  # a backlog of one, then a Resync replaces it
    clock[0] = 2.0
    sub._push(Resync(instances=()))
    clock[0] = 3.0
    await anext(sub)
    clock[0] = 4.0
    sub._push(Resync(instances=()))
    clock[0] = 5.0
    await anext(sub)
    assert lags == [0.0, 1.0, 1.0]


class _CarryFailsOnce(KvDiscovery):
    """A backend whose next registration, once armed, meets an outage (and says so)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, owns_store=False)
        self.armed = False
        self.refused = anyio.Event()

    async def register(self, instance, lease):  # type: ignore[no-untyped-def]
        if self.armed:
            self.armed = False
            self.refused.set()
            raise BackendUnavailableError("the store is down for a moment (a fault injected by the test)")
        return await super().register(instance, lease)


async def test_an_endpoint_unregistered_while_its_carry_waits_out_an_outage_is_not_written() -> None:
    """The replacement's write of an endpoint is retried after an outage; an ``unregister()`` that came
    meanwhile (waiting for the endpoint's lock) wins: the retry writes nothing, and the runtime goes on."""
    from dyndisc import DistributedRuntime

    store = MemoryStore()
    backend = _CarryFailsOnce(store)
    async with DistributedRuntime(backend, lease_ttl=5) as runtime:
        endpoint = runtime.endpoint("ns.c.e")
        await endpoint.register("tcp://h:1")
        first = runtime.instance_id
        backend.armed = True
        await store.revoke(first)  # lost behind its back: the runtime replaces it and carries the endpoint
        with anyio.fail_after(5):
            await backend.refused.wait()
        async with anyio.create_task_group() as calls:
            calls.start_soon(endpoint.unregister)  # no longer wanted at once; waits for the carry's lock
            await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            while runtime.instance_id == first:  # noqa: ASYNC110 - the runtime says when it has a new lease
                await anyio.sleep(0.01)
        assert await store.get_prefix("") == {}
        await endpoint.register("tcp://h:2")  # the runtime goes on under its new lease
        assert len(await store.get_prefix("")) == 1


async def test_next_says_why_a_watch_ended_where_iterating_ends_quietly() -> None:
    """A subscription that outlives its runtime: iterating it ends quietly once the runtime left cleanly,
    while ``next()`` raises why the view no longer changes (for a caller that must tell the two apart)."""
    from dyndisc import DistributedRuntime, InstanceQuery, Resync

    runtime = DistributedRuntime(KvDiscovery(MemoryStore()))
    async with runtime:
        watching = runtime.watch(InstanceQuery("ns"))
        events = await watching.__aenter__()
        assert isinstance(await events.next(), Resync)  # type: ignore[attr-defined]
    try:
        with pytest.raises(RuntimeNotStartedError, match="left its 'async with'"):
            await events.next()  # type: ignore[attr-defined]
        assert [event async for event in events] == []
    finally:
        await watching.__aexit__(None, None, None)


async def test_a_backend_made_by_name_is_closed_when_the_runtime_leaves_and_a_given_one_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dyndisc import DistributedRuntime
    from dyndisc.runtime import distributed

    closed: list[str] = []

    class Recording(KvDiscovery):
        def __init__(self, name: str) -> None:
            super().__init__(MemoryStore())
            self.label = name

        async def aclose(self) -> None:
            closed.append(self.label)
            await super().aclose()

    monkeypatch.setattr(distributed, "create_backend", lambda name: Recording("made"))
    async with DistributedRuntime("memory"):
        pass
    given = Recording("given")
    async with DistributedRuntime(given):
        pass
    assert closed == ["made"], "the runtime closes what it made, and leaves the caller's own to the caller"
