"""Conformance harness for the NATS backend on a cluster: the session's three nats-servers, one bucket with a
copy on each (``NATS_KV_REPLICAS=3``), every backend given all three servers (each behind a TCP proxy).

Backends under test dial the proxies, so :meth:`NatsClusterHarness.break_watches` really drops their
connections (every one is reset; each client reconnects to one of the three, its own pick, and its watches
must resync). Raw writes and lease kills go straight to the servers from another client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.server_fixtures import TcpProxyFactory
from dyndisc.testing.servers import NatsCluster, TcpProxy

from .base import Harness, ProxiedStoreHarness
from .nats import NatsHarness

NAME = "nats_cluster"
#: The bucket of the cluster's conformance tests, with a copy on every server.
BUCKET = "dyndisc_cluster_tests"


def cluster_settings(servers: str, **overrides: object) -> NatsSettings:
    """Settings for a store of the cluster's replicated test bucket (``servers``: ``NATS_SERVER``)."""
    values: dict[str, object] = {"server": servers, "kv_bucket": BUCKET, "kv_replicas": 3, "timeout": 3.0}
    values.update(overrides)
    return NatsSettings.load(**values)


class NatsClusterHarness(ProxiedStoreHarness):
    name = NAME
    lease_ttl = NatsHarness.lease_ttl
    # The stream leader writes the expiry marker and replicates it before any watcher sees it: one more
    # round between servers than on one server.
    expiry_bound = NatsHarness.expiry_bound
    supports = NatsHarness.supports

    def __init__(self, cluster: NatsCluster, proxies: list[TcpProxy]) -> None:
        super().__init__(proxies[0], NatsStore(cluster_settings(cluster.servers_setting)))
        self.cluster = cluster
        self.proxies = proxies

    def store_via_proxy(self) -> NatsStore:
        return NatsStore(cluster_settings(",".join(p.url_for("nats") for p in self.proxies)))

    async def break_watches(self) -> None:
        for proxy in self.proxies:
            proxy.cut()
        for proxy in self.proxies:
            proxy.restore()


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    cluster: NatsCluster = request.getfixturevalue("dyndisc_nats_cluster")
    make_proxy: TcpProxyFactory = request.getfixturevalue("dyndisc_tcp_proxy")
    yield NatsClusterHarness(cluster, [make_proxy(s.host, s.port) for s in cluster.servers])
