"""Fixtures for the Kubernetes backend tests: a real kube-apiserver with the real kube-controller-manager
(EndpointSlice controller, garbage collector), a namespace per test with a discovery Service, workers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kube_helpers import Workers

from dyndisc.testing.servers import KubeCluster
from harnesses.kubernetes import Cluster


@pytest.fixture
async def cluster(dyndisc_kube_cluster: KubeCluster) -> AsyncIterator[Cluster]:
    """Admin access to the session's cluster (the shipped CRD installed)."""
    async with Cluster.open(dyndisc_kube_cluster.apiserver) as found:
        yield found


@pytest.fixture
async def namespace(cluster: Cluster) -> str:
    """A Kubernetes namespace of this test's own, with the Service ``worker`` (discovery labels) selecting
    the pods labelled ``app=worker``, as the reference's operator makes for a component."""
    name = await cluster.create_namespace()
    await cluster.create_service(name)
    return name


@pytest.fixture
async def workers(cluster: Cluster, namespace: str) -> AsyncIterator[Workers]:
    """Start workers (pods run by the test as kubelet would) and watchers in ``namespace``."""
    found = Workers(cluster, namespace)
    try:
        yield found
    finally:
        await found.close()
