"""The real kube-controller-manager against the test kube-apiserver: EndpointSlices and garbage collection.

Nothing plays kubelet, so each test does what one would: it creates a Node, Pods bound to it
(``spec.nodeName``), and writes their ``status`` (phase Running, pod IP, the Ready condition). Everything
else (the slices, their conditions, deleting what a deleted pod owned) is the controllers' doing. Waits poll
the API with a deadline.
"""

from __future__ import annotations

import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest

from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError
from dyndisc.backends.kubernetes.join import DISCOVERY_LABELS
from dyndisc.testing.servers import KubeCluster
from dyndisc.testing.servers.kube_build import KUBE_VERSION
from harnesses.kubernetes import Cluster

TIMEOUT = 30.0
POLL = 0.02
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
ZONE = "zone-a"
CRS = "/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas"

T = TypeVar("T")


@pytest.fixture
async def cluster(dyndisc_kube_cluster: KubeCluster) -> AsyncIterator[Cluster]:
    """Admin access to the API server that the session's controller-manager works on."""
    async with Cluster.open(dyndisc_kube_cluster.apiserver) as found:
        yield found


@pytest.fixture
async def namespace(cluster: Cluster) -> str:
    return await cluster.create_namespace("ctl")


@pytest.fixture
async def node(cluster: Cluster) -> str:
    """A Node for this test's pods: the EndpointSlice controller skips pods whose node it cannot find."""
    return await create_node(cluster, f"node-{uuid.uuid4().hex[:8]}")


# -- what a test does in place of kubelet and kubectl ------------------------------------------------------
async def create_node(cluster: Cluster, name: str) -> str:
    labels = {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": ZONE}
    await cluster.call("POST", "/api/v1/nodes", body={"metadata": {"name": name, "labels": labels}})
    return name


async def create_service(cluster: Cluster, namespace: str, name: str) -> None:
    """A Service with the discovery labels, selecting the pods labelled ``app=<name>``."""
    body = {
        "metadata": {"name": name, "labels": DISCOVERY_LABELS},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "system", "port": 9090, "targetPort": "system", "protocol": "TCP"}],
        },
    }
    await cluster.call("POST", f"/api/v1/namespaces/{namespace}/services", body=body)


async def create_pod(cluster: Cluster, namespace: str, name: str, app: str, node: str) -> str:
    """A Pod bound to ``node`` (as if scheduled there), not yet running; returns its uid."""
    body = {
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "image": "worker:test",
                    "ports": [{"name": "system", "containerPort": 9090, "protocol": "TCP"}],
                }
            ],
        },
    }
    created = await cluster.call("POST", f"/api/v1/namespaces/{namespace}/pods", body=body)
    return str(created["metadata"]["uid"])


async def set_pod_status(cluster: Cluster, namespace: str, name: str, ip: str, *, ready: bool) -> None:
    """Write the status kubelet would for a running pod whose readiness probe passes (or fails)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready_status = "True" if ready else "False"
    conditions = [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": ready_status, "lastTransitionTime": now},
        {"type": "Ready", "status": ready_status, "lastTransitionTime": now},
    ]
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": conditions}
    await cluster.call(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{name}/status",
        body={"status": status},
        content_type="application/merge-patch+json",
    )


async def delete_pod(cluster: Cluster, namespace: str, name: str, grace_seconds: int | None = None) -> None:
    """Delete a pod. A pod bound to a node is only marked terminating (kubelet would stop it, then delete
    it for good with a grace period of 0) unless ``grace_seconds`` is 0."""
    body = {} if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
    await cluster.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)


async def slices(cluster: Cluster, namespace: str, service: str) -> list[JsonObject]:
    """The Service's EndpointSlices."""
    found = await cluster.call(
        "GET",
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
        query={"labelSelector": f"{SERVICE_NAME_LABEL}={service}"},
    )
    return list(found.get("items") or [])


async def endpoint_of(cluster: Cluster, namespace: str, service: str, pod: str) -> JsonObject | None:
    """The endpoint the Service's slices list for ``pod`` (by name), if any."""
    for found in await slices(cluster, namespace, service):
        for endpoint in found.get("endpoints") or ():
            if (endpoint.get("targetRef") or {}).get("name") == pod:
                return dict(endpoint)
    return None


async def wait_for(
    fetch: Callable[[], Awaitable[T]], check: Callable[[T], bool], what: str
) -> tuple[T, float]:
    """Poll ``fetch()`` until ``check`` accepts what it returns; return that and the seconds it took."""
    started = time.monotonic()
    deadline = started + TIMEOUT
    while True:
        value = await fetch()
        if check(value):
            return value, time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}; last seen: {value!r}")
        await anyio.sleep(POLL)


