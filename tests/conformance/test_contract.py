"""The discovery contract, written once and run against every backend (see ``tests/harnesses/``).

Every test uses a namespace of its own (the ``ns`` fixture), so backends sharing one server stay isolated.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
from contract_helpers import Runtimes, query, wait_until

from dyndisc import (
    Added,
    DiscoveryEvent,
    Instance,
    InstanceNotFoundError,
    InvalidNameError,
    LeaseChange,
    LeaseLostError,
    NoInstancesError,
    Readiness,
    RecordTooLargeError,
    RegistrationConflictError,
    RemovalReason,
    Removed,
    Resync,
)
from harnesses.base import Harness

#: Seconds within which a change must reach a watcher on a healthy server.
PROMPT = 5.0


async def next_event(events: AsyncIterator[DiscoveryEvent], timeout: float = PROMPT) -> DiscoveryEvent:
    with anyio.fail_after(timeout):
        return await anext(events)


async def test_register_is_seen_by_watchers_started_before_and_after(runtimes: Runtimes, ns: str) -> None:
    worker, frontend = await runtimes.start(), await runtimes.start()
    path = f"{ns}.backend.generate"
    early = await frontend.endpoint(path).client()
    assert early.instances() == []

    registered = await worker.endpoint(path).register("tcp://127.0.0.1:9000", {"model": "llama"})

    assert registered.instance_id == worker.instance_id
    assert await early.wait_for_instances(timeout=PROMPT) == [registered]
    late_runtime = await runtimes.start()
    late = await late_runtime.endpoint(path).client()
    assert late.instances() == [registered], "a watch started after registration must begin with it"
    assert await late_runtime.endpoint(path).list() == [registered]


async def test_watch_starts_with_an_authoritative_resync(runtimes: Runtimes, ns: str) -> None:
    worker = await runtimes.start()
    first = await worker.endpoint(f"{ns}.c.e").register("tcp://h:1")
    backend = runtimes.backend()
    async with backend.watch(query(ns)) as events:
        event = await next_event(events)
    assert event == Resync(instances=(first,))


async def test_register_is_idempotent_and_an_upsert(runtimes: Runtimes, harness: Harness, ns: str) -> None:
    worker = await runtimes.start()
    endpoint = worker.endpoint(f"{ns}.c.e")
    async with runtimes.backend().watch(query(ns)) as events:
        assert await next_event(events) == Resync(instances=())
        one = await endpoint.register("tcp://h:1", {"v": 1})
        assert await next_event(events) == Added(instance=one)
        assert await endpoint.register("tcp://h:1", {"v": 1}) == one
        changed = await endpoint.register("tcp://h:2", {"v": 2})
        # The identical second register produced no event: the next one is the upsert.
        assert await next_event(events) == Added(instance=changed)
    assert await endpoint.list() == [changed]


async def test_unregister_emits_removed(runtimes: Runtimes, ns: str) -> None:
    worker = await runtimes.start()
    endpoint = worker.endpoint(f"{ns}.c.e")
    async with runtimes.backend().watch(query(ns)) as events:
        assert await next_event(events) == Resync(instances=())
        instance = await endpoint.register("tcp://h:1")
        assert await next_event(events) == Added(instance=instance)
        await endpoint.unregister()
        assert await next_event(events) == Removed(
            endpoint=instance.endpoint_id, instance_id=instance.instance_id
        )
    assert await endpoint.list() == []
    await endpoint.unregister()  # unregistering again is a no-op


@pytest.mark.contract("lease_ttl")
async def test_crashed_runtime_disappears_within_ttl(runtimes: Runtimes, harness: Harness, ns: str) -> None:
    frontend = await runtimes.start()
    host = await runtimes.host()
    instance = await host.runtime.endpoint(f"{ns}.c.e").register("tcp://h:1")
    client = await frontend.endpoint(f"{ns}.c.e").client()
    await client.wait_for_instances(timeout=PROMPT)

    crashed_at = time.monotonic()
    await host.crash()
    bound = harness.lease_ttl + harness.expiry_bound
    await wait_until(client._source, lambda: client.instances() == [], bound, f"{instance} to expire")
    assert time.monotonic() - crashed_at <= bound


@pytest.mark.contract("removal_reasons")
@pytest.mark.contract("lease_ttl")
async def test_a_removal_says_whether_it_left_or_expired(
    runtimes: Runtimes, harness: Harness, ns: str
) -> None:
    host = await runtimes.host()
    endpoint = host.runtime.endpoint(f"{ns}.c.e")
    async with runtimes.backend().watch(query(ns)) as events:
        assert await next_event(events) == Resync(instances=())
        instance = await endpoint.register("tcp://h:1")
        assert await next_event(events) == Added(instance=instance)
        await endpoint.unregister()
        left = await next_event(events)
        assert isinstance(left, Removed)
        assert left.reason is RemovalReason.LEFT

        again = await endpoint.register("tcp://h:1")
        assert await next_event(events) == Added(instance=again)
        await host.crash()
        expired = await next_event(events, harness.lease_ttl + harness.expiry_bound)
        assert isinstance(expired, Removed)
        assert expired.key == again.key
        assert expired.reason is RemovalReason.EXPIRED


async def test_a_backend_says_whether_it_can_tell_a_leases_time_left(
    runtimes: Runtimes, harness: Harness
) -> None:
    # What the UI and tools read before they ask lease_time_left (whose None then means the lease is gone).
    reader = await runtimes.start()
    assert reader.backend.tells_lease_time is ("lease_time_left" in harness.supports)


@pytest.mark.contract("lease_time_left")
async def test_a_lease_says_how_long_it_has_left(runtimes: Runtimes, harness: Harness) -> None:
    reader = await runtimes.start()
    host = await runtimes.host(lease_ttl=5)
    instance_id = host.runtime.instance_id
    left = await reader.backend.lease_time_left(instance_id)
    assert left is not None
    assert 0 < left <= 5
    await host.stop()
    assert await reader.backend.lease_time_left(instance_id) is None


async def test_clean_exit_removes_at_once(runtimes: Runtimes, harness: Harness, ns: str) -> None:
    frontend = await runtimes.start()
    host = await runtimes.host(lease_ttl=30)  # a long TTL: only the revoke can make it leave quickly
    await host.runtime.endpoint(f"{ns}.c.e").register("tcp://h:1")
    client = await frontend.endpoint(f"{ns}.c.e").client()
    await client.wait_for_instances(timeout=PROMPT)

    await host.stop()
    await wait_until(client._source, lambda: client.instances() == [], 2.0, "the instance to leave on exit")


async def test_two_runtimes_have_two_ids(runtimes: Runtimes, ns: str) -> None:
    a, b, frontend = await runtimes.start(), await runtimes.start(), await runtimes.start()
    assert a.instance_id != b.instance_id
    ia = await a.endpoint(f"{ns}.c.e").register("tcp://a:1")
    ib = await b.endpoint(f"{ns}.c.e").register("tcp://b:1")
    client = await frontend.endpoint(f"{ns}.c.e").client()
    await client.wait_for(2, timeout=PROMPT)
    assert sorted(client.instance_ids()) == sorted([ia.instance_id, ib.instance_id])


async def test_watch_is_filtered_by_namespace_component_and_endpoint(runtimes: Runtimes, ns: str) -> None:
    worker = await runtimes.start()
    other_ns = ns + "x"  # shares a key prefix with ns: must not leak into ns's watches
    inside = [
        await worker.endpoint(f"{ns}.a.x").register("tcp://h:1"),
        await worker.endpoint(f"{ns}.a.y").register("tcp://h:2"),
        await worker.endpoint(f"{ns}.b.x").register("tcp://h:3"),
    ]
    await worker.endpoint(f"{other_ns}.a.x").register("tcp://h:4")
    watcher = runtimes.backend()
    expected = {
        query(ns): inside,
        query(ns, "a"): inside[:2],
        query(ns, "a", "x"): inside[:1],
        query(ns, "b", "x"): inside[2:],
    }
    for q, want in expected.items():
        async with watcher.watch(q) as events:
            first = await next_event(events)
        assert isinstance(first, Resync)
        assert sorted(first.instances, key=str) == sorted(want, key=str), f"watch of {q}"
        assert sorted(await watcher.list(q), key=str) == sorted(want, key=str), f"list of {q}"


@pytest.mark.contract("break_watches")
async def test_broken_watch_resyncs_with_nothing_stale_or_missing(
    runtimes: Runtimes, harness: Harness, ns: str
) -> None:
    worker, frontend = await runtimes.start(), await runtimes.start()
    a = worker.endpoint(f"{ns}.c.a")
    await a.register("tcp://h:1")
    await worker.endpoint(f"{ns}.c.b").register("tcp://h:2")
    source = await frontend.instance_set(query(ns))
    await wait_until(source, lambda: len(source.instances()) == 2, PROMPT, "both instances")

    # Changes made just before the break may be lost in flight; changes after it happen while broken.
    await a.unregister()
    await harness.break_watches()
    await worker.endpoint(f"{ns}.c.d").register("tcp://h:4")

    truth = await runtimes.backend().list(query(ns))
    assert sorted(i.endpoint for i in truth) == ["b", "d"]
    await wait_until(source, lambda: source.instances() == truth, PROMPT * 2, "the watcher to converge")


@pytest.mark.contract("new_id_on_lease_loss")  # Kubernetes keeps the pod's id: its own test covers it
async def test_lost_lease_is_replaced_and_endpoints_reregistered(
    runtimes: Runtimes, harness: Harness, ns: str
) -> None:
    changes: list[LeaseChange] = []
    told = anyio.Event()

    def on_lease_change(change: LeaseChange) -> None:
        changes.append(change)
        told.set()

    worker = await runtimes.start(on_lease_change=on_lease_change)
    frontend = await runtimes.start()
    old = await worker.endpoint(f"{ns}.c.e").register("tcp://h:1", {"k": "v"})
    client = await frontend.endpoint(f"{ns}.c.e").client()
    await client.wait_for_instances(timeout=PROMPT)

    await harness.kill_lease(worker.lease)

    bound = harness.lease_ttl + PROMPT

    def replaced() -> bool:  # the old id gone and exactly one new one (it may arrive before the removal)
        ids = client.instance_ids()
        return len(ids) == 1 and ids[0] != old.instance_id

    await wait_until(client._source, replaced, bound, "the old id replaced by a new one")
    with anyio.fail_after(PROMPT):  # the callback runs once every endpoint is registered again
        await told.wait()
    assert client.instance_ids() == [worker.instance_id] != [old.instance_id]
    (new,) = client.instances()
    assert (new.transport, new.metadata) == (old.transport, old.metadata)
    assert changes == [LeaseChange(old.instance_id, worker.instance_id, changes[0].reason)]


async def test_shutdown_policy_ends_the_runtime_on_lease_loss(runtimes: Runtimes, harness: Harness) -> None:
    host = await runtimes.host(lease_loss_policy="shutdown")
    await harness.kill_lease(host.runtime.lease)
    with anyio.fail_after(harness.lease_ttl + PROMPT), pytest.raises(LeaseLostError, match="shutdown"):
        await host.wait()


@pytest.mark.parametrize(
    "path",
    ["a.b", "a.b.c.d", ".b.c", "a..c", "a/x.b.c", "ns.comp.\tep", "x" * 129 + ".b.c", "a\x00.b.c"],
)
async def test_invalid_names_are_rejected_before_any_write(runtimes: Runtimes, ns: str, path: str) -> None:
    worker = await runtimes.start()
    with pytest.raises(InvalidNameError, match="invalid"):
        await worker.endpoint(path).register("tcp://h:1")
    with pytest.raises(InvalidNameError):
        worker.namespace(ns).component("bad/name")
    assert worker.registrations == []


async def test_oversized_or_unserialisable_metadata_is_refused(runtimes: Runtimes, ns: str) -> None:
    worker = await runtimes.start()
    endpoint = worker.endpoint(f"{ns}.c.e")
    with pytest.raises(RecordTooLargeError, match="limit"):
        await endpoint.register("tcp://h:1", {"blob": "x" * 100_000})
    with pytest.raises(ValueError, match="JSON"):
        await endpoint.register("tcp://h:1", {"obj": object()})
    # The backend itself refuses before writing anything, whoever calls it.
    big = Instance(
        namespace=ns,
        component="c",
        endpoint="e",
        instance_id=worker.instance_id,
        metadata={"b": "x" * 70_000},
    )
    with pytest.raises(RecordTooLargeError):
        await worker.backend.register(big, worker.lease)
    assert await endpoint.list() == []
    assert worker.registrations == []


@pytest.mark.contract("raw_write")
async def test_garbage_records_are_skipped_and_the_watch_goes_on(
    runtimes: Runtimes, harness: Harness, ns: str
) -> None:
    worker, frontend = await runtimes.start(), await runtimes.start()
    source = await frontend.instance_set(query(ns))
    base = f"{harness.root}/{ns}/c"
    await harness.write_raw(f"{base}/e/abc", b"\xff\x00 not json")
    await harness.write_raw(f"{base}/e/abd", b'{"unexpected": "shape"}')
    await harness.write_raw(f"{base}/e", b'{"namespace": "x"}')  # too few key segments
    await harness.write_raw(f"{base}/e/zz", b"{}")  # the id is not hex
    stray = b'{"namespace":"%s","component":"c","endpoint":"other","instance_id":1}' % ns.encode()
    await harness.write_raw(f"{base}/e/1", stray)  # the record names another endpoint than its key

    good = await worker.endpoint(f"{ns}.c.e").register("tcp://h:1")
    await wait_until(source, lambda: source.instances() == [good], PROMPT, "the good instance only")
    later = await worker.endpoint(f"{ns}.c.f").register("tcp://h:2")
    await wait_until(source, lambda: len(source.instances()) == 2, PROMPT, "the watch to go on")
    assert source.instances() == sorted([good, later], key=lambda i: str(i.endpoint_id))
    assert await frontend.list(query(ns)) == source.instances()


@pytest.mark.contract("conflict")
async def test_a_key_held_by_another_lease_is_a_clear_error(
    runtimes: Runtimes, harness: Harness, ns: str
) -> None:
    first, second = await runtimes.start(), await runtimes.start()
    taken = await first.endpoint(f"{ns}.c.e").register("tcp://h:1")
    with pytest.raises(RegistrationConflictError, match=f"{first.lease.id:x}"):
        await second.backend.register(taken, second.lease)


async def test_client_picks_and_waits(runtimes: Runtimes, ns: str) -> None:
    workers = [await runtimes.start() for _ in range(3)]
    frontend = await runtimes.start()
    client = await frontend.endpoint(f"{ns}.c.e").client()
    with pytest.raises(NoInstancesError):
        client.round_robin()
    with pytest.raises(TimeoutError, match="no instance"):
        await client.wait_for_instances(timeout=0.2)

    for i, worker in enumerate(workers):
        await worker.endpoint(f"{ns}.c.e").register(f"tcp://h:{i}")
    await client.wait_for(3, timeout=PROMPT)
    ids = client.instance_ids()
    assert [client.round_robin().instance_id for _ in range(6)] == ids + ids
    assert client.random().instance_id in ids
    assert client.direct(ids[1]).instance_id == ids[1]
    with pytest.raises(InstanceNotFoundError):
        client.direct(12345)


async def test_draining_instances_are_listed_but_not_picked(runtimes: Runtimes, ns: str) -> None:
    worker, frontend = await runtimes.start(), await runtimes.start()
    client = await frontend.endpoint(f"{ns}.c.e").client()
    endpoint = worker.endpoint(f"{ns}.c.e")
    await endpoint.register("tcp://h:1")
    await client.wait_for_instances(timeout=PROMPT)
    await endpoint.register("tcp://h:1", readiness=Readiness.DRAINING)
    await wait_until(client._source, lambda: client.instances() == [], PROMPT, "the instance to drain")
    assert [i.readiness for i in client.instances(include_draining=True)] == [Readiness.DRAINING]
