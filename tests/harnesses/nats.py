"""Conformance harness for the NATS backend: the session's real nats-server, reached through a TCP proxy.

Backends under test dial the proxy, so :meth:`NatsHarness.break_watches` really drops their connections
(every one is reset; the clients reconnect and their watches must resync). Raw writes and lease kills go
straight to the server from another client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.servers import NatsServer, TcpProxy

from .base import Harness, ProxiedStoreHarness

NAME = "nats"


def settings_for(url: str, **overrides: object) -> NatsSettings:
    """Settings for a test store on the session's bucket (override ``kv_bucket`` to isolate a test)."""
    values: dict[str, object] = {"server": url, "kv_bucket": "dyndisc_tests", "timeout": 3.0}
    values.update(overrides)
    return NatsSettings.load(**values)


class NatsHarness(ProxiedStoreHarness):
    name = NAME
    lease_ttl = 2.0
    # Per-key TTLs are whole seconds and the server writes the expiry marker on time (measured: < 10 ms
    # late); the bound covers watch delivery and a loaded machine.
    expiry_bound = 1.5
    # A lease's time left is not read back on NATS yet (it answers None, as the contract allows).
    supports = ProxiedStoreHarness.supports - {"lease_time_left"}

    def __init__(self, server: NatsServer, proxy: TcpProxy) -> None:
        super().__init__(proxy, NatsStore(settings_for(server.url)))
        self.server = server

    def store_via_proxy(self) -> NatsStore:
        return NatsStore(settings_for(self.proxy.url_for("nats")))


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    server: NatsServer = request.getfixturevalue("dyndisc_nats_server")
    proxy: TcpProxy = request.getfixturevalue("dyndisc_tcp_proxy")(server.host, server.port)
    yield NatsHarness(server, proxy)
