"""The NATS backend through server restarts and cut connections: resync at once, nothing lost, no phantoms."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
from nats_helpers import PROMPT, MakeServer, MakeStore, eventually, next_event, unique_prefix

from dyndisc import BackendUnavailableError, DistributedRuntime, InstanceQuery
from dyndisc.backends.kv import StoreEvent, StorePut, StoreSnapshot
from dyndisc.backends.nats import NatsStore
from dyndisc.backends.nats.connection import PING_INTERVAL
from dyndisc.testing import RuntimeHost
from dyndisc.testing.server_fixtures import TcpProxyFactory

#: nats-py alone notices a restarted server's lost consumer by missed heartbeats, after ~15 s.
FAST_RESYNC = 5.0


def _is_stale(store: NatsStore) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return store.stale_since is not None

    return check


async def _until_snapshot(events: object, timeout: float) -> StoreSnapshot:
    with anyio.fail_after(timeout):
        while True:
            event: StoreEvent = await anext(events)  # type: ignore[call-overload]
            if isinstance(event, StoreSnapshot):
                return event


async def test_watch_resyncs_quickly_after_a_server_restart_without_phantoms(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    writer, watcher = make_store(server.url), make_store(server.url)
    prefix = unique_prefix()
    kept = await writer.grant(30)
    crashed = await writer.grant(1)  # never kept alive: expires while the server is down
    await writer.create(f"{prefix}kept", b"1", kept.id)
    await writer.create(f"{prefix}crashed", b"2", crashed.id)
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(
            items={f"{prefix}kept": b"1", f"{prefix}crashed": b"2"}
        )
        await anyio.to_thread.run_sync(server.kill)
        await eventually(_is_stale(watcher), PROMPT, "the store to notice the lost server")
        await anyio.sleep(1.5)  # past the crashed lease's TTL, while nobody can see the server
        await anyio.to_thread.run_sync(server.start)
        back = time.monotonic()

        snapshot = await _until_snapshot(events, FAST_RESYNC)
        assert time.monotonic() - back < FAST_RESYNC
        # The expired key is gone whether the restarted server expired it before or after the resync.
        items = dict(snapshot.items)
        with anyio.move_on_after(1.5):
            while f"{prefix}crashed" in items:
                event = await next_event(events)
                assert not isinstance(event, StorePut) or event.key != f"{prefix}crashed"
                items.pop(getattr(event, "key", ""), None)
        assert items == {f"{prefix}kept": b"1"}
        assert watcher.stale_since is None

        await writer.create(f"{prefix}new", b"3", kept.id)
        assert await next_event(events) == StorePut(key=f"{prefix}new", value=b"3")


async def test_changes_made_while_a_watcher_is_cut_off_reach_it_after(
    private_nats: MakeServer, make_store: MakeStore, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    server = private_nats()
    proxy = dyndisc_tcp_proxy(server.host, server.port)
    writer, watcher = make_store(server.url), make_store(proxy.url_for("nats"))
    prefix = unique_prefix()
    lease = await writer.grant(30)
    await writer.create(f"{prefix}leaves", b"1", lease.id)
    await writer.create(f"{prefix}stays", b"2", lease.id)
    async with watcher.watch(prefix) as events:
        assert isinstance(await next_event(events), StoreSnapshot)
        proxy.cut()
        await eventually(_is_stale(watcher), PROMPT, "the store to notice the lost server")
        await writer.delete(f"{prefix}leaves")
        await writer.create(f"{prefix}joins", b"3", lease.id)
        await anyio.sleep(0.5)
        proxy.restore()

        snapshot = await _until_snapshot(events, FAST_RESYNC)
        assert snapshot.items == {f"{prefix}stays": b"2", f"{prefix}joins": b"3"}
        assert watcher.stale_since is None


async def test_a_worker_keeps_its_registration_across_a_server_restart(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    worker = await RuntimeHost.start(DistributedRuntime(make_store(server.url), lease_ttl=5))
    frontend = await RuntimeHost.start(DistributedRuntime(make_store(server.url), lease_ttl=5))
    try:
        ns = unique_prefix().strip("/")
        registered = await worker.runtime.endpoint(f"{ns}.c.e").register("tcp://h:1")
        source = await frontend.runtime.instance_set(InstanceQuery(namespace=ns))
        with anyio.fail_after(PROMPT):
            while source.instances() != [registered]:
                await source.wait_changed()

        await anyio.to_thread.run_sync(server.restart)  # graceful stop, then start: ~1 s

        await anyio.sleep(6)  # more than one TTL: the keys only survive if the keep-alive resumed
        assert worker.runtime.instance_id == registered.instance_id, "the lease must not have been lost"
        assert source.instances() == [registered]
        assert await frontend.runtime.list(InstanceQuery(namespace=ns)) == [registered]
    finally:
        await frontend.stop()
        await worker.stop()


async def test_a_silent_partition_is_noticed_and_healed_with_a_resync(
    private_nats: MakeServer, make_store: MakeStore, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    server = private_nats()
    proxy = dyndisc_tcp_proxy(server.host, server.port)
    writer, watcher = make_store(server.url), make_store(proxy.url_for("nats"))
    prefix = unique_prefix()
    await writer.put(f"{prefix}leaves", b"1", 0)
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}leaves": b"1"})
        proxy.blackhole(discard=True)  # no reset: bytes vanish, as in a network partition
        partitioned = time.monotonic()
        await writer.delete(f"{prefix}leaves")
        await writer.put(f"{prefix}joins", b"2", 0)
        # Unanswered pings (every PING_INTERVAL, two allowed) reveal the dead connection.
        await eventually(_is_stale(watcher), 4 * PING_INTERVAL, "the partition to be noticed")
        assert time.monotonic() - partitioned >= PING_INTERVAL
        proxy.restore()

        snapshot = await _until_snapshot(events, FAST_RESYNC)
        assert snapshot.items == {f"{prefix}joins": b"2"}
        assert watcher.stale_since is None


async def test_a_write_that_timed_out_while_the_server_was_away_does_not_land_after(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    """A write the caller was told had failed (no answer within NATS_TIMEOUT, the server away) must not land
    once the server is back: an unregister() in between would be undone by it (chaos seed 2000 on NATS: a
    registration timed out during a server outage, its unregistration returned, then the registration
    landed). nats-py keeps what is published while disconnected and sends it on reconnecting."""
    server = private_nats()
    writer, reader = make_store(server.url, timeout=1.0), make_store(server.url)
    prefix = unique_prefix()
    lease = await writer.grant(30)
    await writer.create(f"{prefix}before", b"1", lease.id)
    await anyio.to_thread.run_sync(server.kill)
    await eventually(_is_stale(writer), PROMPT, "the store to notice the lost server")
    with pytest.raises(BackendUnavailableError):
        await writer.put(f"{prefix}zombie", b"2", 0)
    await anyio.to_thread.run_sync(server.start)

    async def reconnected() -> bool:
        return writer.stale_since is None and await reader.get_prefix(prefix) is not None

    await eventually(reconnected, PROMPT, "the writer to reconnect")
    await writer.put(f"{prefix}after", b"3", 0)  # answered: anything published before it arrived before it
    assert await reader.get_prefix(prefix) == {f"{prefix}before": b"1", f"{prefix}after": b"3"}