def conditions(endpoint: JsonObject | None) -> dict[str, Any] | None:
    return None if endpoint is None else dict(endpoint.get("conditions") or {})


def listed_as(*, ready: bool, serving: bool, terminating: bool) -> Callable[[JsonObject | None], bool]:
    """A check: the endpoint is there, with exactly these conditions."""
    expected = {"ready": ready, "serving": serving, "terminating": terminating}
    return lambda endpoint: conditions(endpoint) == expected


async def gone(cluster: Cluster, path: str) -> bool:
    try:
        await cluster.call("GET", path)
    except KubeStatusError as exc:
        if exc.status == 404:
            return True
        raise
    return False


# -- the tests ----------------------------------------------------------------------------------------------
def test_controller_manager_runs_the_pinned_release_and_reports_its_controllers(
    dyndisc_kube_cluster: KubeCluster,
) -> None:
    manager = dyndisc_kube_cluster.controller_manager
    version = subprocess.run([str(manager.binary), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.split() == ["Kubernetes", KUBE_VERSION]
    status, report = manager.health()
    assert status == 200
    assert sorted(line for line in report.splitlines() if line.startswith("[")) == [
        "[+]endpointslice-controller ok",
        "[+]garbage-collector-controller ok",
    ]


async def test_slice_follows_pod_readiness(
    cluster: Cluster, namespace: str, node: str, record_property: Callable[[str, object], None]
) -> None:
    await create_service(cluster, namespace, "workers")
    uid = await create_pod(cluster, namespace, "worker-0", "workers", node)

    # The controller writes a slice for the Service at once, empty while the pod has no IP.
    (first, *_), _ = await wait_for(
        lambda: slices(cluster, namespace, "workers"), lambda found: bool(found), "the Service's slice"
    )
    labels = first["metadata"]["labels"]
    assert {k: labels.get(k) for k in DISCOVERY_LABELS} == DISCOVERY_LABELS  # the Service's labels, copied
    assert labels[SERVICE_NAME_LABEL] == "workers"
    assert labels[MANAGED_BY_LABEL] == "endpointslice-controller.k8s.io"
    assert not first.get("endpoints")  # nor ports: they come from the pods

    await set_pod_status(cluster, namespace, "worker-0", "192.0.2.10", ready=True)
    endpoint, _ = await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "worker-0"),
        listed_as(ready=True, serving=True, terminating=False),
        "the pod listed as ready",
    )
    assert endpoint is not None
    assert endpoint["addresses"] == ["192.0.2.10"]
    assert endpoint["targetRef"] == {"kind": "Pod", "namespace": namespace, "name": "worker-0", "uid": uid}
    assert endpoint["nodeName"] == node
    assert endpoint["zone"] == ZONE  # from the Node's topology label
    (found,) = await slices(cluster, namespace, "workers")
    assert found["ports"] == [{"name": "system", "port": 9090, "protocol": "TCP"}]  # the container's port

    flips: list[float] = []
    for ready in (False, True, False, True, False):
        await set_pod_status(cluster, namespace, "worker-0", "192.0.2.10", ready=ready)
        _, took = await wait_for(
            lambda: endpoint_of(cluster, namespace, "workers", "worker-0"),
            listed_as(ready=ready, serving=ready, terminating=False),
            f"ready={ready} in the slice",
        )
        flips.append(took)
    record_property("readiness_flip_seconds", [round(f, 3) for f in flips])
    record_property("readiness_flip_median_seconds", round(statistics.median(flips), 3))


async def test_terminating_pod_is_serving_but_not_ready(cluster: Cluster, namespace: str, node: str) -> None:
    await create_service(cluster, namespace, "workers")
    await create_pod(cluster, namespace, "worker-0", "workers", node)
    await set_pod_status(cluster, namespace, "worker-0", "192.0.2.20", ready=True)
    await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "worker-0"),
        listed_as(ready=True, serving=True, terminating=False),
        "the pod listed as ready",
    )

    # Graceful deletion: the pod stays, terminating, until kubelet (here: the test) deletes it for good.
    await delete_pod(cluster, namespace, "worker-0")
    pod = await cluster.call("GET", f"/api/v1/namespaces/{namespace}/pods/worker-0")
    assert pod["metadata"].get("deletionTimestamp")
    await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "worker-0"),
        listed_as(ready=False, serving=True, terminating=True),
        "the pod listed as terminating, still serving",
    )

    # Its readiness probe fails while it shuts down: no longer serving either.
    await set_pod_status(cluster, namespace, "worker-0", "192.0.2.20", ready=False)
    await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "worker-0"),
        listed_as(ready=False, serving=False, terminating=True),
        "the terminating pod no longer serving",
    )

    await delete_pod(cluster, namespace, "worker-0", grace_seconds=0)
    await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "worker-0"),
        lambda found: found is None,
        "the deleted pod gone from the slice",
    )


