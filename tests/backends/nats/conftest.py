"""Fixtures for the NATS tests: private nats-servers (to restart, or with auth), stores closed at teardown."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats_helpers import MakeServer, MakeStore

from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import NatsServer


@pytest.fixture
def private_nats(dyndisc_private_servers: PrivateServers) -> MakeServer:
    """Factory of nats-servers of this test's own (to restart or kill, or with user/password)."""
    return functools.partial(dyndisc_private_servers, NatsServer)


@pytest.fixture
async def make_store() -> AsyncIterator[MakeStore]:
    """Factory of :class:`NatsStore` objects (short timeouts unless overridden), closed at teardown."""
    stores: list[NatsStore] = []

    def make(server: str, **overrides: Any) -> NatsStore:
        values: dict[str, Any] = {"server": server, "timeout": 3.0, **overrides}
        store = NatsStore(NatsSettings.load(**values))
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            await store.aclose()
