"""Runtime behaviour beyond the backend contract: keep-alive, lease loss, shared watches, fixtures."""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from dyndisc import (
    AccessDeniedError,
    Added,
    DiscoveryBackend,
    DistributedRuntime,
    Instance,
    InstanceQuery,
    KvDiscovery,
    Lease,
    LeaseChange,
    MemoryStore,
    Resync,
    RuntimeNotStartedError,
)
from dyndisc._instance_set import MAX_SUBSCRIBER_BACKLOG
from dyndisc.testing import FaultyStore, RuntimeHost

MakeRuntime = Callable[..., Awaitable[DistributedRuntime]]


class FlakyKeepAlive(KvDiscovery):
    """A memory backend whose keep-alives fail on demand, as a flaky network would make them."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, owns_store=False)
        self.failures = 0  # fail this many next calls
        self.failing_lease: int | None = None  # fail every call for this lease
        self.calls = 0
        self._called = anyio.Event()

    async def keep_alive(self, lease: Lease) -> float:
        self.calls += 1
        self._called.set()
        self._called = anyio.Event()
        if self.failures > 0 or lease.id == self.failing_lease:
            self.failures = max(self.failures - 1, 0)
            raise ConnectionError("simulated network failure")
        return await super().keep_alive(lease)

    async def wait_calls(self, count: int) -> None:
        while self.calls < count:
            await self._called.wait()


async def test_keep_alive_holds_the_lease_past_its_ttl(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    runtime = await dyndisc_make_runtime(lease_ttl=0.4)
    await anyio.sleep(1.5)  # several TTLs: only renewals can keep the lease
    assert runtime.instance_id in dyndisc_store.inner.lease_ids


async def test_transient_keep_alive_failures_are_retried_in_time(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FlakyKeepAlive(dyndisc_store)
    changes: list[LeaseChange] = []
    runtime = await dyndisc_make_runtime(backend, lease_ttl=1.0, on_lease_change=changes.append)
    first_id = runtime.instance_id
    backend.failures = 3
    with caplog.at_level(logging.WARNING, logger="dyndisc.lease"), anyio.fail_after(5):
        await backend.wait_calls(5)  # three failures, then successful renewals
    assert runtime.instance_id == first_id
    assert changes == []
    assert first_id in dyndisc_store.inner.lease_ids
    messages = [r.message for r in caplog.records]
    assert sum("keep-alive" in m and "no answer" in m for m in messages) == 1, "logged once, not per retry"
    assert sum("keep-alive" in m and "back after" in m for m in messages) == 1, "and its end, with how long"


async def test_keep_alive_failing_past_the_ttl_keeps_trying_until_the_server_answers(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = FlakyKeepAlive(dyndisc_store)
    changes: list[LeaseChange] = []
    replaced = anyio.Event()

    def on_change(change: LeaseChange) -> None:
        changes.append(change)
        replaced.set()

    runtime = await dyndisc_make_runtime(backend, lease_ttl=0.5, on_lease_change=on_change)  # TTL 0.5 s
    first_id = runtime.instance_id
    await runtime.endpoint("ns.c.e").register("tcp://h:1")
    backend.failing_lease = first_id  # no renewal reaches the store: it lets the lease expire
    with anyio.fail_after(5):
        # Keep-alives go on failing (a jittered retry can be quick): wait until the store let it expire.
        while first_id in dyndisc_store.inner.lease_ids:
            await backend.wait_calls(backend.calls + 1)
    assert runtime.instance_id == first_id, "the runtime does not decide on its own clock"
    assert changes == []
    backend.failing_lease = None  # the server answers again: the lease is gone, it says
    with anyio.fail_after(5):
        await replaced.wait()
    assert changes[0].old_instance_id == first_id
    assert runtime.instance_id == changes[0].new_instance_id != first_id
    assert [i.instance_id for i in await runtime.endpoint("ns.c.e").list()] == [runtime.instance_id]


async def test_expired_lease_hook_triggers_reregistration(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    changed = anyio.Event()
    runtime = await dyndisc_make_runtime(lease_ttl=0.6, on_lease_change=lambda change: changed.set())
    old = runtime.instance_id
    await runtime.endpoint("ns.c.e").register("tcp://h:1")
    await dyndisc_store.expire_lease(old)
    with anyio.fail_after(3):
        await changed.wait()
    assert runtime.instance_id != old
    assert [i.instance_id for i in await runtime.endpoint("ns.c.e").list()] == [runtime.instance_id]


async def test_clients_of_one_endpoint_share_one_watch(dyndisc_runtime: DistributedRuntime) -> None:
    first = await dyndisc_runtime.endpoint("ns.c.e").client()
    second = await dyndisc_runtime.endpoint("ns.c.e").client()
    assert first._source is second._source
    assert (await dyndisc_runtime.endpoint("ns.c.other").client())._source is not first._source


class CountingBackend(KvDiscovery):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, owns_store=False)
        self.watches = 0

    def watch(self, query):  # type: ignore[no-untyped-def]
        self.watches += 1
        return super().watch(query)


async def test_concurrent_first_clients_start_one_watch(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = CountingBackend(dyndisc_store)
    runtime = await dyndisc_make_runtime(backend)
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(runtime.endpoint("ns.c.e").client)
    assert backend.watches == 1


class GatedBackend(KvDiscovery):
    """Counts the watches open now; a watch of ``held`` waits for ``gate`` before it is established."""

    def __init__(self, store: MemoryStore, held: InstanceQuery | None = None) -> None:
        super().__init__(store, owns_store=False)
        self.open = 0
        self.held = held
        self.gate = anyio.Event()
        self.none_open = anyio.Event()

    @asynccontextmanager
    async def watch(self, query):  # type: ignore[no-untyped-def]
        if query == self.held:
            await self.gate.wait()
        async with super().watch(query) as events:
            self.open += 1
            try:
                yield events
            finally:
                self.open -= 1
                if not self.open:
                    self.none_open.set()
                    self.none_open = anyio.Event()


async def test_a_slow_watch_does_not_hold_up_the_clients_of_other_endpoints(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = GatedBackend(dyndisc_store, held=InstanceQuery("ns", "c", "slow"))
    runtime = await dyndisc_make_runtime(backend)
    got_slow = anyio.Event()

    async def slow_client() -> None:
        await runtime.endpoint("ns.c.slow").client()
        got_slow.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_client)
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(2):  # the slow watch is still being established meanwhile
            fast = await runtime.endpoint("ns.c.fast").client()
        assert fast.instances() == []
        assert not got_slow.is_set()
        backend.gate.set()
        with anyio.fail_after(2):
            await got_slow.wait()


async def test_a_watch_stops_with_its_last_client_or_watcher(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = GatedBackend(dyndisc_store)
    backend.gate.set()
    worker, runtime = await dyndisc_make_runtime(), await dyndisc_make_runtime(backend)
    first = await runtime.endpoint("ns.c.e").client()
    second = await runtime.endpoint("ns.c.e").client()
    assert backend.open == 1
    first.close()
    first.close()  # closing twice releases once
    assert backend.open == 1
    assert second._source is runtime.parts().watches.get(InstanceQuery("ns", "c", "e"))
    stopped = backend.none_open
    second.close()
    with anyio.fail_after(2):
        await stopped.wait()
    assert len(runtime.parts().watches) == 0

    # A garbage-collected client lets go too, and a later client starts a fresh watch that works.
    await worker.endpoint("ns.c.e").register("tcp://h:1")
    client = await runtime.endpoint("ns.c.e").client()
    assert [i.instance_id for i in client.instances()] == [worker.instance_id]
    stopped = backend.none_open
    del client
    gc.collect()
    with anyio.fail_after(2):
        await stopped.wait()

    async with runtime.endpoint("ns.c.e").watch() as events:
        assert isinstance(await anext(events), Resync)
        assert backend.open == 1
        stopped = backend.none_open
    with anyio.fail_after(2):
        await stopped.wait()
    # instance_set() keeps its set for the runtime's life.
    await runtime.instance_set(InstanceQuery("ns"))
    assert backend.open == 1


async def test_a_slow_subscriber_gets_a_resync_and_stalls_nobody(dyndisc_make_runtime: MakeRuntime) -> None:
    worker, frontend = await dyndisc_make_runtime(), await dyndisc_make_runtime()
    client = await frontend.endpoint("ns.c.e0").client()
    async with frontend.namespace("ns").watch() as slow:
        assert await anext(slow) == Resync(instances=())
        for n in range(MAX_SUBSCRIBER_BACKLOG + 10):  # more changes than the slow one may have queued
            await worker.endpoint(f"ns.c.e{n}").register("tcp://h:1")
        assert len(client.instances()) == 1  # the fast client kept up without waiting for the slow one
        event = await anext(slow)
        assert isinstance(event, Resync), "an overflowing subscriber is switched to a snapshot"
        seen = {i.key for i in event.instances}
        while len(seen) < MAX_SUBSCRIBER_BACKLOG + 10:  # the changes after the snapshot follow as events
            with anyio.fail_after(1):
                added = await anext(slow)
            assert isinstance(added, Added)
            seen.add(added.instance.key)


async def test_using_a_runtime_before_it_starts_is_a_clear_error() -> None:
    runtime = DistributedRuntime(MemoryStore())
    with pytest.raises(RuntimeNotStartedError, match="async with"):
        _ = runtime.instance_id
    with pytest.raises(RuntimeNotStartedError):
        await runtime.endpoint("ns.c.e").register("tcp://h:1")


async def test_a_runtime_can_not_be_entered_twice() -> None:
    async with DistributedRuntime(MemoryStore()) as runtime:
        with pytest.raises(RuntimeError, match="already running"):
            await runtime.__aenter__()


async def test_backend_passed_in_is_not_closed(dyndisc_store: FaultyStore) -> None:
    closed: list[bool] = []

    class Tracking(KvDiscovery):
        async def aclose(self) -> None:
            closed.append(True)

    backend: DiscoveryBackend = Tracking(dyndisc_store)
    async with DistributedRuntime(backend):
        pass
    assert closed == []


async def test_registrations_survive_until_exit_and_leave_on_exit(dyndisc_store: FaultyStore) -> None:
    async with DistributedRuntime(dyndisc_store) as runtime:
        await runtime.endpoint("ns.c.a").register("tcp://h:1")
        await runtime.endpoint("ns.c.b").register("tcp://h:2")
        assert len(await runtime.list()) == 2
        assert {i.endpoint for i in runtime.registrations} == {"a", "b"}
    assert await dyndisc_store.get_prefix("/") == {}


class BarrierRegister(KvDiscovery):
    """Holds every register() until ``width`` of them are in flight at once."""

    def __init__(self, store: MemoryStore, width: int) -> None:
        super().__init__(store, owns_store=False)
        self.width = width
        self.in_flight = 0
        self.all_in = anyio.Event()

    async def register(self, instance: Instance, lease: Lease) -> Instance:
        self.in_flight += 1
        if self.in_flight == self.width:
            self.all_in.set()
        await self.all_in.wait()
        return await super().register(instance, lease)


async def test_registrations_run_concurrently(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = BarrierRegister(dyndisc_store, width=16)
    runtime = await dyndisc_make_runtime(backend)
    with anyio.fail_after(5):  # deadlocks if registrations were serialised
        async with anyio.create_task_group() as tg:
            for n in range(16):
                tg.start_soon(runtime.endpoint(f"ns.c.e{n}").register, "tcp://h:1")
    assert len(await runtime.list()) == 16


class DeniedKeepAlive(KvDiscovery):
    """A backend whose server starts refusing this process (its credentials were revoked)."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, owns_store=False)
        self.refuse = anyio.Event()

    async def keep_alive(self, lease: Lease) -> float:
        if self.refuse.is_set():
            raise AccessDeniedError("the server refused this process's credentials")
        return await super().keep_alive(lease)


