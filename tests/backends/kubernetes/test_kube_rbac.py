"""The shipped least-privilege Role is enough to work in its namespace, and nothing more."""

from __future__ import annotations

import pytest
from kube_helpers import Workers, everything, next_event

from dyndisc import AccessDeniedError, BackendUnavailableError, Resync
from dyndisc.backends.kubernetes import KubernetesDiscovery
from dyndisc.backends.kubernetes.api import connect
from dyndisc.backends.kubernetes.errors import KubeStatusError
from dyndisc.testing.servers.kube import RESTRICTED_USER
from harnesses.kubernetes import Cluster, kubeconfig


async def test_restricted_token_works_in_its_namespace_and_is_refused_elsewhere(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    await cluster.grant_discovery_role(namespace)
    other_namespace = await cluster.create_namespace()
    restricted = kubeconfig(cluster.server, cluster.server.restricted_token)

    # Everything a worker and a watcher do works with the Role alone.
    host = await workers.start(await workers.pod("worker-0"), kubeconfig=restricted)
    instance = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    watcher = workers.backend(kubeconfig=restricted)
    assert await watcher.list(everything()) == [instance]
    async with watcher.watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(instance,))

    # Another namespace is refused, and the error says what and how to fix it.
    elsewhere = KubernetesDiscovery(namespace=other_namespace, kubeconfig=restricted)
    workers.backends.append(elsewhere)
    pattern = (
        rf"(?s)EndpointSlices in {other_namespace}: forbidden.*{RESTRICTED_USER}.*bind the discovery Role"
    )
    with pytest.raises(AccessDeniedError, match=pattern) as refused:
        await elsewhere.list(everything())
    print(refused.value)
    with pytest.raises(AccessDeniedError, match=pattern):
        async with elsewhere.watch(everything()):
            pass

    # The Role grants nothing beyond discovery: no secrets, even in its own namespace.
    api = await connect(restricted)
    try:
        with pytest.raises(KubeStatusError) as caught:
            await api.request("GET", f"/api/v1/namespaces/{namespace}/secrets", what="listing secrets")
        assert caught.value.status == 403
    finally:
        await api.aclose()


async def test_a_bad_token_is_reported_clearly(cluster: Cluster, namespace: str) -> None:
    backend = KubernetesDiscovery(namespace=namespace, kubeconfig=kubeconfig(cluster.server, "not-a-token"))
    try:
        with pytest.raises(AccessDeniedError, match=r"rejected our credentials \(HTTP 401"):
            await backend.list(everything())
    finally:
        await backend.aclose()


async def test_an_unreachable_server_is_reported_clearly(cluster: Cluster, namespace: str) -> None:
    config = kubeconfig(cluster.server, cluster.server.admin_token, "https://127.0.0.1:9")
    backend = KubernetesDiscovery(namespace=namespace, kubeconfig=config)
    try:
        with pytest.raises(
            BackendUnavailableError, match=r"API server at https://127.0.0.1:9 is unreachable"
        ):
            await backend.list(everything())
    finally:
        await backend.aclose()
