"""``etcd grpc-proxy start`` in front of a test etcd: it starts, serves reads and watches, and coalesces
watches of one prefix into one watch on etcd."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from aetcd import rpc
from aetcd.utils import prefix_range_end

from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import EtcdGrpcProxy, EtcdServer, ServerUnavailable
from dyndisc.testing.servers._process import http_request


@pytest.fixture
def proxied() -> Iterator[tuple[EtcdServer, EtcdGrpcProxy]]:
    """A private etcd and a grpc-proxy in front of it."""
    etcd = EtcdServer()
    proxy = None
    try:
        try:
            etcd.start()
            proxy = EtcdGrpcProxy(etcd.endpoints).start()
        except ServerUnavailable as exc:
            server_unavailable(str(exc))
        yield etcd, proxy
    finally:
        if proxy is not None:
            proxy.close()
        etcd.close()


def _watchers_on_etcd(etcd: EtcdServer) -> int:
    """etcd's own count of the watches open on it."""
    status, body = http_request(f"{etcd.client_url}/metrics")
    assert status == 200
    text = body.decode()
    (line,) = [line for line in text.splitlines() if line.startswith("etcd_debugging_mvcc_watcher_total ")]
    return int(float(line.split()[1]))


async def test_the_proxy_serves_reads_and_coalesces_watches(
    proxied: tuple[EtcdServer, EtcdGrpcProxy],
) -> None:
    etcd, proxy = proxied
    assert proxy.upstream == [etcd.endpoint]
    key = b"/proxied/"
    channels = [rpc.insecure_channel(proxy.endpoint) for _ in range(3)]
    calls = []
    own = _watchers_on_etcd(etcd)  # the proxy's own (it watches for the loss of etcd's leader)
    try:
        kv = rpc.KVStub(channels[0])
        await kv.Put(rpc.PutRequest(key=key + b"a", value=b"1"))
        reply = await kv.Range(rpc.RangeRequest(key=key, range_end=prefix_range_end(key)))
        assert [(bytes(k.key), bytes(k.value)) for k in reply.kvs] == [(key + b"a", b"1")]
        # Three watchers of the prefix, each on a connection of its own, from the same revision.
        create = rpc.WatchCreateRequest(
            key=key, range_end=prefix_range_end(key), start_revision=reply.header.revision + 1
        )
        for channel in channels:
            call = rpc.WatchStub(channel).Watch()
            calls.append(call)
            await call.write(rpc.WatchRequest(create_request=create))
            with anyio.fail_after(10):
                assert (await call.read()).created
        await kv.Put(rpc.PutRequest(key=key + b"b", value=b"2"))
        for call in calls:
            with anyio.fail_after(10):
                answer = await call.read()
            assert [bytes(e.kv.key) for e in answer.events] == [key + b"b"]
        # One watch of the prefix on etcd for the three.
        assert _watchers_on_etcd(etcd) == own + 1
        assert "grpc_server_started_total" in proxy.metrics()
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()
