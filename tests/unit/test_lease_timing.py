"""The keep-alive's timing, on virtual time (the chaos simulation's event loop): renewals at half the TTL,
retries during an outage about twice a second, and the exit's revoke; exact counts, no waiting."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio

from dyndisc import KvDiscovery, LeaseLossPolicy, LeaseState, MemoryStore
from dyndisc._retry import seed_jitter
from dyndisc.runtime.health import HealthRecorder
from dyndisc.runtime.lease_keeper import LeaseKeeper
from dyndisc.runtime.registrar import Registrar
from dyndisc.runtime.registrations import Registrations
from dyndisc.testing import FaultyStore
from dyndisc.testing.chaos.virtual_time import VirtualLoop


def on_virtual_time(body: Callable[[], Awaitable[None]]) -> None:
    seed_jitter(7)
    try:
        anyio.run(body, backend_options={"loop_factory": VirtualLoop})
    finally:
        seed_jitter(None)


class Counted:
    """A keeper over a virtual-clock memory store, counting the store's calls by name."""

    def __init__(self, ttl: float) -> None:
        self.store = FaultyStore(MemoryStore(clock=anyio.current_time, rng=random.Random(1)))
        self.calls: dict[str, int] = {}
        for name in ("grant", "keep_alive", "revoke", "create"):
            self._count(name)
        self.keeper = LeaseKeeper(KvDiscovery(self.store), ttl, LeaseLossPolicy.REREGISTER, HealthRecorder())
        self.registrar = Registrar(self.keeper.backend, self.keeper, Registrations())

    def _count(self, name: str) -> None:
        """Count every call of ``name``, answered or not (the store may be down)."""
        call = getattr(self.store, name)

        async def counted(*args: object) -> object:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await call(*args)

        setattr(self.store, name, counted)


def test_the_lease_is_renewed_at_half_its_ttl() -> None:
    async def body() -> None:
        counted = Counted(ttl=10.0)
        await counted.keeper.grant()
        with anyio.move_on_after(102.0):  # virtual seconds
            await counted.keeper.run(counted.registrar.carry)
        assert counted.calls.get("keep_alive") == 20, counted.calls  # at 5, 10, ..., 100 s

    on_virtual_time(body)


def test_an_outage_is_retried_about_twice_a_second_and_the_same_lease_is_kept() -> None:
    async def body() -> None:
        counted = Counted(ttl=30.0)
        lease = await counted.keeper.grant()
        async with anyio.create_task_group() as tg:
            tg.start_soon(counted.keeper.run, counted.registrar.carry)
            await anyio.sleep(15.0)  # the first renewal is done
            counted.store.take_down()
            before = counted.calls.get("keep_alive", 0)
            await anyio.sleep(10.0)
            during = counted.calls.get("keep_alive", 0) - before
            assert counted.keeper.health.current.state is LeaseState.OUTAGE
            counted.store.bring_back()
            await anyio.sleep(1.0)
            assert counted.keeper.health.current.state is LeaseState.HELD, "renewed within a second"
            assert counted.keeper.lease is lease
            tg.cancel_scope.cancel()
        # Full jitter up to a second: about two attempts a second, and never fewer than one.
        assert 12 <= during <= 40, during

    on_virtual_time(body)


def test_leaving_revokes_the_lease_and_says_so() -> None:
    async def body() -> None:
        counted = Counted(ttl=10.0)
        lease = await counted.keeper.grant()
        await counted.keeper.release(0)
        assert lease.id not in counted.store.inner.lease_ids  # type: ignore[attr-defined]
        health = counted.keeper.health.current
        assert (health.state, health.reason) == (LeaseState.CLOSED, "revoked")

    on_virtual_time(body)


def test_leaving_while_the_server_is_away_says_the_lease_expires_on_its_own() -> None:
    async def body() -> None:
        counted = Counted(ttl=10.0)
        lease = await counted.keeper.grant()
        counted.store.take_down()
        await counted.keeper.release(3)  # retried within its budget, then given up
        assert lease.id in counted.store.inner.lease_ids  # type: ignore[attr-defined]
        health = counted.keeper.health.current
        assert health.state is LeaseState.CLOSED
        assert health.reason is not None
        assert "expires on its own" in health.reason
        assert counted.calls["revoke"] >= 2, "retried"

    on_virtual_time(body)
