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
            await anyio.sleep(15.0)  # renewed once
            parts.store.take_down()
            await anyio.sleep(20.0)  # a long outage: the backoff reaches its cap (a second)
            parts.store.bring_back()
            await anyio.sleep(2.0)  # renewed again (within a second)
            assert parts.keeper.health.current.state is LeaseState.HELD
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


# -- the registrar -------------------------------------------------------------------------------------------
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


async def test_a_bad_entry_is_refused_before_the_store_is_asked() -> None:
    parts = Parts()
    await parts.keeper.grant()
    parts.store.take_down()  # were the store asked, this would be an outage instead
    too_large = MetadataEntry("v1/custom", "k", {"blob": "x" * 300_000})
    with pytest.raises(RecordTooLargeError):
        await parts.registrar.put_bound(("entry", "v1/custom", "k"), lambda _lease: too_large)
    assert parts.calls.get("put", 0) == 0
