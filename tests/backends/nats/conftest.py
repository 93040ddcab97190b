"""Fixtures for the NATS tests: private nats-servers (to restart, or with auth), stores closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from nats_helpers import MakeServer, MakeStore

from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import NatsServer, ServerUnavailable


@pytest.fixture
def private_nats() -> Iterator[MakeServer]:
    """Factory of nats-servers of this test's own (to restart or kill, or with user/password)."""
    servers: list[NatsServer] = []

    def make(*, start: bool = True, **kwargs: Any) -> NatsServer:
        try:
            server = NatsServer(**kwargs)
            servers.append(server)
            if start:
                server.start()
        except ServerUnavailable as exc:
            server_unavailable(f"nats-server: {exc}")
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
async def make_store() -> AsyncIterator[MakeStore]:
    """Factory of :class:`NatsStore` objects (short timeouts unless overridden), closed at teardown."""
    stores: list[NatsStore] = []

    def make(server: str, **overrides: Any) -> NatsStore:
        values: dict[str, Any] = {"server": server, "timeout": 3.0, **overrides}
        store = NatsStore(NatsSettings.from_env(**values))
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            await store.aclose()
