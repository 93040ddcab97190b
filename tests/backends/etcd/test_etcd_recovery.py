"""The etcd backend through server restarts, partitions, compaction and late starts (real etcd servers)."""

from __future__ import annotations

import shutil
import time

import anyio
import pytest
from etcd_helpers import PROMPT, MakeServer, MakeStore, next_event, poll_until, unique_prefix

from dyndisc import (
    Added,
    BackendUnavailableError,
    DistributedRuntime,
    InstanceQuery,
    KvDiscovery,
    Lease,
    Resync,
)
from dyndisc.backends.kv import StoreDelete, StorePut, StoreSnapshot
from dyndisc.testing import RuntimeHost
from dyndisc.testing.server_fixtures import TcpProxyFactory
from dyndisc.testing.servers import EtcdServer, free_ports


async def test_watch_survives_an_etcd_restart_without_losing_events(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd()
    writer, watcher = make_store(server.client_url), make_store(server.client_url)
    prefix = unique_prefix()
    lease = await writer.grant(30)
    assert await writer.create(f"{prefix}a", b"1", lease.id) is None
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}a": b"1"})
        shared = watcher._watches[prefix]

        await anyio.to_thread.run_sync(server.kill)  # a crash, not a clean stop
        await anyio.to_thread.run_sync(server.start)
        # Written after the restart, likely before the watch is back: etcd must replay them to it.
        assert await writer.create(f"{prefix}b", b"2", lease.id) is None
        await writer.delete(f"{prefix}a")

        assert await next_event(events) == StorePut(key=f"{prefix}b", value=b"2")
        assert await next_event(events) == StoreDelete(key=f"{prefix}a")
    assert shared.resumes >= 1, "the watch stream must have broken and been resumed"
    assert shared.relists == 0, "history was intact: resuming from the last revision needs no relist"


