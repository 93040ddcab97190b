"""What the memory backend tells about itself (``dyndisc doctor``'s verdict, what it can say of a lease), and
what a key-value backend does with the store it is given."""

from __future__ import annotations

from dyndisc import KvDiscovery, MemoryStore
from dyndisc.backends.diagnosis import Status
from dyndisc.cli.doctor import run_doctor


async def test_the_doctor_finds_the_memory_backend_healthy_and_its_leases_on_one_clock() -> None:
    report = await run_doctor(KvDiscovery(MemoryStore()), ttl=1.0, timeout=5.0)
    assert report.ok, report.render()
    clock = report.find("clock")
    assert clock is not None, report.render()
    assert (clock.status, clock.detail) == (Status.OK, "in-process leases: one clock")


async def test_the_memory_backend_can_tell_a_leases_time_left() -> None:
    async with KvDiscovery(MemoryStore()) as backend:
        assert backend.tells_lease_time
        lease = await backend.grant_lease(5.0)
        left = await backend.lease_time_left(lease.id)
        assert left is not None
        assert 0 < left <= 5.0


class CountingCloses(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def test_a_backend_closes_the_store_it_owns_and_leaves_a_shared_one_open() -> None:
    owned, shared = CountingCloses(), CountingCloses()
    async with KvDiscovery(owned), KvDiscovery(shared, owns_store=False):
        pass
    assert (owned.closed, shared.closed) == (1, 0)
