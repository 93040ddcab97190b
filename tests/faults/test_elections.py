"""A 3-member etcd cluster under its faults: the leader SIGKILLed, quorum lost past the TTL, and a
registration and a clean exit made during an election. Each scenario states its TTL and its bound.

The cluster runs etcd's default election timing (heartbeat 100 ms, election timeout 1 s), so an election
takes as long as in production: measured 1.0-1.6 s here.
"""

from __future__ import annotations

import time

import anyio
import pytest
from fault_targets import MakeTarget, Target
from faultkit import PROMPT, Watcher, assert_converged, registrations, unique_namespace, watching

from dyndisc import InstanceQuery, LeaseChange
from dyndisc.testing import RuntimeHost
from dyndisc.testing.servers import EtcdCluster

WORKERS, ENDPOINTS, WATCHERS = 10, 10, 10
#: After etcd is back (a new leader, or quorum), every watcher equals the truth within this many seconds.
CONVERGED_AFTER_RECOVERY = 2.0


async def start_fleet(target: Target, ns: str, ttl: float, changes: list[LeaseChange]) -> list[RuntimeHost]:
    """:data:`WORKERS` runtimes with :data:`ENDPOINTS` endpoints each (100 endpoints)."""
    hosts = [await target.start(lease_ttl=ttl, on_lease_change=changes.append) for _ in range(WORKERS)]
    async with anyio.create_task_group() as tg:
        for w, host in enumerate(hosts):
            for e in range(ENDPOINTS):
                tg.start_soon(host.runtime.endpoint(f"{ns}.w{w}.e{e}").register, f"tcp://10.0.{w}.1:{e}")
    return hosts


def quiet_since(watchers: list[Watcher]) -> list[int]:
    """How many events each watcher has had so far (compare later: nothing may have moved)."""
    return [w.events for w in watchers]


async def new_leader_after(cluster: EtcdCluster, started: float) -> float:
    """Seconds from ``started`` until a member leads again."""
    await anyio.to_thread.run_sync(cluster.leader, 15.0)
    return time.monotonic() - started


@pytest.mark.slow
async def test_the_leader_killed_under_100_endpoints_moves_nothing(make_target: MakeTarget) -> None:
    ttl = 6.0  # TTL 6 s; bound: converged within 2 s of the new leader, every id kept
    target = make_target("etcd", cluster=True)
    cluster = target.server
    assert isinstance(cluster, EtcdCluster)
    ns, changes = unique_namespace(), []
    query = InstanceQuery(namespace=ns)
    hosts = await start_fleet(target, ns, ttl, changes)
    ids = {h.runtime.instance_id for h in hosts}
    live = lambda: registrations([h.runtime for h in hosts], query)  # noqa: E731
    async with watching([target.backend() for _ in range(WATCHERS)], query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        before = quiet_since(watchers)
        killed = time.monotonic()
        victim = await anyio.to_thread.run_sync(cluster.kill_leader)
        election = await new_leader_after(cluster, killed)
        recovered = time.monotonic()
        took = await assert_converged(
            watchers, target.fresh, query, bound=CONVERGED_AFTER_RECOVERY, expected=live
        )
        await anyio.sleep(ttl)  # a full TTL later nothing has moved: no lease was lost, no id changed
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        assert quiet_since(watchers) == before, "no watcher saw anything leave or come back"
        assert {h.runtime.instance_id for h in hosts} == ids
        assert changes == []
        await anyio.to_thread.run_sync(cluster.restart, [victim])
    print(
        f"leader killed: new leader after {election:.2f}s; {WATCHERS} watchers x {WORKERS * ENDPOINTS} "
        f"endpoints converged {took:.2f}s after it (bound {CONVERGED_AFTER_RECOVERY}s); 0 ids changed"
    )
    assert recovered - killed < 15


@pytest.mark.slow
async def test_quorum_lost_longer_than_the_ttl_and_restored_leaves_no_phantom(
    make_target: MakeTarget,
) -> None:
    ttl = 3.0  # TTL 3 s, quorum lost 6 s; bound: converged within 2 s of quorum, then nothing moves
    target = make_target("etcd", cluster=True)
    cluster = target.server
    assert isinstance(cluster, EtcdCluster)
    ns, changes = unique_namespace(), []
    query = InstanceQuery(namespace=ns)
    hosts = await start_fleet(target, ns, ttl, changes)
    ids = {h.runtime.instance_id for h in hosts}
    live = lambda: registrations([h.runtime for h in hosts], query)  # noqa: E731
    async with watching([target.backend() for _ in range(WATCHERS)], query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        before = quiet_since(watchers)
        victims = await anyio.to_thread.run_sync(cluster.lose_quorum)
        await anyio.sleep(2 * ttl)  # no quorum for twice the TTL: no lease can be renewed
        restored = time.monotonic()
        await anyio.to_thread.run_sync(cluster.restart, victims)
        quorum = time.monotonic() - restored
        took = await assert_converged(
            watchers, target.fresh, query, bound=CONVERGED_AFTER_RECOVERY, expected=live
        )
        # etcd restores every lease with a fresh TTL at the new leader's election: the same ids, and a
        # TTL and a half later still no phantom and no change.
        await anyio.sleep(1.5 * ttl)
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        assert quiet_since(watchers) == before, "no watcher saw a worker leave or an old id linger"
        assert {h.runtime.instance_id for h in hosts} == ids
        assert changes == [], "no re-registration"
        assert all(h.runtime.health().ready for h in hosts)
    print(
        f"quorum lost {2 * ttl:.0f}s (TTL {ttl}s): back {quorum:.2f}s after the restart; converged "
        f"{took:.2f}s later; 0 phantoms, 0 re-registrations, 0 ids changed"
    )


@pytest.mark.slow
async def test_a_registration_and_a_clean_exit_during_an_election_both_complete(
    make_target: MakeTarget,
) -> None:
    ttl = 10.0  # TTL 10 s; bound: each completes within the election time + 1 s
    target = make_target("etcd", cluster=True)
    cluster = target.server
    assert isinstance(cluster, EtcdCluster)
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    worker, leaving = await target.start(lease_ttl=ttl), await target.start(lease_ttl=ttl)
    await leaving.runtime.endpoint(f"{ns}.c.leaving").register("tcp://h:2")
    timings: dict[str, float] = {}

    async def register() -> None:
        started = time.monotonic()
        await worker.runtime.endpoint(f"{ns}.c.joining").register("tcp://h:1")
        timings["register"] = time.monotonic() - started

    async def leave() -> None:
        started = time.monotonic()
        await leaving.stop()  # revokes the lease
        timings["clean exit"] = time.monotonic() - started

    async with watching([target.backend()], query) as watchers:
        killed = time.monotonic()
        await anyio.to_thread.run_sync(cluster.kill_leader)
        async with anyio.create_task_group() as tg:
            tg.start_soon(register)
            tg.start_soon(leave)
            election = await new_leader_after(cluster, killed)
        # The exit's revoke reached etcd (nothing left to expire), and the registration is there.
        await assert_converged(
            watchers,
            target.fresh,
            query,
            bound=CONVERGED_AFTER_RECOVERY,
            expected=lambda: registrations([worker.runtime], query),
        )
    assert [i.endpoint for i in watchers[0].instances.values()] == ["joining"]
    for what, took in timings.items():
        assert took <= election + 1.0, f"{what} took {took:.2f}s; the election {election:.2f}s"
    print(
        f"during an election of {election:.2f}s: register() took {timings['register']:.2f}s, "
        f"a clean exit {timings['clean exit']:.2f}s (bound: election + 1 s)"
    )
