"""Fixtures for the Kubernetes backend tests: a real kube-apiserver, a namespace per test, workers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kube_helpers import Workers

from dyndisc.testing.servers import KubeApiServer
from harnesses.kubernetes import Cluster


@pytest.fixture
async def cluster(kube_apiserver: KubeApiServer) -> AsyncIterator[Cluster]:
    """Admin access to the session's kube-apiserver (the shipped CRD installed)."""
    async with Cluster.open(kube_apiserver) as found:
        yield found


@pytest.fixture
async def namespace(cluster: Cluster) -> str:
    """A Kubernetes namespace of this test's own."""
    return await cluster.create_namespace()


@pytest.fixture
async def workers(cluster: Cluster, namespace: str) -> AsyncIterator[Workers]:
    """Start workers (pods made ready by the test) and watchers in ``namespace``."""
    found = Workers(cluster, namespace)
    try:
        yield found
    finally:
        await found.close()
