"""What a kubelet (and the reference's operator) would write, for a kube-apiserver with no kubelet.

With the real kube-controller-manager running (:class:`~dyndisc.testing.servers.KubeCluster`), these are the
only objects a test or a chaos run has to write itself: a Node, a Service with the discovery labels (the
operator makes one per component), Pods bound to the Node, and their status as kubelet reports it once a
container runs and its readiness probe passes (or fails). The EndpointSlice controller and the garbage
collector do the rest.

:class:`Kubelet` sends them as the API server's admin with the synchronous client of
:class:`~dyndisc.testing.servers.KubeApiServer` (call it from a thread inside an event loop); the
``*_manifest`` / :func:`running_status` functions give the bodies to async callers.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from dyndisc.backends.kubernetes.join import DISCOVERY_LABELS
from dyndisc.testing.servers.kube import KubeApiServer

__all__ = ["Kubelet", "KubeletError", "node_manifest", "pod_manifest", "running_status", "service_manifest"]

#: The port name the operator gives a component's Service (the system port).
PORT_NAME = "system"


class KubeletError(RuntimeError):
    """The API server refused (or could not take) what the kubelet stand-in wrote."""

    def __init__(self, what: str, status: int, body: Any) -> None:
        self.status = status
        super().__init__(f"{what}: HTTP {status}: {body}")


def node_manifest(name: str) -> dict[str, Any]:
    """A Node (the EndpointSlice controller leaves out pods whose node it cannot find)."""
    labels = {"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": "zone-a"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}


def service_manifest(name: str, app: str) -> dict[str, Any]:
    """A Service with the discovery labels, selecting the pods labelled ``app``: what the reference's
    operator makes for a component; the EndpointSlice controller copies its labels to the slices."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": dict(DISCOVERY_LABELS)},
        "spec": {
            "selector": {"app": app},
            "ports": [{"name": PORT_NAME, "port": 9090, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def pod_manifest(
    name: str, *, app: str, node: str | None, containers: Sequence[str] = ("main",)
) -> dict[str, Any]:
    """A Pod labelled ``app`` (and with the discovery labels, as the operator's pods), bound to ``node``."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": c,
                "image": "worker:test",
                "ports": [{"name": PORT_NAME, "containerPort": 9090, "protocol": "TCP"}],
            }
            for c in containers
        ]
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app, **DISCOVERY_LABELS}},
        "spec": spec,
    }


def running_status(
    ip: str, *, ready: Mapping[str, bool] | bool, containers: Sequence[str] = ("main",)
) -> dict[str, Any]:
    """The ``status`` kubelet writes for a running pod: ``ready`` says whose readiness probe passes (every
    container, or per container); the pod is ready when all of them are."""
    flags = {c: ready if isinstance(ready, bool) else bool(ready.get(c)) for c in containers}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pod_ready = "True" if all(flags.values()) else "False"
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": pod_ready, "lastTransitionTime": now},
            {"type": "Ready", "status": pod_ready, "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": c,
                "ready": flag,
                "restartCount": 0,
                "image": "worker:test",
                "imageID": "",
                "started": True,
                "state": {"running": {"startedAt": now}},
            }
            for c, flag in flags.items()
        ],
    }


class Kubelet:
    """A kubelet stand-in on one Node of ``server``: creates the Node, runs pods on it, reports their status.

    Not thread-safe per pod: the caller orders the writes of one pod (kubelet does).
    """

    def __init__(self, server: KubeApiServer, node: str | None = None) -> None:
        self.server = server
        self.node = node or f"node-{uuid.uuid4().hex[:8]}"
        self._ips = itertools.count(1)
        self._pod_ips: dict[tuple[str, str], str] = {}
        self._node_created = False

    def _call(self, method: str, path: str, body: Any = None, *, what: str, ok: Sequence[int] = ()) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
        status, answer = self.server.request(method, path, payload, content_type=content_type)
        if not 200 <= status < 300 and status not in ok:
            raise KubeletError(what, status, answer)
        return answer

    def ensure_node(self) -> str:
        """Create the Node (once)."""
        if not self._node_created:
            self._call("POST", "/api/v1/nodes", node_manifest(self.node), what="creating the node", ok=(409,))
            self._node_created = True
        return self.node

    def create_namespace(self, name: str) -> None:
        """Create a namespace (there is no namespace controller to delete it again)."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self._call("POST", "/api/v1/namespaces", body, what=f"creating namespace {name}", ok=(409,))

    def create_service(self, namespace: str, name: str, app: str) -> None:
        """A discovery Service selecting the pods labelled ``app``."""
        self._call(
            "POST",
            f"/api/v1/namespaces/{namespace}/services",
            service_manifest(name, app),
            what=f"creating Service {namespace}/{name}",
            ok=(409,),
        )

    def create_pod(
        self, namespace: str, name: str, *, app: str, containers: Sequence[str] = ("main",)
    ) -> str:
        """A Pod on the Node, not running yet; returns its uid."""
        self.ensure_node()
        created = self._call(
            "POST",
            f"/api/v1/namespaces/{namespace}/pods",
            pod_manifest(name, app=app, node=self.node, containers=containers),
            what=f"creating pod {namespace}/{name}",
        )
        return str(created["metadata"]["uid"])

    def set_ready(
        self,
        namespace: str,
        name: str,
        ready: Mapping[str, bool] | bool,
        containers: Sequence[str] = ("main",),
    ) -> bool:
        """Report the pod running, its readiness probes passing or not; false if the pod is gone."""
        ip = self._pod_ips.get((namespace, name))
        if ip is None:
            n = next(self._ips)
            ip = self._pod_ips[(namespace, name)] = f"10.30.{n // 250 % 250}.{n % 250 + 1}"
        answer = self._call(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": running_status(ip, ready=ready, containers=containers)},
            what=f"writing the status of pod {namespace}/{name}",
            ok=(404,),
        )
        return bool(answer) and answer.get("kind") == "Pod"

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = 0) -> None:
        """Delete the pod: for good (``0``, as kubelet finishes a deletion) or gracefully (``None``)."""
        body = {} if grace_seconds is None else {"gracePeriodSeconds": grace_seconds}
        self._call(
            "DELETE",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            body,
            what=f"deleting pod {namespace}/{name}",
            ok=(404,),
        )
