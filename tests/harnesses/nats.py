"""Conformance harness for the NATS backend: the session's real nats-server, reached through a TCP proxy.

Backends under test dial the proxy, so :meth:`NatsHarness.break_watches` really drops their connections
(every one is reset; the clients reconnect and their watches must resync). Raw writes and lease kills go
straight to the server from another client.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dyndisc import DiscoveryBackend, KvDiscovery, Lease
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.servers import NatsServer, TcpProxy

from .base import Harness

NAME = "nats"


def settings_for(url: str, **overrides: object) -> NatsSettings:
    """Settings for a test store on the session's bucket (override ``kv_bucket`` to isolate a test)."""
    values: dict[str, object] = {"server": url, "kv_bucket": "dyndisc_tests", "timeout": 3.0}
    values.update(overrides)
    return NatsSettings.from_env(**values)


def fresh_bucket() -> str:
    """A bucket name no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


class NatsHarness(Harness):
    name = NAME
    lease_ttl = 2.0
    # Per-key TTLs are whole seconds and the server writes the expiry marker on time (measured: < 10 ms
    # late); the bound covers watch delivery and a loaded machine.
    expiry_bound = 1.5

    def __init__(self, server: NatsServer, proxy: TcpProxy) -> None:
        self.server = server
        self.proxy = proxy
        self.direct = NatsStore(settings_for(server.url))
        self.stores: list[NatsStore] = [self.direct]

    def new_backend(self) -> DiscoveryBackend:
        store = NatsStore(settings_for(self.proxy.url_for("nats")))
        self.stores.append(store)
        return KvDiscovery(store, root=self.root)

    async def write_raw(self, key: str, value: bytes) -> None:
        await self.direct.put(key, value, 0)

    async def break_watches(self) -> None:
        self.proxy.cut()
        self.proxy.restore()

    async def kill_lease(self, lease: Lease) -> None:
        await self.direct.revoke(lease.id)

    async def close(self) -> None:
        for store in self.stores:
            await store.aclose()


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    server: NatsServer = request.getfixturevalue("nats_server")
    proxy: TcpProxy = request.getfixturevalue("tcp_proxy")(server.host, server.port)
    yield NatsHarness(server, proxy)
