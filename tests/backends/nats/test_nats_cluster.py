"""The NATS backend on a cluster of three nats-servers: one bucket with a copy on each
(``NATS_KV_REPLICAS=3``), every runtime given the three servers (``NATS_SERVER``).

A server SIGKILLed (the one the clients are on; the bucket's stream leader; the JetStream meta leader) or
partitioned from the others: nothing registered is lost, nothing gone comes back, every watch goes on and
converges to what the workers hold, and a lease is kept, or replaced with its cause told to the runtime's
``on_lease_change``. Each test has a cluster of its own (three processes, up in a fraction of a second).
"""

from __future__ import annotations

import time
import uuid

import anyio
import pytest
from cluster_helpers import Fleet, Follower, Member, following, keys_of, register_all
from nats_helpers import MakeStore

from dyndisc import ConfigurationError
from dyndisc.testing.servers import NatsCluster, NatsClusterServer, NatsServer

ENDPOINTS = 20
#: Seconds a registration is tried again while a leader is elected (nats-server: 4-9 s) or a client moves.
ELECTION = 30.0


def stream(fleet: Fleet) -> str:
    return f"KV_{fleet.bucket}"


def kept_or_replaced(member: Member, lease: int, followers: list[Follower], since: float) -> None:
    """The lease was kept (no watcher ever showed its instances leave), or replaced with a cause."""
    if member.runtime.instance_id == lease:
        assert member.changes == []
        for follower in followers:
            assert follower.removals_of(lease, since) == [], "an instance of a kept lease left a watcher"
        return
    # Replaced: the server ended the lease (its TTL ran out while no server could renew it), and said so.
    (change,) = member.changes
    assert change.old_instance_id == lease
    assert change.new_instance_id == member.runtime.instance_id
    assert change.reason


async def kill(server: NatsClusterServer) -> float:
    await anyio.to_thread.run_sync(server.kill)
    return time.monotonic()


async def test_a_server_killed_under_its_clients_loses_nothing_and_keeps_the_lease(fleet: Fleet) -> None:
    cluster = fleet.cluster
    first = await fleet.member()  # creates the bucket
    leader = cluster.stream_leader(stream(fleet))
    # Not the leader: this is the fault of one server and its clients (the next test kills the leader).
    victim = next(s for s in cluster.servers if s is not leader)
    worker = await fleet.member(on=victim)
    watcher_here, watcher_there = await fleet.member(on=victim), await fleet.member(on=leader)
    async with (
        anyio.create_task_group() as tg,
        following(tg, watcher_here, fleet.namespace) as here,
        following(tg, watcher_there, fleet.namespace) as there,
    ):
        keys = await register_all(worker, fleet.namespace, ENDPOINTS)
        keys |= await register_all(first, fleet.namespace, 2, tag="other")
        for follower in (here, there):
            await follower.until(keys)
        lease = worker.runtime.instance_id
        killed_at = await kill(victim)

        # The worker's connection moves to another server, and its next registration goes through.
        keys |= await register_all(worker, fleet.namespace, 1, tag="after")
        assert worker.server(cluster) not in (None, victim)
        for follower in (here, there):
            await follower.until(keys)
        assert watcher_here.server(cluster) not in (None, victim)
        kept_or_replaced(worker, lease, [here, there], killed_at)
        assert worker.runtime.instance_id == lease  # the stream never lost its leader: nothing expired
        tg.cancel_scope.cancel()
    await anyio.to_thread.run_sync(cluster.restart)


async def test_the_stream_leader_killed_under_its_clients(fleet: Fleet) -> None:
    cluster = fleet.cluster
    first = await fleet.member()
    leader = cluster.stream_leader(stream(fleet))
    worker = await fleet.member(on=leader)
    watcher_here = await fleet.member(on=leader)
    watcher_there = await fleet.member(on=next(s for s in cluster.servers if s is not leader))
    async with (
        anyio.create_task_group() as tg,
        following(tg, watcher_here, fleet.namespace) as here,
        following(tg, watcher_there, fleet.namespace) as there,
    ):
        keys = await register_all(worker, fleet.namespace, ENDPOINTS)
        others = await register_all(first, fleet.namespace, 2, tag="other")
        for follower in (here, there):
            await follower.until(keys | others)
        lease = worker.runtime.instance_id
        killed_at = await kill(leader)

        # Writes fail until the election ends (nats-server: 4-9 s), then go through.
        after = await register_all(worker, fleet.namespace, 1, tag="after", patience=ELECTION)
        assert cluster.stream_leader(stream(fleet)) is not leader
        expected = keys_of(worker, keys | after) | keys_of(first, others)
        for follower in (here, there):
            await follower.until(expected)
        kept_or_replaced(worker, lease, [here, there], killed_at)
        kept_or_replaced(first, next(iter(others))[1], [here, there], killed_at)
        tg.cancel_scope.cancel()
    await anyio.to_thread.run_sync(cluster.restart)