async def test_worker_keeps_its_registration_across_an_etcd_restart(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd()
    worker = await RuntimeHost.start(DistributedRuntime(make_store(server.client_url), lease_ttl=3))
    frontend = await RuntimeHost.start(DistributedRuntime(make_store(server.client_url), lease_ttl=3))
    try:
        ns = unique_prefix().strip("/")
        registered = await worker.runtime.endpoint(f"{ns}.c.e").register("tcp://h:1")
        client = await frontend.runtime.endpoint(f"{ns}.c.e").client()
        assert await client.wait_for_instances(timeout=PROMPT) == [registered]

        await anyio.to_thread.run_sync(server.kill)
        await anyio.sleep(1.0)  # an outage shorter than the TTL: keep-alives fail and are retried
        await anyio.to_thread.run_sync(server.start)

        # etcd restores leases with a fresh TTL on restart; the keep-alive loop must pick up again.
        await anyio.sleep(3 * 2)  # two TTLs: a lease whose renewals had stopped would be gone by now
        assert worker.runtime.instance_id == registered.instance_id
        assert await frontend.runtime.endpoint(f"{ns}.c.e").list() == [registered]
        assert client.instances() == [registered]
    finally:
        await frontend.stop()
        await worker.stop()


async def test_compaction_during_a_disconnect_relists_and_resyncs(
    private_etcd: MakeServer, make_store: MakeStore, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    server = private_etcd()
    proxy = dyndisc_tcp_proxy(server.host, server.client_port)
    direct, store = make_store(server.client_url), make_store(proxy.url)
    discovery = KvDiscovery(store, root="/svc", owns_store=False)
    ns = unique_prefix().strip("/")
    worker = await RuntimeHost.start(DistributedRuntime(KvDiscovery(direct, root="/svc", owns_store=False)))
    try:
        a = await worker.runtime.endpoint(f"{ns}.c.a").register("tcp://h:1")
        async with discovery.watch(InstanceQuery(namespace=ns)) as events:
            assert await next_event(events) == Resync(instances=(a,))
            shared = store._watches[f"/svc/{ns}/"]

            proxy.cut()  # stays cut: the watcher cannot reconnect until restore()
            await worker.runtime.endpoint(f"{ns}.c.a").unregister()
            b = await worker.runtime.endpoint(f"{ns}.c.b").register("tcp://h:2")
            server.compact()  # the events the watcher missed are gone from etcd's history
            proxy.restore()

            assert await next_event(events) == Resync(instances=(b,))
            assert shared.relists == 1
            c = await worker.runtime.endpoint(f"{ns}.c.c").register("tcp://h:3")
            assert await next_event(events) == Added(instance=c), "the watch goes on after the relist"
    finally:
        await worker.stop()


async def test_a_delete_at_the_compaction_revision_reaches_a_resumed_watch(
    private_etcd: MakeServer, make_store: MakeStore, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    # Chaos seed 1016 on etcd: the watch was away, a worker's delete landed, the nemesis compacted at that
    # very revision, and the watch resumed from it. etcd before 3.5.15 drops the tombstone at the
    # compaction revision (etcd-io/etcd#18089), so every watcher kept the instance for ever; the tests run
    # a current etcd, and this keeps it honest.
    server = private_etcd()
    proxy = dyndisc_tcp_proxy(server.host, server.client_port)
    direct, store = make_store(server.client_url), make_store(proxy.url)
    prefix = unique_prefix()
    await direct.put(f"{prefix}a", b"1", 0)
    async with store.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}a": b"1"})
        shared = store._watches[prefix]
        proxy.cut()
        await direct.delete(f"{prefix}a")
        revision = server.current_revision()
        assert revision == shared.revision + 1, "the delete is the one revision the watch missed"
        server.compact(revision)  # compacted at the delete's own revision
        proxy.restore()
        assert await next_event(events) == StoreDelete(key=f"{prefix}a")
    assert shared.relists == 0, "the watch resumed from the compaction revision, which etcd still serves"


async def test_a_partition_is_healed_by_resuming_from_the_last_revision(
    dyndisc_etcd_server: object, make_store: MakeStore, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    from dyndisc.testing.servers import EtcdServer

    assert isinstance(dyndisc_etcd_server, EtcdServer)
    proxy = dyndisc_tcp_proxy(dyndisc_etcd_server.host, dyndisc_etcd_server.client_port)
    direct, store = make_store(dyndisc_etcd_server.client_url), make_store(proxy.url)
    prefix = unique_prefix()
    await direct.put(f"{prefix}a", b"1", 0)
    async with store.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}a": b"1"})
        shared = store._watches[prefix]
        proxy.cut()
        await direct.delete(f"{prefix}a")
        await direct.put(f"{prefix}b", b"2", 0)
        proxy.restore()
        assert await next_event(events) == StoreDelete(key=f"{prefix}a")
        assert await next_event(events) == StorePut(key=f"{prefix}b", value=b"2")
    assert shared.resumes >= 1
    assert shared.relists == 0


async def test_a_worker_started_before_etcd_waits_then_works(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd(start=False)
    store = make_store(server.client_url, startup_connect_timeout_seconds=60)
    granted: list[Lease] = []
    done = anyio.Event()

    async def grant() -> None:
        granted.append(await store.grant(5))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(grant)
        with anyio.move_on_after(1.0):
            await done.wait()
        assert granted == [], "nothing can be granted while etcd is down"
        await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(PROMPT):
            await done.wait()
    assert await store.keep_alive(granted[0].id) > 0


async def test_startup_gives_up_after_its_timeout_with_a_clear_error(make_store: MakeStore) -> None:

    (port,) = free_ports(1)
    store = make_store(f"http://127.0.0.1:{port}", startup_connect_timeout_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(
        BackendUnavailableError,
        match=rf"etcd at http://127\.0\.0\.1:{port} \(ETCD_ENDPOINTS\) did not answer within 1s "
        r"\(ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS\)",
    ):
        await store.grant(5)
    assert 1.0 <= time.monotonic() - started < 4.0


async def test_calls_fail_over_to_the_next_endpoint(
    dyndisc_etcd_server: object, make_store: MakeStore, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    from dyndisc.testing.servers import EtcdServer

    assert isinstance(dyndisc_etcd_server, EtcdServer)
    first = dyndisc_tcp_proxy(dyndisc_etcd_server.host, dyndisc_etcd_server.client_port)
    second = dyndisc_tcp_proxy(dyndisc_etcd_server.host, dyndisc_etcd_server.client_port)
    store = make_store(f"{first.url},{second.url}")
    prefix = unique_prefix()
    lease = await store.grant(5)
    async with store.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={})
        first.cut()  # the first endpoint is gone for good
        assert await store.create(f"{prefix}a", b"1", lease.id) is None
        assert await store.keep_alive(lease.id) > 0
        assert await next_event(events) == StorePut(key=f"{prefix}a", value=b"1")
    assert store.connection.url == second.url


async def test_a_watch_resyncs_when_etcd_comes_back_with_other_history(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd()
    store = make_store(server.client_url)
    prefix = unique_prefix()
    for name in ("a", "b", "c"):
        await store.put(f"{prefix}{name}", b"old", 0)
    async with store.watch(prefix) as events:
        first = await next_event(events)
        assert isinstance(first, StoreSnapshot)
        assert len(first.items) == 3
        shared = store._watches[prefix]

        def wipe_and_restart() -> None:  # a member rebuilt from scratch: a new cluster at revision 1
            server.kill()
            shutil.rmtree(server.data_dir)
            server.start()

        await anyio.to_thread.run_sync(wipe_and_restart)
        assert await next_event(events) == StoreSnapshot(items={}), "the vanished keys must not be kept"
        assert shared.relists == 1
        await store.put(f"{prefix}d", b"new", 0)
        assert await next_event(events) == StorePut(key=f"{prefix}d", value=b"new")


async def test_a_silent_partition_is_noticed_and_healed(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    proxy = dyndisc_tcp_proxy(dyndisc_etcd_server.host, dyndisc_etcd_server.client_port)
    worker = await RuntimeHost.start(
        DistributedRuntime(make_store(dyndisc_etcd_server.client_url), lease_ttl=2)
    )
    frontend = await RuntimeHost.start(DistributedRuntime(make_store(proxy.url), lease_ttl=2))
    try:
        ns = unique_prefix().strip("/")
        a = await worker.runtime.endpoint(f"{ns}.c.a").register("tcp://h:1")
        source = await frontend.runtime.instance_set(InstanceQuery(namespace=ns))
        with anyio.fail_after(PROMPT):
            while source.instances() != [a]:
                await source.wait_changed()

        proxy.blackhole()  # packets vanish; no connection is reset
        await worker.runtime.endpoint(f"{ns}.c.a").unregister()
        b = await worker.runtime.endpoint(f"{ns}.c.b").register("tcp://h:2")
        # The frontend's keep-alive times out and its connection is marked stale.
        await poll_until(
            lambda: frontend.runtime.backend.stale_since is not None, "the partition to be noticed"
        )
        assert source.instances() == [a], "nothing can arrive through the partition"
        proxy.restore()

        with anyio.fail_after(PROMPT * 2):
            while source.instances() != [b]:
                await source.wait_changed()
        assert not frontend.done, "the frontend runtime must ride out the partition"
    finally:
        await frontend.stop()
        await worker.stop()
