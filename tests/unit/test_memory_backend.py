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


async def test_a_lease_past_its_deadline_is_gone_before_its_expiry_task_runs() -> None:
    """Every call looks at the clock first, as a server would: a lease whose TTL ran out is refused even if
    the store's expiry task (not started here) has not dropped it yet."""
    import pytest

    from dyndisc import LeaseNotFoundError

    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    lease = await store.grant(1.0)
    await store.put("k", b"v", lease.id)
    now[0] = 1.5
    with pytest.raises(LeaseNotFoundError):
        await store.put("k2", b"v", lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.keep_alive(lease.id)
    assert await store.get_prefix("") == {}


async def test_a_listing_shows_nothing_of_a_lease_past_its_deadline() -> None:
    """A listing looks at the clock first too: records of a lease whose TTL ran out are gone from it even if
    nothing else has touched the store since."""
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    lease = await store.grant(1.0)
    await store.put("k", b"v", lease.id)
    assert await store.get_prefix("") == {"k": b"v"}
    now[0] = 1.5
    assert await store.get_prefix("") == {}


async def test_every_store_call_is_a_point_where_its_caller_can_be_cancelled() -> None:
    """As a call to a real server is: a caller cancelled before it gets there does not get its way."""
    import anyio

    store = MemoryStore()
    lease = await store.grant(30)
    calls = {
        "grant": lambda: store.grant(5),
        "keep_alive": lambda: store.keep_alive(lease.id),
        "revoke": lambda: store.revoke(lease.id),
        "create": lambda: store.create("k", b"v", lease.id),
        "put": lambda: store.put("k", b"v", lease.id),
        "delete": lambda: store.delete("k"),
    }
    for name, call in calls.items():
        with anyio.CancelScope() as scope:
            scope.cancel()
            await call()
            raise AssertionError(f"{name} ran to its end in a cancelled scope")
    assert await store.get_prefix("") == {}
    assert await store.time_to_live(lease.id) is not None, "the revoke did not happen"
