"""Removal reasons on etcd (``backends/etcd/departures.py``): a revoke leaves a marker, a live lease did not
run out, a lease gone without a marker expired; and the watch gives each delete its reason."""

from __future__ import annotations

import anyio
import pytest
from etcd_helpers import PROMPT, MakeServer, MakeStore, next_event, unique_prefix

from dyndisc import RemovalReason
from dyndisc.backends.etcd import EtcdStore
from dyndisc.backends.etcd.departures import MARKER_PREFIX, Departures, marker_key
from dyndisc.backends.kv import StoreDelete, StoreSnapshot
from dyndisc.testing.servers import EtcdServer


@pytest.fixture
def url(dyndisc_etcd_server: EtcdServer) -> str:
    return dyndisc_etcd_server.client_url


async def _gone(store: EtcdStore, lease_id: int) -> None:
    """Wait until etcd no longer knows ``lease_id`` (its TTL ran out): polled, etcd tells no one."""
    with anyio.fail_after(PROMPT + 5):
        while await store.time_to_live(lease_id) is not None:  # noqa: ASYNC110
            await anyio.sleep(0.1)


async def test_a_revoke_leaves_a_marker_under_a_lease_of_its_own(url: str, make_store: MakeStore) -> None:
    store = make_store(url)
    lease = await store.grant(30)
    await store.revoke(lease.id)
    markers = await store.get_prefix(MARKER_PREFIX)
    assert marker_key(lease.id) in markers
    assert await Departures(store.connection).reason(lease.id) is RemovalReason.LEFT


async def test_a_live_lease_left_and_a_lease_gone_without_a_marker_expired(
    url: str, make_store: MakeStore
) -> None:
    store = make_store(url)
    departures = Departures(store.connection)
    alive, short = await store.grant(30), await store.grant(1)
    assert await departures.reason(alive.id) is RemovalReason.LEFT  # a key deleted under it was unregistered
    await _gone(store, short.id)
    assert await departures.reason(short.id) is RemovalReason.EXPIRED
    # Several at once, the unleased key's 0 left out.
    assert await departures.reasons([alive.id, short.id, 0], PROMPT) == {
        alive.id: RemovalReason.LEFT,
        short.id: RemovalReason.EXPIRED,
    }
    await store.revoke(alive.id)


async def test_an_answer_that_cannot_change_is_remembered(url: str, make_store: MakeStore) -> None:
    store = make_store(url)
    departures = Departures(store.connection)
    lease = await store.grant(30)
    await store.revoke(lease.id)
    assert await departures.reason(lease.id) is RemovalReason.LEFT
    await store.delete(marker_key(lease.id))  # the marker's lease would end it in two minutes
    assert await departures.reason(lease.id) is RemovalReason.LEFT


async def test_a_server_that_does_not_answer_gives_no_reason(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd()
    store = make_store(server.client_url, request_timeout_seconds=1.0)
    lease = await store.grant(30)
    server.kill()
    with anyio.fail_after(PROMPT + 5):
        assert await Departures(store.connection).reason(lease.id) is None


async def test_the_watch_says_why_each_key_left(url: str, make_store: MakeStore) -> None:
    store, watcher = make_store(url), make_store(url)
    prefix = unique_prefix()
    kept, revoked, expiring = await store.grant(30), await store.grant(30), await store.grant(1)
    for name, lease in (("kept", kept), ("revoked", revoked), ("expiring", expiring)):
        assert await store.create(f"{prefix}{name}", b"1", lease.id) is None
    async with watcher.watch(prefix) as events:
        assert isinstance(await next_event(events), StoreSnapshot)
        await store.delete(f"{prefix}kept")
        deleted = await next_event(events)
        assert deleted == StoreDelete(key=f"{prefix}kept")
        assert deleted.reason is RemovalReason.LEFT
        await store.revoke(revoked.id)
        deleted = await next_event(events)
        assert deleted == StoreDelete(key=f"{prefix}revoked")
        assert deleted.reason is RemovalReason.LEFT
        deleted = await next_event(events, PROMPT + 5)
        assert deleted == StoreDelete(key=f"{prefix}expiring")
        assert deleted.reason is RemovalReason.EXPIRED
    await store.revoke(kept.id)


async def test_a_lease_with_under_a_second_left_is_alive(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    """etcd tells a lease's time left in whole seconds, rounded down: 0 is a live lease about to be renewed
    (or run out), -1 one it does not know. A key unregistered in that last second left; it did not expire
    (chaos seed 2047 on the etcd cluster: a watcher said an unregistered endpoint had expired)."""
    store = make_store(dyndisc_etcd_server.client_url)
    lease = await store.grant(1)  # under a second left from the start
    assert await store.time_to_live(lease.id) is not None
    key = f"{unique_prefix()}a"
    await store.create(key, b"v", lease.id)
    async with store.watch(key) as events:
        assert await next_event(events) == StoreSnapshot(items={key: b"v"})
        await store.delete(key)
        removed = await next_event(events)
    assert removed == StoreDelete(key=key)
    assert removed.reason is RemovalReason.LEFT
