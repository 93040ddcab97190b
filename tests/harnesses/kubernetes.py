"""Conformance harness for the Kubernetes backend, against a real kube-apiserver with the real
kube-controller-manager (its EndpointSlice controller and garbage collector; nothing plays kubelet but us).

Each test gets a namespace of its own with a Service carrying the discovery labels, as the reference's
operator creates for a component. Every backend the harness makes is a separate worker: when its runtime
grants the lease, the harness creates a Pod bound to a Node and writes its status as kubelet would once the
pod runs and its readiness probe passes; the EndpointSlice controller then lists it in the Service's slice.
Backends reach the API server through a TCP proxy, so :meth:`break_watches` can reset every connection.

:class:`Cluster` also writes EndpointSlices by hand (:meth:`Cluster.set_slice`), for the tests that need
what the controller never writes (malformed slices) or that run on an API server without controllers.

What applies here (``supports``): ``break_watches`` and ``conflict``. Not ``lease_ttl`` (Kubernetes has no
TTL: a crashed worker leaves when its pod stops being ready, tested in ``tests/backends/kubernetes``) and not
``raw_write`` (there are no keys; malformed custom resources are tested there too). ``kill_lease`` is the
default one: another backend revokes the lease, which deletes the worker's DynamoWorkerMetadata.
"""

from __future__ import annotations

import base64
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import yaml

from dyndisc import DiscoveryBackend, Lease
from dyndisc.backends.kubernetes import KubernetesDiscovery, PodIdentity, manifest
from dyndisc.backends.kubernetes.api import KubeApi, connect
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError
from dyndisc.backends.kubernetes.join import DISCOVERY_LABELS
from dyndisc.testing.kubelet import node_manifest, pod_manifest, running_status, service_manifest
from dyndisc.testing.servers import KubeApiServer, KubeCluster, TcpProxy
from dyndisc.testing.servers.kube import RESTRICTED_USER

from .base import Harness

NAME = "kubernetes"

_installed: set[str] = set()
#: The Node of each API server (by URL) that test pods are bound to.
_nodes: dict[str, str] = {}
#: Pod IPs handed out (kubelet would have the network plugin pick one).
_ips = itertools.count(1)
#: The label of the pods a harness namespace's Service selects.
APP = "worker"
#: Seconds a test waits for the controllers to act on what it wrote.
CONTROLLER_TIMEOUT = 30.0

#: Where each kind in the shipped manifests lives in the API (what kubectl would look up by discovery).
_RESOURCE_PATHS = {
    "CustomResourceDefinition": "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
    "ServiceAccount": "/api/v1/namespaces/{namespace}/serviceaccounts/{name}",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles/{name}",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings/{name}",
}


async def apply_manifest(cluster: Cluster, text: str) -> None:
    """Server-side apply every document of a manifest, as ``kubectl apply --server-side -f -`` would.

    The tests need no kubectl binary: the API server itself checks and stores what the users apply.
    """
    for document in yaml.safe_load_all(text):
        if not document:
            continue
        meta = document["metadata"]
        path = _RESOURCE_PATHS[document["kind"]].format(name=meta["name"], namespace=meta.get("namespace"))
        await cluster.apply(path, document)