async def test_garbage_collector_deletes_what_a_deleted_pod_owned(
    cluster: Cluster, namespace: str, node: str, record_property: Callable[[str, object], None]
) -> None:
    uid = await create_pod(cluster, namespace, "worker-0", "workers", node)
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "worker-0", "uid": uid}
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    crs = CRS.format(namespace=namespace)
    await cluster.call("POST", configmaps, body={"metadata": {"name": "owned", "ownerReferences": [owner]}})
    await cluster.call("POST", configmaps, body={"metadata": {"name": "not-owned"}})
    await cluster.call(
        "POST",
        crs,
        body={
            "apiVersion": "nvidia.com/v1alpha1",
            "kind": "DynamoWorkerMetadata",
            "metadata": {"name": "worker-0", "ownerReferences": [owner]},
            "spec": {"data": {"endpoints": {}}},
        },
    )

    await delete_pod(cluster, namespace, "worker-0", grace_seconds=0)
    _, configmap_took = await wait_for(
        lambda: gone(cluster, f"{configmaps}/owned"), bool, "the owned ConfigMap deleted"
    )
    _, cr_took = await wait_for(
        lambda: gone(cluster, f"{crs}/worker-0"), bool, "the owned DynamoWorkerMetadata deleted"
    )
    assert not await gone(cluster, f"{configmaps}/not-owned")
    record_property(
        "gc_seconds", {"configmap": round(configmap_took, 3), "cr": round(configmap_took + cr_took, 3)}
    )


async def test_pod_on_a_missing_node_is_left_out_until_the_node_exists(
    cluster: Cluster, namespace: str, node: str
) -> None:
    ghost = f"node-{uuid.uuid4().hex[:8]}"
    await create_service(cluster, namespace, "workers")
    await create_pod(cluster, namespace, "lost", "workers", ghost)
    await set_pod_status(cluster, namespace, "lost", "192.0.2.30", ready=True)
    await create_pod(cluster, namespace, "placed", "workers", node)
    await set_pod_status(cluster, namespace, "placed", "192.0.2.31", ready=True)

    # Once the later pod is listed, the controller has seen both: the one on an unknown node is skipped.
    await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "placed"),
        lambda found: found is not None,
        "the pod on a known node listed",
    )
    assert await endpoint_of(cluster, namespace, "workers", "lost") is None

    # The controller retries the Service with a backoff (1 s, 2 s, ...), and finds the Node then.
    await create_node(cluster, ghost)
    await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "lost"),
        listed_as(ready=True, serving=True, terminating=False),
        "the pod listed once its Node exists",
    )


async def test_the_kubelet_stand_in_drives_the_controllers(
    dyndisc_kube_cluster: KubeCluster, cluster: Cluster
) -> None:
    # dyndisc.testing.kubelet.Kubelet (what the chaos runs use) does from a thread what the tests above do.
    from dyndisc.testing.kubelet import Kubelet

    kubelet = Kubelet(dyndisc_kube_cluster.apiserver)
    namespace = f"kubelet-{uuid.uuid4().hex[:8]}"
    await anyio.to_thread.run_sync(kubelet.create_namespace, namespace)
    await anyio.to_thread.run_sync(kubelet.create_service, namespace, "workers", "worker")
    uid = await anyio.to_thread.run_sync(lambda: kubelet.create_pod(namespace, "w0", app="worker"))
    assert await anyio.to_thread.run_sync(kubelet.set_ready, namespace, "w0", True)
    endpoint, _ = await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "w0"),
        listed_as(ready=True, serving=True, terminating=False),
        "the pod listed as ready",
    )
    assert endpoint is not None
    assert endpoint["targetRef"]["uid"] == uid
    await anyio.to_thread.run_sync(kubelet.set_ready, namespace, "w0", False)
    await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "w0"),
        listed_as(ready=False, serving=False, terminating=False),
        "the pod listed as not ready",
    )
    await anyio.to_thread.run_sync(kubelet.delete_pod, namespace, "w0", 0)
    await wait_for(
        lambda: endpoint_of(cluster, namespace, "workers", "w0"), lambda found: found is None, "the pod gone"
    )
    assert not await anyio.to_thread.run_sync(kubelet.set_ready, namespace, "w0", True), "a gone pod says so"