async def test_a_client_and_a_watch_whose_runtime_stopped_say_why_instead_of_waiting_for_ever() -> None:
    # A consumer in another task than the runtime (as with a supervisor) must not wait for ever on a view
    # that no longer changes (found by chaos seed 1024 on etcd: a Client waited for ever).
    backend = DeniedKeepAlive(MemoryStore())
    runtime = DistributedRuntime(backend, lease_ttl=0.5)
    host = await RuntimeHost.start(runtime)
    client = await runtime.endpoint("ns.c.e").client()
    async with runtime.watch() as events:
        assert isinstance(await anext(events), Resync)
        backend.refuse.set()
        with anyio.fail_after(5), pytest.raises(RuntimeNotStartedError, match="AccessDeniedError"):
            await client.wait_changed()
        with anyio.fail_after(5), pytest.raises(RuntimeNotStartedError, match="runtime stopped"):
            await anext(events)
    assert client.stale_since is not None
    with pytest.raises(AccessDeniedError):
        await host.stop()


async def test_a_client_of_a_runtime_that_left_cleanly_says_so(dyndisc_store: FaultyStore) -> None:
    runtime = DistributedRuntime(dyndisc_store)
    host = await RuntimeHost.start(runtime)
    client = await runtime.endpoint("ns.c.e").client()
    await host.stop()
    with anyio.fail_after(5), pytest.raises(RuntimeNotStartedError, match="left its 'async with'"):
        await client.wait_for_instances()


async def test_a_subscriber_in_another_task_stops_iterating_when_its_runtime_leaves_cleanly(
    dyndisc_store: FaultyStore,
) -> None:
    runtime = DistributedRuntime(dyndisc_store)
    host = await RuntimeHost.start(runtime)
    seen: list[object] = []
    async with runtime.watch() as events, anyio.create_task_group() as tg:

        async def follow() -> None:
            async for event in events:
                seen.append(event)
            seen.append("ended")

        tg.start_soon(follow)
        await anyio.wait_all_tasks_blocked()
        await host.stop()
    assert isinstance(seen[0], Resync)
    assert seen[-1] == "ended"
