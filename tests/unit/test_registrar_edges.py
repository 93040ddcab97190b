"""The registrar's edges that the mutants of ``tools/mutate.py`` showed unchecked: what it keeps known of a
lease-bound entry whose write (or whose unbound replacement) is refused, what a replacement lease drops
for good and what it forgets of the lost one, seen in the store, the metrics and the calls it makes."""

from __future__ import annotations

import anyio
import prometheus_client
import pytest

from dyndisc import (
    AccessDeniedError,
    BackendUnavailableError,
    DistributedRuntime,
    EndpointId,
    KvDiscovery,
    Lease,
    LeaseLossPolicy,
    MemoryStore,
    MetadataEntry,
    RecordTooLargeError,
)
from dyndisc.runtime.health import HealthRecorder
from dyndisc.runtime.lease_keeper import LeaseChange, LeaseKeeper
from dyndisc.runtime.metadata import Metadata
from dyndisc.runtime.registrar import Registrar
from dyndisc.runtime.registrations import Registrations
from dyndisc.testing import FaultyStore

E = EndpointId("ns", "c", "e")
F = EndpointId("ns", "c", "f")
IDENT = ("entry", "v1/custom", "k")  # how the metadata store knows the entry v1/custom/k


def entry(version: int) -> MetadataEntry:
    return MetadataEntry("v1/custom", "k", {"v": version})


class RefusesEntryWrites(KvDiscovery):
    """Refuses the next :attr:`refusals` entry writes (as a server does once the credentials' scope no longer
    covers them), each held until :attr:`go` is set; says when it grants a lease."""

    def __init__(self, store: FaultyStore) -> None:
        super().__init__(store)
        self.refusals = 0
        self.held = anyio.Event()
        self.go = anyio.Event()
        self.granted = anyio.Event()

    async def grant_lease(self, ttl: float) -> Lease:
        lease = await super().grant_lease(ttl)
        self.granted.set()
        return lease

    async def put_entry(self, entry: MetadataEntry, lease: Lease | None) -> None:
        if self.refusals:
            self.refusals -= 1
            self.held.set()
            await self.go.wait()
            raise AccessDeniedError("refused writing the entry (a fault injected by the test)")
        await super().put_entry(entry, lease)


class Parts:
    """A keeper, a registrar and the metadata store over a faulty memory store, with the lease changes the
    keeper announces (each once its replacement carried everything)."""

    def __init__(self, backend: KvDiscovery | None = None) -> None:
        self.backend = backend or KvDiscovery(FaultyStore(MemoryStore()))
        assert isinstance(self.backend.store, FaultyStore)
        self.store = self.backend.store
        self._announce, self.changes = anyio.create_memory_object_stream[LeaseChange](10)
        self.keeper = LeaseKeeper(
            self.backend, 10.0, LeaseLossPolicy.REREGISTER, HealthRecorder(), self._announce.send_nowait
        )
        self.registrations = Registrations()
        self.registrar = Registrar(self.backend, self.keeper, self.registrations)
        self.metadata = Metadata(self.backend, self.keeper, self.registrar)

    async def lose_lease(self) -> LeaseChange:
        """Expire the lease on the server and have the keeper (running) find out, replace it and carry."""
        await self.store.expire_lease(self.keeper.lease.id)
        self.keeper.renew_now.set()
        with anyio.fail_after(5):
            return await self.changes.receive()

    async def values(self) -> list[object]:
        return [e.value for e in await self.backend.list_entries("v1/custom")]


def registered(registry: prometheus_client.CollectorRegistry) -> float | None:
    return registry.get_sample_value("dyndisc_registered_endpoints", {"backend": "memory"})


