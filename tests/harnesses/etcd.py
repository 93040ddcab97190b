"""Conformance harness for the etcd backend: the session's real etcd, reached through a TCP proxy.

Backends under test dial the proxy, so :meth:`EtcdHarness.break_watches` really breaks their gRPC streams
(every connection is reset); raw writes and lease kills go straight to etcd from another client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.testing.servers import EtcdServer, TcpProxy

from .base import Harness, ProxiedStoreHarness

NAME = "etcd"


def settings_for(url: str, **overrides: object) -> EtcdSettings:
    """Settings for a test store: no startup wait worth mentioning, short request timeouts."""
    values: dict[str, object] = {
        "endpoints": url,
        "startup_connect_timeout_seconds": 10.0,
        "request_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return EtcdSettings.load(**values)


class EtcdHarness(ProxiedStoreHarness):
    name = NAME
    lease_ttl = 2.0
    # etcd checks lease expiry every 500 ms and then revokes through raft; watch delivery adds a little.
    expiry_bound = 1.5
    # Every part of the contract: a removal's reason is asked of etcd (backends/etcd/departures.py).

    def __init__(self, server: EtcdServer, proxy: TcpProxy) -> None:
        super().__init__(proxy, EtcdStore(settings_for(server.client_url)))
        self.server = server

    def store_via_proxy(self) -> EtcdStore:
        return EtcdStore(settings_for(self.proxy.url))


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    server: EtcdServer = request.getfixturevalue("dyndisc_etcd_server")
    proxy: TcpProxy = request.getfixturevalue("dyndisc_tcp_proxy")(server.host, server.client_port)
    yield EtcdHarness(server, proxy)
