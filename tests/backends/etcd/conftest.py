"""Fixtures for the etcd tests: private etcd servers (TLS, auth, restarts) and stores closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from etcd_helpers import MakeServer, MakeStore

from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import EtcdServer, ServerUnavailable


@pytest.fixture
def private_etcd() -> Iterator[MakeServer]:
    """Factory of etcd servers of this test's own (to restart, kill, or configure with TLS/auth)."""
    servers: list[EtcdServer] = []

    def make(*, start: bool = True, **kwargs: Any) -> EtcdServer:
        try:
            server = EtcdServer(**kwargs)
            servers.append(server)
            if start:
                server.start()
        except ServerUnavailable as exc:
            server_unavailable(f"etcd: {exc}")
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
async def make_store() -> AsyncIterator[MakeStore]:
    """Factory of :class:`EtcdStore` objects (short timeouts unless overridden), closed at teardown."""
    stores: list[EtcdStore] = []

    def make(endpoints: str, **overrides: Any) -> EtcdStore:
        values: dict[str, Any] = {
            "endpoints": endpoints,
            "startup_connect_timeout_seconds": 10.0,
            "request_timeout_seconds": 3.0,
            **overrides,
        }
        store = EtcdStore(EtcdSettings.load(**values))
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            await store.aclose()
