"""EtcdStore through etcd's grpc-proxy: watchers of one prefix share one watch on etcd, and each is
established at once. The proxy confirms a watch that joins one it already holds with a header of its own
making (no cluster id): taken for another cluster's, it made every watcher after the first list the prefix
again and again, never established."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from etcd_helpers import MakeStore, next_event, unique_prefix

from dyndisc.backends.kv import StorePut, StoreSnapshot
from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import EtcdGrpcProxy, EtcdServer, ServerUnavailable


@pytest.fixture
def proxy(dyndisc_etcd_server: EtcdServer) -> Iterator[EtcdGrpcProxy]:
    """A grpc-proxy in front of the session's etcd (plaintext, no auth, as the session's always is)."""
    found = EtcdGrpcProxy(dyndisc_etcd_server.endpoints)
    try:
        try:
            found.start()
        except ServerUnavailable as exc:
            server_unavailable(str(exc))
        yield found
    finally:
        found.close()


async def test_watchers_through_the_proxy_are_established_and_see_changes(
    proxy: EtcdGrpcProxy, dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    prefix = unique_prefix()
    writer = make_store(dyndisc_etcd_server.client_url)
    await writer.put(f"{prefix}a", b"1", 0)
    stores = [make_store(proxy.client_url) for _ in range(3)]
    async with (
        stores[0].watch(prefix) as first,
        stores[1].watch(prefix) as second,
        stores[2].watch(prefix) as third,
    ):
        streams = [first, second, third]
        for events in streams:
            snapshot = await next_event(events)
            assert isinstance(snapshot, StoreSnapshot)
            assert snapshot.items == {f"{prefix}a": b"1"}
        await writer.put(f"{prefix}b", b"2", 0)
        for events in streams:
            assert await next_event(events) == StorePut(key=f"{prefix}b", value=b"2")
        await anyio.sleep(0.2)  # a relist would show by now
        for store in stores:
            assert store._watches[prefix].relists == 0
