"""Fixtures for the etcd tests: private etcd servers (TLS, auth, restarts) and stores closed at teardown."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from etcd_helpers import MakeServer, MakeStore

from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import EtcdServer


@pytest.fixture
def private_etcd(dyndisc_private_servers: PrivateServers) -> MakeServer:
    """Factory of etcd servers of this test's own (to restart, kill, or configure with TLS/auth)."""
    return functools.partial(dyndisc_private_servers, EtcdServer)


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