def kubeconfig(server: KubeApiServer, token: str, url: str | None = None) -> JsonObject:
    """A kubeconfig (as a dict) for ``token``, pointing at ``url`` (a proxy) or the server itself."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": url or server.url,
                    "certificate-authority-data": base64.b64encode(server.ca_pem.encode()).decode(),
                },
            }
        ],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }


@dataclass(frozen=True)
class SliceEndpoint:
    """One endpoint of an EndpointSlice, as the EndpointSlice controller writes it for a pod."""

    pod: str
    uid: str
    ready: bool | None = True
    serving: bool | None = None
    terminating: bool | None = None


class Cluster:
    """Admin operations tests need: namespaces, Pods and EndpointSlices (what kubelet and controllers do)."""

    def __init__(self, server: KubeApiServer, api: KubeApi) -> None:
        self.server = server
        self.api = api

    @classmethod
    @asynccontextmanager
    async def open(cls, server: KubeApiServer) -> AsyncIterator[Cluster]:
        """Admin access to ``server``, with the shipped CRD installed (once per server) and served."""
        api = await connect(kubeconfig(server, server.admin_token))
        try:
            cluster = cls(server, api)
            if server.url not in _installed:
                await cluster.install_crd()
                _installed.add(server.url)
            yield cluster
        finally:
            await api.aclose()

    async def install_crd(self) -> None:
        """Apply the shipped CRD and wait until the API server serves it (its Established condition)."""
        await apply_manifest(self, manifest("crd.yaml"))
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/dynamoworkermetadatas.nvidia.com"
        with anyio.fail_after(60):
            # Nothing notifies us short of a watch; the condition turns true within a second.
            while not any(  # noqa: ASYNC110 - a condition on the server, not in this process
                c.get("type") == "Established" and c.get("status") == "True"
                for c in ((await self.call("GET", path)).get("status") or {}).get("conditions") or ()
            ):
                await anyio.sleep(0.1)

    async def call(self, method: str, path: str, **kwargs: Any) -> JsonObject:
        return await self.api.request(method, path, what=f"{method} {path}", **kwargs)

    async def apply(self, path: str, body: JsonObject) -> JsonObject:
        return await self.call(
            "PATCH",
            path,
            query={"fieldManager": "dyndisc-tests", "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def bind_to_restricted_user(self, namespace: str, role: str, binding: str) -> None:
        """Bind the Role ``role`` of ``namespace`` to the test server's restricted user."""
        await self.call(
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
            body={
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": RESTRICTED_USER}
                ],
            },
        )

    async def grant_discovery_role(self, namespace: str) -> None:
        """Apply the shipped rbac.yaml in ``namespace`` and bind its Role to the restricted user as well."""
        await apply_manifest(self, manifest("rbac.yaml", namespace))
        await self.bind_to_restricted_user(namespace, "dyndisc-discovery", "restricted-discovery")

    async def create_namespace(self, prefix: str = "dd") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await self.call("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
        return name

    async def create_pod(
        self,
        namespace: str,
        name: str,
        *,
        app: str = APP,
        node: str | None = None,
        containers: Sequence[str] = ("main",),
    ) -> str:
        """Create a Pod object (labelled ``app``, bound to ``node`` if given) and return its uid; nothing runs
        it until :meth:`set_pod_status` says it does."""
        body = pod_manifest(name, app=app, node=node, containers=containers)
        created = await self.call("POST", f"/api/v1/namespaces/{namespace}/pods", body=body)
        return str(created["metadata"]["uid"])

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = 0) -> None:
        """Delete a pod: at once (``grace_seconds=0``, as kubelet finishes a deletion), or gracefully
        (``None``: a pod bound to a node then only turns terminating, until deleted again with 0)."""
        body = {} if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        try:
            await self.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)
        except KubeStatusError as exc:
            if exc.status != 404:
                raise

    # -- what kubelet would do (the controllers do the rest) -------------------------------------------------
    async def node(self) -> str:
        """The Node test pods run on (created once per API server): the EndpointSlice controller leaves out
        pods whose node it cannot find."""
        found = _nodes.get(self.server.url)
        if found is None:
            found = f"node-{uuid.uuid4().hex[:8]}"
            await self.call("POST", "/api/v1/nodes", body=node_manifest(found))
            _nodes[self.server.url] = found
        return found

    async def create_service(self, namespace: str, name: str = APP, *, app: str | None = None) -> None:
        """A Service carrying the discovery labels (as the reference's operator makes per component),
        selecting the pods labelled ``app`` (default: its own name)."""
        body = service_manifest(name, app or name)
        await self.call("POST", f"/api/v1/namespaces/{namespace}/services", body=body)

    async def set_pod_status(
        self,
        namespace: str,
        name: str,
        *,
        ready: bool,
        containers: Sequence[str] = ("main",),
        not_ready: Sequence[str] = (),
    ) -> None:
        """Write the status kubelet would for a running pod whose readiness probes pass (``ready``), except
        for the ``not_ready`` containers (the pod is then not ready either)."""
        pod = await self.call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        ip = (pod.get("status") or {}).get("podIP") or f"10.20.{_ips_part()}"
        flags = {c: ready and c not in not_ready for c in containers}
        await self.call(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            body={"status": running_status(ip, ready=flags, containers=containers)},
            content_type="application/merge-patch+json",
        )

    async def run_pod(
        self,
        namespace: str,
        name: str,
        *,
        app: str = APP,
        ready: bool = True,
        wait: bool = True,
        containers: Sequence[str] = ("main",),
    ) -> PodIdentity:
        """A pod on the Node, running (ready or not); with ``wait``, return once the EndpointSlice controller
        lists it as such (the Service selecting ``app`` must exist)."""
        uid = await self.create_pod(namespace, name, app=app, node=await self.node(), containers=containers)
        await self.set_pod_status(namespace, name, ready=ready, containers=containers)
        if wait:
            await self.wait_listed(namespace, name, ready=ready)
        return PodIdentity(name=name, namespace=namespace, uid=uid)

    async def endpoint_of(self, namespace: str, pod: str) -> JsonObject | None:
        """The endpoint a discovery EndpointSlice of ``namespace`` lists for ``pod``, if any."""
        found = await self.call(
            "GET",
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            query={"labelSelector": ",".join(f"{k}={v}" for k, v in DISCOVERY_LABELS.items())},
        )
        for item in found.get("items") or ():
            for endpoint in item.get("endpoints") or ():
                if (endpoint.get("targetRef") or {}).get("name") == pod:
                    return dict(endpoint)
        return None

    async def wait_listed(
        self,
        namespace: str,
        pod: str,
        *,
        ready: bool | None = True,
        serving: bool | None = None,
        timeout: float = CONTROLLER_TIMEOUT,
    ) -> None:
        """Wait until the controller lists ``pod`` with that ``ready`` (and ``serving``) condition, or not at
        all (``ready=None``)."""
        deadline = time.monotonic() + timeout
        while True:
            endpoint = await self.endpoint_of(namespace, pod)
            conditions = (endpoint or {}).get("conditions") or {}
            if (ready is None and endpoint is None) or (
                endpoint is not None
                and conditions.get("ready") is ready
                and (serving is None or conditions.get("serving") is serving)
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the EndpointSlice controller did not list pod {namespace}/{pod} with ready={ready} "
                    f"serving={serving} within {timeout}s; last seen: {endpoint}"
                )
            await anyio.sleep(0.02)

    async def wait_gone(self, path: str) -> float:
        """Wait until ``GET path`` answers 404 (the garbage collector's doing); return the seconds it took."""
        started = time.monotonic()
        while True:
            try:
                await self.call("GET", path)
            except KubeStatusError as exc:
                if exc.status == 404:
                    return time.monotonic() - started
                raise
            if time.monotonic() > started + CONTROLLER_TIMEOUT:
                raise AssertionError(f"{path} still exists after {CONTROLLER_TIMEOUT}s")
            await anyio.sleep(0.05)

    async def set_slice(
        self,
        namespace: str,
        name: str,
        endpoints: Sequence[SliceEndpoint],
        *,
        labels: dict[str, str] | None = None,
    ) -> None:
        """Create or replace the EndpointSlice ``name`` with ``endpoints`` and the discovery labels."""
        items = []
        for i, e in enumerate(endpoints):
            conditions = {
                k: v
                for k, v in (("ready", e.ready), ("serving", e.serving), ("terminating", e.terminating))
                if v is not None
            }
            items.append(
                {
                    "addresses": [f"10.1.{i // 250}.{i % 250 + 1}"],
                    "conditions": conditions,
                    "targetRef": {"kind": "Pod", "name": e.pod, "namespace": namespace, "uid": e.uid},
                }
            )
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": DISCOVERY_LABELS if labels is None else labels,
            },
            "addressType": "IPv4",
            "endpoints": items,
            "ports": [{"name": "system", "port": 9090, "protocol": "TCP"}],
        }
        await self.apply(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}", body)

    async def delete_slice(self, namespace: str, name: str) -> None:
        await self.call("DELETE", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}")

    async def ready_pod(self, namespace: str, name: str) -> PodIdentity:
        """A Pod object listed as ready in a hand-written EndpointSlice of its own (for an API server without
        controllers); returns its identity."""
        uid = await self.create_pod(namespace, name)
        await self.set_slice(namespace, f"{name}-slice", [SliceEndpoint(pod=name, uid=uid)])
        return PodIdentity(name=name, namespace=namespace, uid=uid)

    def crs_path(self, namespace: str) -> str:
        return f"/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas"


