"""Fixtures for the NATS tests: private nats-servers (to restart, or with auth) and clusters (to kill and
partition), stores and runtimes closed at teardown."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cluster_helpers import Fleet
from nats_helpers import MakeServer, MakeStore

from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import NatsCluster, NatsServer


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


@pytest.fixture
def nats_cluster(dyndisc_private_servers: PrivateServers) -> NatsCluster:
    """A cluster of three nats-servers of this test's own (to kill, restart and partition)."""
    return dyndisc_private_servers(NatsCluster)


@pytest.fixture
async def fleet(nats_cluster: NatsCluster) -> AsyncIterator[Fleet]:
    """Runtimes on ``nats_cluster`` (each given its three servers), one bucket of the test's own."""
    found = Fleet(nats_cluster)
    try:
        yield found
    finally:
        await found.close()