async def test_the_meta_leader_killed_new_watches_start_after_its_election(fleet: Fleet) -> None:
    cluster = fleet.cluster
    worker = await fleet.member()
    watcher = await fleet.member()
    async with anyio.create_task_group() as tg, following(tg, watcher, fleet.namespace) as old:
        keys = await register_all(worker, fleet.namespace, ENDPOINTS)
        await old.until(keys)
        lease = worker.runtime.instance_id
        meta = cluster.meta_leader()
        killed_at = await kill(meta)

        keys |= await register_all(worker, fleet.namespace, 1, tag="after", patience=ELECTION)
        expected = keys_of(worker, keys)
        await old.until(expected)
        # A watch needs consumers, which only a meta leader places: one started during the election
        # fails (BackendUnavailableError), one started after it works.
        elected = await anyio.to_thread.run_sync(lambda: cluster.meta_leader(timeout=ELECTION))
        assert elected is not meta
        await anyio.to_thread.run_sync(cluster.wait_healthy)
        late = await fleet.member()
        async with following(tg, late, fleet.namespace) as new:
            await new.until(expected)
        kept_or_replaced(worker, lease, [old], killed_at)
        tg.cancel_scope.cancel()
    await anyio.to_thread.run_sync(cluster.restart)


@pytest.mark.parametrize("silent", [False, True], ids=["reset", "silent"])
async def test_a_server_partitioned_its_clients_move_and_nothing_is_lost(fleet: Fleet, silent: bool) -> None:
    cluster = fleet.cluster
    first = await fleet.member()
    leader = cluster.stream_leader(stream(fleet))
    # A server that leads nothing, so that its clients' leases outlive the move (see the NATS page for the
    # old meta leader's side of a partition, which its clients leave after 12-20 s).
    meta = cluster.meta_leader()
    victim = next((s for s in cluster.servers if s not in (leader, meta)), None)
    if victim is None:
        pytest.skip("one server leads both the stream and the meta group: no server leads nothing")
    worker = await fleet.member(on=victim)
    watcher_here = await fleet.member(on=victim)
    watcher_there = await fleet.member(on=leader)
    async with (
        anyio.create_task_group() as tg,
        following(tg, watcher_here, fleet.namespace) as here,
        following(tg, watcher_there, fleet.namespace) as there,
    ):
        keys = await register_all(worker, fleet.namespace, ENDPOINTS)
        keys |= await register_all(first, fleet.namespace, 2, tag="other")
        for follower in (here, there):
            await follower.until(keys)
        lease = worker.runtime.instance_id
        cut_at = time.monotonic()
        await anyio.to_thread.run_sync(lambda: cluster.partition(victim, silent=silent))

        # The cut-off server keeps its clients' connections open: they leave it on their own.
        keys |= await register_all(first, fleet.namespace, 1, tag="during", patience=ELECTION)
        for follower in (here, there):
            await follower.until(keys)
        assert watcher_here.server(cluster) not in (None, victim)
        keys |= await register_all(worker, fleet.namespace, 1, tag="after", patience=ELECTION)
        for follower in (here, there):
            await follower.until(keys)
        assert worker.server(cluster) not in (None, victim)
        kept_or_replaced(worker, lease, [here, there], cut_at)
        assert worker.runtime.instance_id == lease  # moved within its TTL
        assert worker.store.connection.probe.moves >= 1

        await anyio.to_thread.run_sync(cluster.heal)
        await anyio.to_thread.run_sync(cluster.wait_healthy)
        # Back in the cluster, the server serves what the others wrote meanwhile (once the elections its
        # return may cause are over: it campaigned while cut off, so it comes back with a higher term).
        late = await fleet.member(on=victim, patience=ELECTION)
        async with following(tg, late, fleet.namespace) as new:
            await new.until(keys)
        tg.cancel_scope.cancel()


async def test_every_server_holds_a_current_copy_of_the_bucket(fleet: Fleet) -> None:
    worker = await fleet.member()
    await register_all(worker, fleet.namespace, 1)
    every = dict.fromkeys((s.name for s in fleet.cluster.servers), True)

    def all_current() -> bool:
        return fleet.cluster.stream_replicas(stream(fleet)) == every

    # A follower may be a write behind for a moment: current means caught up with the leader.
    with anyio.fail_after(10):
        while not await anyio.to_thread.run_sync(all_current):  # noqa: ASYNC110 - no event for it
            await anyio.sleep(0.1)


async def test_a_bucket_of_another_replica_count_is_refused_when_the_setting_asks(
    nats_cluster: NatsCluster, make_store: MakeStore
) -> None:
    bucket = f"cl_{uuid.uuid4().hex[:10]}"
    one = make_store(nats_cluster.servers_setting, kv_bucket=bucket, kv_replicas=1)
    await one.grant(5)
    three = make_store(nats_cluster.servers_setting, kv_bucket=bucket, kv_replicas=3)
    with pytest.raises(ConfigurationError) as refused:
        await three.grant(5)
    assert "has 1 replica(s), but NATS_KV_REPLICAS=3" in str(refused.value)
    assert f"nats stream edit KV_{bucket} --replicas 3" in str(refused.value)
    # Unset, the bucket is used as it is.
    await make_store(nats_cluster.servers_setting, kv_bucket=bucket).grant(5)


async def test_replicas_on_a_lone_server_are_refused_naming_the_setting(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    store = make_store(dyndisc_nats_server.url, kv_bucket=f"r3_{uuid.uuid4().hex[:10]}", kv_replicas=3)
    with pytest.raises(ConfigurationError) as refused:
        await store.grant(5)
    assert "with 3 replica(s) (NATS_KV_REPLICAS=3)" in str(refused.value)
