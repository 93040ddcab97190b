"""Only the server decides that a lease is lost; registrations are never lost; permanent errors stop the
runtime; the health a probe reads. On the memory store, with faults from ``dyndisc.testing``."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import anyio
import pytest

from dyndisc import (
    AccessDeniedError,
    Added,
    DiscoveryEvent,
    DistributedRuntime,
    Instance,
    InstanceQuery,
    KvDiscovery,
    Lease,
    LeaseChange,
    LeaseState,
    MemoryStore,
    RuntimeHealth,
)
from dyndisc.testing import FaultyStore, RuntimeHost

MakeRuntime = Callable[..., Awaitable[DistributedRuntime]]


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` (health has no change notification) until it holds; fail after ``timeout``."""
    with anyio.move_on_after(timeout):
        while not condition():  # noqa: ASYNC110 - health is a plain value
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def state(runtime: DistributedRuntime) -> LeaseState:
    return runtime.health().state


async def test_an_outage_shorter_than_the_ttl_keeps_the_lease_and_is_reported(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    changes: list[LeaseChange] = []
    runtime = await dyndisc_make_runtime(lease_ttl=2.0, on_lease_change=changes.append)  # TTL 2 s
    first = runtime.instance_id
    await runtime.endpoint("ns.c.e").register("tcp://h:1")
    client = await runtime.endpoint("ns.c.e").client()
    dyndisc_store.take_down()
    await until(lambda: state(runtime) is LeaseState.OUTAGE, "the outage to be reported")
    health = runtime.health()
    assert health.stale_since is not None
    assert "down" in (health.reason or "")
    assert health.live
    assert not health.ready
    assert client.stale_since is not None, "a client says its view may be stale while the store is down"
    dyndisc_store.bring_back()
    await until(lambda: state(runtime) is LeaseState.HELD, "the lease to be renewed again")
    assert runtime.instance_id == first, "the same lease: no new id"
    assert changes == []
    assert runtime.health().ready
    assert client.stale_since is None
    assert [i.instance_id for i in await runtime.endpoint("ns.c.e").list()] == [first]


async def test_an_outage_longer_than_the_ttl_is_not_a_loss_until_the_server_says_so(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    replaced = anyio.Event()
    changes: list[LeaseChange] = []

    def on_change(change: LeaseChange) -> None:
        changes.append(change)
        replaced.set()

    runtime = await dyndisc_make_runtime(lease_ttl=0.5, on_lease_change=on_change)  # TTL 0.5 s
    first = runtime.instance_id
    await runtime.endpoint("ns.c.e").register("tcp://h:1")
    await runtime.endpoint("ns.c.f").register("tcp://h:2")
    dyndisc_store.take_down()
    await anyio.sleep(1.5)  # three TTLs: the memory store expires the lease on its own clock meanwhile
    assert runtime.instance_id == first, "no lease decided lost on the runtime's own clock"
    assert changes == []
    assert state(runtime) is LeaseState.OUTAGE
    assert first not in dyndisc_store.inner.lease_ids, "the server let the lease go"
    dyndisc_store.bring_back()
    with anyio.fail_after(5):
        await replaced.wait()
    assert changes[0].old_instance_id == first
    new = runtime.instance_id
    assert new != first
    listed = await runtime.list()
    assert sorted(i.endpoint for i in listed) == ["e", "f"]
    assert {i.instance_id for i in listed} == {new}, "every endpoint under the new lease, no old id left"
    await until(lambda: runtime.health().ready, "the runtime to be ready again")


async def test_a_registration_racing_a_lease_replacement_completes_under_the_new_lease(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    runtime = await dyndisc_make_runtime(lease_ttl=30.0)  # a long TTL: only the expiry below ends the lease
    first = runtime.instance_id
    await runtime.endpoint("ns.c.before").register("tcp://h:1")
    await dyndisc_store.expire_lease(first)  # the server forgets the lease; the runtime does not know yet
    with anyio.fail_after(5):
        racing = await runtime.endpoint("ns.c.racing").register("tcp://h:2")
    assert racing.instance_id == runtime.instance_id != first
    listed = await runtime.list()
    assert {(i.endpoint, i.instance_id) for i in listed} == {
        ("before", runtime.instance_id),
        ("racing", runtime.instance_id),
    }
    assert runtime.health().pending == 0


async def test_an_unregistration_during_a_replacement_is_not_undone(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    runtime = await dyndisc_make_runtime(lease_ttl=30.0)
    await runtime.endpoint("ns.c.kept").register("tcp://h:1")
    await runtime.endpoint("ns.c.gone").register("tcp://h:2")
    await runtime.endpoint("ns.c.gone").unregister()
    await dyndisc_store.expire_lease(runtime.instance_id)
    with anyio.fail_after(5):
        await runtime.endpoint("ns.c.trigger").register("tcp://h:3")  # meets the lost lease
    assert sorted(i.endpoint for i in await runtime.list()) == ["kept", "trigger"]


class Refusing(KvDiscovery):
    """A backend whose keep-alives the server refuses (as after a password change), or that has a bug."""

    def __init__(self, store: MemoryStore, error: Exception) -> None:
        super().__init__(store, owns_store=False)
        self.error: Exception | None = None
        self.armed = error
        self.keep_alives = 0

    async def keep_alive(self, lease: Lease) -> float:
        self.keep_alives += 1
        if self.error is not None:
            raise self.error
        return await super().keep_alive(lease)


@pytest.mark.parametrize(
    "error",
    [AccessDeniedError("etcd refused the password for user 'svc'"), TypeError("a bug in a backend")],
    ids=["refused", "bug"],
)
async def test_a_permanent_error_stops_the_runtime_at_once(error: Exception) -> None:
    backend = Refusing(MemoryStore(), error)
    host = await RuntimeHost.start(DistributedRuntime(backend, lease_ttl=0.4))
    await host.runtime.endpoint("ns.c.e").register("tcp://h:1")
    backend.error = backend.armed
    with anyio.fail_after(5), pytest.raises(type(error), match=str(error)):
        await host.wait()  # what ``async with`` raises
    assert backend.keep_alives <= 3, "not retried: one refusal is final"
    health = host.runtime.health()
    assert health.state in (LeaseState.FAILED, LeaseState.CLOSED)
    assert not health.live
    with pytest.raises(type(error)):
        await host.runtime.endpoint("ns.c.f").register("tcp://h:2")


async def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    """A plain HTTP GET, as a kubelet's probe makes it."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        data = b""
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_the_probe_endpoint_answers_live_and_ready_from_the_lease(dyndisc_store: FaultyStore) -> None:
    async with DistributedRuntime(dyndisc_store, lease_ttl=1.0, health_port=0) as runtime:
        port = runtime.health_port
        assert port
        await runtime.endpoint("ns.c.e").register("tcp://h:1")
        assert (await get(port, "/live"))[0] == 200
        status, body = await get(port, "/ready")
        assert status == 200
        assert body["state"] == "held"
        assert body["instance_id"] == f"{runtime.instance_id:x}"
        assert body["registered"] == 1
        dyndisc_store.take_down()
        await until(lambda: state(runtime) is LeaseState.OUTAGE, "the outage")
        status, body = await get(port, "/ready")
        assert (status, body["state"]) == (503, "outage"), "out of service, not restarted"
        assert (await get(port, "/live"))[0] == 200
        assert (await get(port, "/nothing"))[0] == 404
        dyndisc_store.bring_back()
        await until(lambda: runtime.health().ready, "ready again")
        assert (await get(port, "/ready"))[0] == 200


def test_health_says_what_a_probe_needs() -> None:
    held = RuntimeHealth(LeaseState.HELD, instance_id=0x1F, ttl=10.0, registered=2)
    assert held.live
    assert held.ready
    assert held.to_dict()["instance_id"] == "1f"
    assert not RuntimeHealth(LeaseState.HELD, registered=2, pending=1).ready
    assert RuntimeHealth(LeaseState.OUTAGE).live
    assert not RuntimeHealth(LeaseState.OUTAGE).ready
    assert not RuntimeHealth(LeaseState.FAILED).live


async def test_a_bad_record_is_refused_before_anything_is_recorded(dyndisc_make_runtime: MakeRuntime) -> None:
    runtime = await dyndisc_make_runtime()
    with pytest.raises(ValueError, match="kind://address"):
        await runtime.endpoint("ns.c.e").register("no-scheme")
    assert runtime.health().registered == 0
    assert await runtime.list() == []
    assert isinstance(await runtime.endpoint("ns.c.e").register("tcp://h:1"), Instance)


class GatedGrants(KvDiscovery):
    """Every lease grant after the first waits for ``gate``: a replacement that is slow to be granted."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, owns_store=False)
        self.gate = anyio.Event()
        self.replacing = anyio.Event()
        self.grants = 0

    async def grant_lease(self, ttl: float) -> Lease:
        self.grants += 1
        if self.grants > 1:
            self.replacing.set()
            await self.gate.wait()
        return await super().grant_lease(ttl)


async def test_an_endpoint_unregistered_during_a_lease_replacement_does_not_come_back() -> None:
    # Found by chaos seed 1004 on an etcd cluster: the replacement registered it again under the new lease
    # (watchers saw it come back) before the waiting unregister removed it.
    store = MemoryStore()
    backend = GatedGrants(store)
    seen: list[DiscoveryEvent] = []
    async with (
        DistributedRuntime(backend, lease_ttl=0.5) as runtime,
        KvDiscovery(store, owns_store=False).watch(InstanceQuery("ns")) as events,
        anyio.create_task_group() as tg,
    ):

        async def record() -> None:
            async for event in events:
                seen.append(event)

        tg.start_soon(record)
        endpoint = runtime.endpoint("ns.c.e")
        await endpoint.register("tcp://h:1")
        first = runtime.instance_id
        await store.revoke(first)  # lost behind its back: the runtime replaces the lease
        with anyio.fail_after(5):
            await backend.replacing.wait()
        async with anyio.create_task_group() as calls:
            calls.start_soon(endpoint.unregister)  # waits for the replacement, which holds the lease lock
            await anyio.wait_all_tasks_blocked()
            backend.gate.set()
        with anyio.fail_after(5):
            while runtime.instance_id == first:  # noqa: ASYNC110 - the runtime says when it has a new lease
                await anyio.sleep(0.01)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    added = [e.instance.instance_id for e in seen if isinstance(e, Added)]
    assert added == [first], "the unregistered endpoint was registered again under the new lease"