async def test_an_unbound_entry_too_large_to_write_leaves_the_bound_one_to_the_lease() -> None:
    parts = Parts()
    await parts.keeper.grant()
    await parts.metadata.put_entry(entry(1), bound=True)
    too_large = MetadataEntry("v1/custom", "k", {"blob": "x" * 300_000})
    with pytest.raises(RecordTooLargeError):  # the caller's error: refused before anything changes
        await parts.metadata.put_entry(too_large, bound=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(parts.keeper.run, parts.registrar.carry)
        await parts.lose_lease()
        tg.cancel_scope.cancel()
    assert await parts.values() == [{"v": 1}], "still bound, so carried to the new lease"


async def test_an_update_refused_while_a_replacement_waits_to_carry_the_entry_is_carried_as_before() -> None:
    """An update refused under the new lease wrote nothing there: the replacement, whose write of the entry
    waited for the update's turn to end, must not take it for written under the new lease and skip it."""
    backend = RefusesEntryWrites(FaultyStore(MemoryStore()))
    parts = Parts(backend)
    first = await parts.keeper.grant()
    await parts.metadata.put_entry(entry(1), bound=True)
    refused: list[int] = []

    async def put(version: int) -> None:
        try:
            await parts.metadata.put_entry(entry(version), bound=True)
        except AccessDeniedError:
            refused.append(version)

    backend.refusals = 2
    async with anyio.create_task_group() as tg:
        tg.start_soon(put, 1)  # version 1 again: held under the first lease, then refused
        with anyio.fail_after(5):
            await backend.held.wait()
        tg.start_soon(put, 2)  # waits for its turn, then is refused under the new lease
        await anyio.wait_all_tasks_blocked()
        backend.granted = anyio.Event()  # set by the first grant: wait for the replacement's
        await parts.store.expire_lease(first.id)
        tg.start_soon(parts.keeper.run, parts.registrar.carry)
        parts.keeper.renew_now.set()
        with anyio.fail_after(5):
            await backend.granted.wait()
        await anyio.wait_all_tasks_blocked()  # the replacement's write of the entry waits for its turn too
        backend.go.set()
        with anyio.fail_after(5):
            await parts.changes.receive()
        tg.cancel_scope.cancel()
    assert refused == [1, 2]
    assert await parts.values() == [{"v": 1}], "version 1, wanted still, is under the new lease"


async def test_an_entry_a_replacement_could_not_carry_is_dropped_for_good() -> None:
    backend = RefusesEntryWrites(FaultyStore(MemoryStore()))
    parts = Parts(backend)
    await parts.keeper.grant()
    await parts.metadata.put_entry(entry(1), bound=True)
    backend.go.set()
    backend.refusals = 1  # the next lease's write of it is refused: dropped (and logged)
    async with anyio.create_task_group() as tg:
        tg.start_soon(parts.keeper.run, parts.registrar.carry)
        await parts.lose_lease()
        assert await parts.values() == []
        await parts.lose_lease()  # the writes are allowed again, but the entry is no longer the lease's
        tg.cancel_scope.cancel()
    assert await parts.values() == [], "a dropped entry does not come back with a later lease"


async def test_a_replacement_forgets_what_the_lost_lease_held_that_nobody_wants(
    registry: prometheus_client.CollectorRegistry,
) -> None:
    parts = Parts()
    await parts.keeper.grant()
    await parts.registrar.register(E, "tcp://h:1")
    await parts.registrar.register(F, "tcp://h:2")
    parts.store.take_down()
    with pytest.raises(BackendUnavailableError):
        await parts.registrar.unregister(E)
    parts.store.bring_back()
    assert registered(registry) == 2, "E is maybe still written: counted until known gone"
    async with anyio.create_task_group() as tg:
        tg.start_soon(parts.keeper.run, parts.registrar.carry)
        await parts.lose_lease()  # E went with the lost lease; F is carried
        tg.cancel_scope.cancel()
    assert registered(registry) == 1
    parts.store.take_down()
    await parts.registrar.unregister(E)  # nothing of it is left to delete: the store is not asked


async def test_an_unregistration_that_ends_after_the_runtime_left_counts_nothing(
    registry: prometheus_client.CollectorRegistry,
) -> None:
    # Found by the mutants of the registrar's leaving: a call in flight as the runtime left counted its
    # registrations again when it ended, after the revoke had removed them (the gauge read 1, not 0).
    store = FaultyStore(MemoryStore())
    async with anyio.create_task_group() as tg:
        async with DistributedRuntime(KvDiscovery(store)) as runtime:
            await runtime.endpoint("ns.c.e").register("tcp://h:1")
            f = runtime.endpoint("ns.c.f")
            await f.register("tcp://h:2")
            gate = store.gate("delete")
            tg.start_soon(f.unregister)  # a task that outlives the runtime's 'async with'
            with anyio.fail_after(5):
                await gate.arrived.wait()
        gate.open()  # the runtime left (lease revoked, gauge back to 0); the delete ends now
    value = registry.get_sample_value("dyndisc_registered_endpoints", {"backend": "memory"})
    assert value == 0, f"{value} endpoints counted after the runtime left"


async def test_an_entry_deleted_or_made_unbound_leaves_nothing_of_itself_in_the_runtime() -> None:
    """A runtime that creates and deletes entries for days (event channels come and go) keeps nothing per
    entry it no longer holds: what it remembers as written goes with the entry, not only at the next lease."""
    parts = Parts()
    await parts.keeper.grant()
    idents = [("entry", "v1/custom", f"k{i}") for i in range(3)]
    for _, bucket, key in idents:
        await parts.metadata.put_entry(MetadataEntry(bucket, key, {"v": 1}), bound=True)
    assert all(parts.registrations.written_entry(i) is not None for i in idents)

    await parts.metadata.delete_entry("v1/custom", "k0")
    await parts.metadata.put_entry(MetadataEntry("v1/custom", "k1", {"v": 2}), bound=False)
    assert parts.registrations.written_entry(idents[0]) is None, "deleted"
    assert parts.registrations.written_entry(idents[1]) is None, "no longer the lease's"
    assert parts.registrations.written_entry(idents[2]) is not None
    assert {e.key: e.value for e in await parts.backend.list_entries("v1/custom")} == {
        "k1": {"v": 2},
        "k2": {"v": 1},
    }
