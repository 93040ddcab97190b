"""Conformance harness for the Kubernetes backend, against a real kube-apiserver (no kubelet, no controllers).

Each test gets a namespace of its own. Every backend the harness makes is a separate worker: when its
runtime grants the lease, the harness creates a Pod object and an EndpointSlice (with the discovery labels)
that lists the pod as ready, as the EndpointSlice controller would once the pod's readiness probe passes.
Backends reach the API server through a TCP proxy, so :meth:`break_watches` can reset every connection.

What applies here (``supports``): ``break_watches`` and ``conflict``. Not ``lease_ttl`` (Kubernetes has no
TTL: a crashed worker leaves when its pod stops being ready, tested in ``tests/backends/kubernetes``) and not
``raw_write`` (there are no keys; malformed custom resources are tested there too). ``kill_lease`` is the
default one: another backend revokes the lease, which deletes the worker's DynamoWorkerMetadata.
"""

from __future__ import annotations

import base64
import itertools
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
from dyndisc.testing.servers import KubeApiServer, TcpProxy
from dyndisc.testing.servers.kube import RESTRICTED_USER

from .base import Harness

NAME = "kubernetes"

_installed: set[str] = set()

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

    async def create_pod(self, namespace: str, name: str) -> str:
        """Create a Pod object (nothing runs it) and return its uid."""
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "worker", **DISCOVERY_LABELS}},
            "spec": {"containers": [{"name": "main", "image": "worker:test"}]},
        }
        created = await self.call("POST", f"/api/v1/namespaces/{namespace}/pods", body=body)
        return str(created["metadata"]["uid"])

    async def delete_pod(self, namespace: str, name: str) -> None:
        try:
            await self.call(
                "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body={"gracePeriodSeconds": 0}
            )
        except KubeStatusError as exc:
            if exc.status != 404:
                raise

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
        """A Pod object listed as ready in an EndpointSlice of its own; returns its identity."""
        uid = await self.create_pod(namespace, name)
        await self.set_slice(namespace, f"{name}-slice", [SliceEndpoint(pod=name, uid=uid)])
        return PodIdentity(name=name, namespace=namespace, uid=uid)

    def crs_path(self, namespace: str) -> str:
        return f"/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas"


class HarnessBackend(KubernetesDiscovery):
    """A worker whose pod is created (and made ready) when its runtime first grants the lease."""

    def __init__(self, harness: KubernetesHarness, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._harness = harness

    async def grant_lease(self, ttl: float) -> Lease:
        if self.identity is None:
            self.identity = await self._harness.cluster.ready_pod(
                self._harness.namespace, self._harness.next_pod()
            )
        return await super().grant_lease(ttl)


class KubernetesHarness(Harness):
    name = NAME
    lease_ttl = 2.0
    supports = frozenset({"break_watches", "conflict"})

    def __init__(self, cluster: Cluster, namespace: str, proxy: TcpProxy) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.proxy = proxy
        self._names = itertools.count()
        self.config = kubeconfig(cluster.server, cluster.server.admin_token, proxy.url_for("https"))

    def next_pod(self) -> str:
        return f"worker-{next(self._names)}"

    def new_backend(self) -> DiscoveryBackend:
        return HarnessBackend(self, namespace=self.namespace, kubeconfig=self.config, debounce=0.05)

    async def break_watches(self) -> None:
        self.proxy.cut()
        self.proxy.restore()


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    server: KubeApiServer = request.getfixturevalue("kube_apiserver")
    make_proxy = request.getfixturevalue("tcp_proxy")
    proxy: TcpProxy = make_proxy(server.host, server.port)
    async with Cluster.open(server) as cluster:
        namespace = await cluster.create_namespace()
        yield KubernetesHarness(cluster, namespace, proxy)
