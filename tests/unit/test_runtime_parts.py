"""The runtime's parts alone: what the registrations must carry (pure), and the races of register,
unregister and a lease replacement, against a store whose calls a test can hold at a gate or slow down,
without a whole runtime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from dyndisc import (
    AccessDeniedError,
    DynamoTcp,
    EndpointId,
    Instance,
    InstanceQuery,
    KvDiscovery,
    Lease,
    LeaseLossPolicy,
    LeaseNotFoundError,
    LeaseState,
    MemoryStore,
    RuntimeNotStartedError,
)
from dyndisc._entries import MetadataEntry
from dyndisc.runtime.health import HealthRecorder
from dyndisc.runtime.lease_keeper import LeaseChange, LeaseKeeper
from dyndisc.runtime.registrar import Registrar
from dyndisc.runtime.registrations import Registrations, Wanted, Written, WrittenEntry
from dyndisc.testing import FaultyStore

E = EndpointId("ns", "c", "e")
F = EndpointId("ns", "c", "f")


def instance(endpoint: EndpointId, lease_id: int, address: str = "h:1") -> Instance:
    return Instance.for_endpoint(endpoint, lease_id, f"tcp://{address}")


# -- Registrations: pure -------------------------------------------------------------------------------------
L1, L2 = Lease(1, 10.0), Lease(2, 10.0)


def test_a_new_lease_carries_every_wanted_endpoint_not_surely_written_under_it() -> None:
    regs = Registrations()
    regs.want(E, Wanted(instance(E, 1)))
    regs.want(F, Wanted(instance(F, 1)))
    regs.wrote(E, Written(instance(E, 1), L1))
    assert regs.endpoints_to_carry(L1) == [F], "E is written under lease 1"
    assert regs.endpoints_to_carry(L2) == [E, F], "a new lease carries both, in registration order"
    regs.attempt(F, instance(F, 2), L2)
    assert regs.endpoints_to_carry(L2) == [E, F], "a write without an answer is not surely written"
    assert regs.registered(L2) == []
    regs.wrote(F, Written(instance(F, 2), L2))
    assert regs.endpoints_to_carry(L2) == [E]
    assert regs.registered(L2) == [instance(F, 2)]


def test_a_lease_with_the_same_id_is_another_lease() -> None:
    # On Kubernetes a replacement lease keeps the pod's id: what the old grant carried is gone all the same.
    regs = Registrations()
    regs.want(E, Wanted(instance(E, 1)))
    regs.wrote(E, Written(instance(E, 1), L1))
    again = Lease(1, 10.0, holder=7)
    assert again == L1
    assert regs.endpoints_to_carry(again) == [E]


def test_a_rendered_record_follows_the_lease_and_its_template() -> None:
    regs = Registrations()
    template = DynamoTcp("10.0.0.5", 9000)
    regs.want(E, Wanted(Instance.for_endpoint(E, 1, template.render(E, 1)), template))
    moved = regs.render(E, Lease(0xAB, 10.0))
    assert moved is not None
    assert moved.instance_id == 0xAB
    assert moved.transport is not None
    assert moved.transport.address == "10.0.0.5:9000/ab/ns/c/e"
    assert regs.render(F, Lease(0xAB, 10.0)) is None, "not wanted: nothing to render"


def test_an_undo_restores_only_its_own_want() -> None:
    regs = Registrations()
    first = Wanted(instance(E, 1, "h:1"))
    regs.want(E, first)
    undo = regs.want(E, Wanted(instance(E, 1, "h:2")))
    undo()
    assert regs.wanted(E) is first, "a failed update wants the previous record again"
    undo_second = regs.want(E, Wanted(instance(E, 1, "h:3")))
    third = Wanted(instance(E, 1, "h:4"))
    regs.want(E, third)
    undo_second()
    assert regs.wanted(E) is third, "an undo never takes back a later want"
    regs.unwant(E)
    undo_fourth = regs.want(E, Wanted(instance(E, 1, "h:5")))
    regs.unwant(E)
    undo_fourth()
    assert regs.wanted(E) is None, "an undo never brings back what was unregistered"


def test_a_refused_write_leaves_what_was_written_before() -> None:
    regs = Registrations()
    regs.wrote(E, Written(instance(E, 1, "h:1"), L1))
    refused = regs.attempt(E, instance(E, 1, "h:2"), L1)
    written = regs.written(E)
    assert written is not None
    assert written.instance == instance(E, 1, "h:2"), "maybe in the store while the write is under way"
    assert not regs.is_written(E, L1)
    refused()
    assert regs.written(E) == Written(instance(E, 1, "h:1"), L1)
    assert regs.is_written(E, L1)


def test_what_no_lease_wants_is_forgotten_at_a_new_lease_and_entries_are_carried() -> None:
    regs = Registrations()
    regs.attempt(E, instance(E, 1), L1)  # a cancelled registration: maybe written under lease 1, not wanted
    regs.want(F, Wanted(instance(F, 1)))
    regs.wrote(F, Written(instance(F, 1), L1))
    entry = MetadataEntry("v1/custom", "k", {"v": 1})
    regs.want_entry("k", lambda _lease: entry)
    regs.wrote_entry("k", WrittenEntry(entry, L1))
    regs.wrote_entry("gone", WrittenEntry(MetadataEntry("v1/custom", "gone", {}), L1))  # not wanted
    regs.forget_unwanted(L2)
    assert regs.written(E) is None, "lease 1 is gone, and E with it"
    assert regs.written_entry("gone") is None, "and the entry no lease wants"
    assert regs.written_entry("k") is not None
    assert regs.written(F) is not None, "F is wanted: the new lease carries it"
    assert regs.entries_to_carry(L2) == ["k"]
    assert regs.entries_to_carry(L1) == []
    assert regs.counts(L2) == (1, 1)
    assert regs.counts(L1) == (1, 0)


# -- the parts over a store with gates -----------------------------------------------------------------------
@dataclass
class Parts:
    store: FaultyStore
    backend: KvDiscovery
    keeper: LeaseKeeper
    registrations: Registrations
    registrar: Registrar
    changes: list[LeaseChange] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def on_change(self, change: LeaseChange) -> None:
        self.changes.append(change)
        self.changed.set()
        self.changed = anyio.Event()

    async def renewals(self, count: int) -> None:
        """Wait until the store has renewed the lease ``count`` more times."""
        seen = anyio.Event()
        renewed = 0

        def counting(call: str) -> float:
            nonlocal renewed
            if call == "keep_alive":
                renewed += 1
                if renewed > count:
                    seen.set()
            return 0.0

        self.store.latency = counting
        try:
            await seen.wait()
        finally:
            self.store.latency = None

    async def listed(self) -> set[tuple[str, int]]:
        return {(i.endpoint, i.instance_id) for i in await self.backend.list(_everything())}

    async def lose_lease(self) -> int:
        """The server forgets the lease; the keeper finds out at its next renewal (asked now)."""
        old = self.keeper.lease.id
        await self.store.expire_lease(old)
        self.keeper.renew_now.set()
        return old


def _everything() -> InstanceQuery:
    return InstanceQuery()


@asynccontextmanager
async def running_parts(ttl: float = 30.0) -> AsyncIterator[Parts]:
    store = FaultyStore(MemoryStore())
    backend = KvDiscovery(store)
    keeper = LeaseKeeper(backend, ttl, LeaseLossPolicy.REREGISTER, HealthRecorder())
    registrations = Registrations()
    registrar = Registrar(backend, keeper, registrations)
    parts = Parts(store, backend, keeper, registrations, registrar)
    keeper.on_change = parts.on_change
    await keeper.grant()
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run, registrar.carry)
        yield parts
        tg.cancel_scope.cancel()


async def replaced(parts: Parts, count: int = 1) -> None:
    with anyio.fail_after(5):
        while len(parts.changes) < count:
            await parts.changed.wait()


async def test_a_registration_whose_write_meets_a_lost_lease_completes_once_under_the_new_one() -> None:
    async with running_parts() as parts:
        await parts.registrar.register(E, "tcp://h:1")
        gate = parts.store.gate("create")
        registering = anyio.Event()

        async def register_f() -> None:
            await parts.registrar.register(F, "tcp://h:2")
            registering.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(register_f)
            with anyio.fail_after(5):
                await gate.arrived.wait()  # F's write is on its way under the old lease
            old = await parts.lose_lease()
            parts.store.ungate("create")
        await replaced(parts)
        new = parts.keeper.lease.id
        assert new != old
        assert await parts.listed() == {("e", new), ("f", new)}
        assert parts.registrations.counts(parts.keeper.lease) == (2, 0)


async def test_an_unregistration_during_the_replacement_is_never_undone() -> None:
    async with running_parts() as parts:
        for name in "abcd":
            await parts.registrar.register(EndpointId("ns", "c", name), f"tcp://h:{ord(name)}")
        gate = parts.store.gate("create")
        await parts.lose_lease()
        with anyio.fail_after(5):
            await gate.arrived.wait()  # the replacement is writing the endpoints again
        async with anyio.create_task_group() as tg:
            # Each waits for its endpoint's write in flight under the new lease, then removes it.
            tg.start_soon(parts.registrar.unregister, EndpointId("ns", "c", "a"))
            tg.start_soon(parts.registrar.unregister, EndpointId("ns", "c", "b"))
            await anyio.lowlevel.checkpoint()
            parts.store.ungate("create")
        await replaced(parts)
        new = parts.keeper.lease.id
        assert await parts.listed() == {("c", new), ("d", new)}


async def test_a_cancelled_registration_whose_write_landed_can_be_unregistered() -> None:
    async with running_parts() as parts:
        gate = parts.store.gate("create", after=True)  # the write lands; the answer is held
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(parts.registrar.register, E, "tcp://h:1")
                await gate.arrived.wait()
                tg.cancel_scope.cancel()  # the caller gives up (a timeout, a cancelled request)
        assert not scope.cancelled_caught
        parts.store.ungate("create", after=True)
        lease = parts.keeper.lease.id
        assert await parts.listed() == {("e", lease)}, "the write landed"
        assert parts.registrations.wanted(E) is None, "a cancelled registration is not wanted"
        await parts.registrar.unregister(E)
        assert await parts.listed() == set(), "unregister() removes what may have landed"


async def test_a_cancelled_registration_is_not_carried_to_a_new_lease() -> None:
    async with running_parts() as parts:
        await parts.registrar.register(F, "tcp://h:2")
        gate = parts.store.gate("create", after=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(parts.registrar.register, E, "tcp://h:1")
            with anyio.fail_after(5):
                await gate.arrived.wait()
            tg.cancel_scope.cancel()
        parts.store.ungate("create", after=True)
        await parts.lose_lease()
        await replaced(parts)
        assert await parts.listed() == {("f", parts.keeper.lease.id)}


async def test_concurrent_updates_of_one_endpoint_end_with_the_last_one_wanted() -> None:
    async with running_parts() as parts:
        await parts.registrar.register(E, "tcp://h:0")
        parts.store.latency = lambda call: 0.01 if call in ("create", "put") else 0.0
        async with anyio.create_task_group() as tg:
            for n in range(1, 6):
                tg.start_soon(parts.registrar.register, E, f"tcp://h:{n}")
                await anyio.lowlevel.checkpoint()
        last = parts.registrations.wanted(E)
        assert last is not None
        (stored,) = await parts.backend.list(_everything())
        assert stored.transport == last.instance.transport, "the store holds what is wanted last"


async def test_a_replacement_slower_than_the_ttl_keeps_its_new_lease_alive() -> None:
    # 600 endpoints written again at 20 ms a write, 32 at a time: ~0.4 s, well past half the 0.3 s TTL. The
    # new lease must be renewed meanwhile, or it expires before the replacement ends, for ever (issue 24).
    async with running_parts(ttl=0.3) as parts:
        for n in range(600):
            await parts.registrar.register(EndpointId("ns", "c", f"e{n}"), f"tcp://h:{n}")
        parts.store.latency = lambda call: 0.02 if call == "create" else 0.0
        await parts.lose_lease()
        await replaced(parts)
        new = parts.keeper.lease.id
        parts.store.latency = None
        assert len(parts.changes) == 1, f"one replacement, not {len(parts.changes)}"
        listed = await parts.listed()
        assert len(listed) == 600
        assert {lease for _, lease in listed} == {new}
        with anyio.fail_after(2):  # and the new lease stays: renewed for two more TTLs, not replaced
            await parts.renewals(4)
        assert parts.keeper.lease.id == new
        assert parts.keeper.replacements == 1
        assert parts.keeper.health.current.state is LeaseState.HELD


async def test_a_lease_lost_again_during_the_replacement_is_told_once_from_the_first_id() -> None:
    async with running_parts() as parts:
        for name in "abc":
            await parts.registrar.register(EndpointId("ns", "c", name), f"tcp://h:{ord(name)}")
        first = parts.keeper.lease.id
        gate = parts.store.gate("create")
        await parts.lose_lease()
        with anyio.fail_after(5):
            await gate.arrived.wait()
        second = await parts.lose_lease()  # the replacement lease is lost too, mid-way
        assert second != first
        parts.store.ungate("create")
        await replaced(parts)
        third = parts.keeper.lease.id
        assert parts.changes == [LeaseChange(first, third, parts.changes[0].reason)]
        assert await parts.listed() == {("a", third), ("b", third), ("c", third)}


async def test_a_registration_waits_for_the_replacement_lease_then_completes_under_it() -> None:
    async with running_parts() as parts:
        await parts.registrar.register(E, "tcp://h:1")
        gate = parts.store.gate("grant")  # the replacement's grant is held
        old = await parts.lose_lease()
        with anyio.fail_after(5):
            await gate.arrived.wait()
        assert parts.keeper.health.current.state is LeaseState.REPLACING
        done = anyio.Event()

        async def register_f() -> None:
            await parts.registrar.register(F, "tcp://h:2")
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(register_f)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert not done.is_set(), "no lease to write under: it waits"
            parts.store.ungate("grant")
        new = parts.keeper.lease.id
        assert new != old
        assert await parts.listed() == {("e", new), ("f", new)}
        assert parts.keeper.health.current.state is LeaseState.HELD


async def test_a_registration_overtaken_by_its_unregistration_writes_nothing_and_returns_its_record() -> None:
    async with running_parts() as parts:
        gate = parts.store.gate("create")
        results: dict[str, Instance] = {}

        async def register(address: str) -> None:
            results[address] = await parts.registrar.register(E, f"tcp://{address}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(register, "h:1")
            with anyio.fail_after(5):
                await gate.arrived.wait()  # the first holds the endpoint's turn, its write at the gate
            tg.start_soon(register, "h:2")  # waits for its turn
            await anyio.lowlevel.checkpoint()
            tg.start_soon(parts.registrar.unregister, E)  # withdrawn before the second's turn comes
            await anyio.lowlevel.checkpoint()
            parts.store.ungate("create")
        second = results["h:2"]
        assert second.transport is not None
        assert second.transport.address == "h:2", "the call returns the record it was asked for"
        assert await parts.listed() == set(), "nothing is left registered"


async def test_an_entry_withdrawn_during_the_replacement_is_not_written_again() -> None:
    async with running_parts() as parts:
        entry = MetadataEntry("v1/custom", "k", {"v": 1})
        ident = ("entry", entry.bucket, entry.key)
        await parts.registrar.put_bound(ident, lambda _lease: entry)
        gate = parts.store.gate("put")
        updated = MetadataEntry("v1/custom", "k", {"v": 2})
        async with anyio.create_task_group() as tg:
            # An update holds the entry's turn, its write at the gate; meanwhile the lease is lost, the
            # replacement waits for the entry's turn, and the entry is withdrawn.
            tg.start_soon(parts.registrar.put_bound, ident, lambda _lease: updated)
            with anyio.fail_after(5):
                await gate.arrived.wait()
            granted = parts.store.gate("grant", after=True)
            await parts.lose_lease()
            with anyio.fail_after(5):
                await granted.arrived.wait()
            parts.store.ungate("grant", after=True)
            for _ in range(20):  # the keeper takes the new lease; its replacement waits for the entry's turn
                await anyio.lowlevel.checkpoint()
            assert parts.keeper.replacements == 1
            tg.start_soon(parts.registrar.forget_entry, ident, entry.bucket, entry.key)
            await anyio.lowlevel.checkpoint()
            parts.store.ungate("put")
        await replaced(parts)
        assert parts.keeper.failure is None
        assert await parts.backend.list_entries("v1/custom") == []


async def test_the_health_counts_what_is_wanted_and_what_waits_at_every_step() -> None:
    async with running_parts() as parts:
        health = parts.keeper.health

        def counts() -> tuple[int, int]:
            health.registrations(*parts.registrations.counts(parts.keeper.held))
            return health.current.registered, health.current.pending

        await parts.registrar.register(E, "tcp://h:1")
        assert counts() == (1, 0)
        gate = parts.store.gate("create")
        async with anyio.create_task_group() as tg:
            tg.start_soon(parts.registrar.register, F, "tcp://h:2")
            with anyio.fail_after(5):
                await gate.arrived.wait()
            assert counts() == (2, 1), "a write without an answer yet is pending"
            await parts.lose_lease()
            with anyio.fail_after(5):
                while parts.keeper.replacements == 0:  # the grant is not gated: the keeper replaces at once
                    await anyio.lowlevel.checkpoint()
            assert counts() == (2, 2), "under the new lease, nothing is written yet"
            parts.store.ungate("create")
        await replaced(parts)
        assert counts() == (2, 0)
        await parts.registrar.unregister(F)
        assert counts() == (1, 0)
        await parts.registrar.unregister(E)
        assert counts() == (0, 0)


async def test_a_cancelled_update_of_an_entry_wants_the_previous_one_again() -> None:
    async with running_parts() as parts:
        first = MetadataEntry("v1/custom", "k", {"v": 1})
        ident = ("entry", first.bucket, first.key)
        await parts.registrar.put_bound(ident, lambda _lease: first)
        gate = parts.store.gate("put")  # the update's write waits here, not yet applied
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                parts.registrar.put_bound, ident, lambda _lease: MetadataEntry("v1/custom", "k", {"v": 2})
            )
            with anyio.fail_after(5):
                await gate.arrived.wait()
            tg.cancel_scope.cancel()  # the caller gives up: the update is not wanted
        parts.store.ungate("put")
        await parts.lose_lease()
        await replaced(parts)
        (carried,) = await parts.backend.list_entries("v1/custom")
        assert carried.value == {"v": 1}, "the replacement carries the entry as it was before the update"


async def test_a_permanent_refusal_fails_the_keeper_and_tells_its_waiters() -> None:
    store = FaultyStore(MemoryStore())
    backend = KvDiscovery(store)
    keeper = LeaseKeeper(backend, 30.0, LeaseLossPolicy.REREGISTER, HealthRecorder())
    registrar = Registrar(backend, keeper, Registrations())
    lease = await keeper.grant()
    await registrar.register(E, "tcp://h:1")
    store.refuse("grant", AccessDeniedError("the user may not grant leases"))
    await store.expire_lease(lease.id)
    outcome: list[BaseException] = []

    async def register_f() -> None:
        try:
            await registrar.register(F, "tcp://h:2")  # finds the lease gone, waits for another
        except AccessDeniedError as exc:
            outcome.append(exc)

    async def keep() -> None:
        with contextlib.suppress(AccessDeniedError):  # what the runtime's `async with` raises
            await keeper.run(registrar.carry)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(register_f)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            tg.start_soon(keep)
            keeper.renew_now.set()
    assert isinstance(keeper.failure, AccessDeniedError)
    assert keeper.health.current.state is LeaseState.FAILED
    assert "may not grant" in (keeper.health.current.reason or "")
    assert len(outcome) == 1, "the registration waiting for a new lease is told at once"


async def test_leaving_tells_a_registration_waiting_for_a_replacement() -> None:
    store = FaultyStore(MemoryStore())
    backend = KvDiscovery(store)
    keeper = LeaseKeeper(backend, 30.0, LeaseLossPolicy.REREGISTER, HealthRecorder())
    registrar = Registrar(backend, keeper, Registrations())
    old = await keeper.grant()
    await store.expire_lease(old.id)  # no keep-alive loop runs: nothing will replace the lease
    outcome: list[BaseException] = []

    async def register() -> None:
        try:
            await registrar.register(E, "tcp://h:1")
        except RuntimeNotStartedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(register)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert outcome == [], "it waits for another lease"
        with anyio.fail_after(5):
            await keeper.release(0)  # the runtime leaves
    assert len(outcome) == 1, "leaving wakes it, with why"


async def test_a_lease_the_server_says_is_gone_but_still_holds_is_revoked_after_its_replacement() -> None:
    # A server that answers "not found" for a lease it still holds (a member that lost track of it) must not
    # keep it: the replaced lease is revoked, so its keys do not stay beside the new lease's.
    async with running_parts() as parts:
        await parts.registrar.register(E, "tcp://h:1")
        old = parts.keeper.lease.id
        parts.store.refuse("keep_alive", LeaseNotFoundError(f"lease {old:x} not found (a stale member)"))
        parts.keeper.renew_now.set()
        await replaced(parts)
        parts.store.allow("keep_alive")
        new = parts.keeper.lease.id
        with anyio.fail_after(5):
            while old in parts.store.inner.lease_ids:  # type: ignore[attr-defined]
                await anyio.lowlevel.checkpoint()
        assert await parts.listed() == {("e", new)}, "the old lease and its record are gone"


async def test_an_async_lease_change_callback_is_awaited_and_the_health_follows_the_new_lease() -> None:
    async with running_parts() as parts:
        told: list[LeaseChange] = []

        async def on_change(change: LeaseChange) -> None:
            await anyio.lowlevel.checkpoint()
            told.append(change)
            parts.on_change(change)

        parts.keeper.on_change = on_change
        await parts.registrar.register(E, "tcp://h:1")
        gate = parts.store.gate("create")
        old = await parts.lose_lease()
        with anyio.fail_after(5):
            await gate.arrived.wait()  # the replacement carries E: the new lease is held already
        assert parts.keeper.health.current.instance_id == parts.keeper.lease.id != old
        assert parts.keeper.health.current.state is LeaseState.REPLACING
        parts.store.ungate("create")
        await replaced(parts)
        assert [c.old_instance_id for c in told] == [old]
        assert parts.keeper.health.current.state is LeaseState.HELD