def _ips_part() -> str:
    n = next(_ips)
    return f"{n // 256 % 256}.{n % 256 or 1}"


class HarnessBackend(KubernetesDiscovery):
    """A worker whose pod is started (and listed ready by the controller) when its runtime first grants the
    lease."""

    def __init__(self, harness: KubernetesHarness, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._harness = harness

    async def grant_lease(self, ttl: float) -> Lease:
        if self.identity is None:
            self.identity = await self._harness.start_pod()
        return await super().grant_lease(ttl)


class KubernetesHarness(Harness):
    name = NAME
    lease_ttl = 2.0
    supports = frozenset({"break_watches", "conflict"})

    def __init__(self, cluster: Cluster, namespace: str, proxy: TcpProxy, *, controllers: bool) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.proxy = proxy
        self.controllers = controllers
        self._names = itertools.count()
        self.config = kubeconfig(cluster.server, cluster.server.admin_token, proxy.url_for("https"))

    def next_pod(self) -> str:
        return f"worker-{next(self._names)}"

    async def start_pod(self) -> PodIdentity:
        """A new worker pod, ready: run by us as kubelet, listed by the controller (by hand without one)."""
        if self.controllers:
            return await self.cluster.run_pod(self.namespace, self.next_pod())
        return await self.cluster.ready_pod(self.namespace, self.next_pod())

    def new_backend(self) -> DiscoveryBackend:
        return HarnessBackend(self, namespace=self.namespace, kubeconfig=self.config, debounce=0.05)

    async def break_watches(self) -> None:
        self.proxy.cut()
        self.proxy.restore()


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    kube: KubeCluster = request.getfixturevalue("dyndisc_kube_cluster")
    server = kube.apiserver
    make_proxy = request.getfixturevalue("dyndisc_tcp_proxy")
    proxy: TcpProxy = make_proxy(server.host, server.port)
    async with Cluster.open(server) as cluster:
        namespace = await cluster.create_namespace()
        await cluster.create_service(namespace)
        yield KubernetesHarness(cluster, namespace, proxy, controllers=True)
