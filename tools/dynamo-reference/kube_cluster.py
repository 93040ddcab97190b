"""A test kube-apiserver (dyndisc's ``KubeApiServer``) set up for the reference's Kubernetes discovery.

Runs in dyndisc's venv (it needs the kube-apiserver that ``tools/kube-apiserver/build.sh`` builds)::

    PYTHONPATH=src /work/main/.venv/bin/python tools/dynamo-reference/kube_cluster.py --pods worker-0 client-0

Installs dyndisc's shipped ``DynamoWorkerMetadata`` CRD, creates a namespace and, for each ``--pods`` name,
a Pod object plus an EndpointSlice with the discovery labels listing it as ready (no kubelet runs: this is
what the EndpointSlice controller would write once the pod's readiness probe passes). Prints one line::

    {"event": "kube_ready", "kubeconfig": PATH, "namespace": NS, "pods": {"worker-0": "<uid>", ...}}

Run a reference process "in" a pod with ``KUBECONFIG=PATH POD_NAMESPACE=NS POD_NAME=worker-0
POD_UID=<uid>``. Stays until SIGTERM/SIGINT; then prints the DynamoWorkerMetadata objects left in the
namespace (``crs``) and stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from typing import Any

import yaml

from dyndisc.backends.kubernetes import manifest
from dyndisc.backends.kubernetes.api import connect
from dyndisc.backends.kubernetes.join import DISCOVERY_LABELS
from dyndisc.testing.servers.kube import KubeApiServer

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/dynamoworkermetadatas.nvidia.com"


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": round(time.time(), 4), **fields}) + "\n")
    sys.stdout.flush()


async def setup(server: KubeApiServer, pods: list[str]) -> tuple[str, dict[str, str], Any]:
    api = await connect(str(server.kubeconfig_path))

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        return await api.request(method, path, what=f"{method} {path}", **kwargs)

    crd = next(d for d in yaml.safe_load_all(manifest("crd.yaml")) if d)
    await call(
        "PATCH",
        CRD_PATH,
        query={"fieldManager": "dynamo-reference-tools", "force": "true"},
        body=crd,
        content_type="application/apply-patch+yaml",
    )
    for _ in range(600):
        status = (await call("GET", CRD_PATH)).get("status") or {}
        if any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in status.get("conditions") or ()
        ):
            break
        await asyncio.sleep(0.1)
    namespace = f"ref-{uuid.uuid4().hex[:8]}"
    await call("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
    uids: dict[str, str] = {}
    for i, name in enumerate(pods):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "worker", **DISCOVERY_LABELS}},
            "spec": {"containers": [{"name": "main", "image": "worker:test"}]},
        }
        created = await call("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)
        uids[name] = str(created["metadata"]["uid"])
        endpoint_slice = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-slice", "namespace": namespace, "labels": DISCOVERY_LABELS},
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [f"10.1.0.{i + 1}"],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": name, "namespace": namespace, "uid": uids[name]},
                }
            ],
            "ports": [{"name": "system", "port": 9090, "protocol": "TCP"}],
        }
        await call(
            "PATCH",
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}-slice",
            query={"fieldManager": "dynamo-reference-tools", "force": "true"},
            body=endpoint_slice,
            content_type="application/apply-patch+yaml",
        )
    return namespace, uids, call


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", nargs="+", default=["worker-0", "client-0"])
    args = p.parse_args()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = KubeApiServer(build=False)
    server.start()
    try:
        namespace, uids, call = await setup(server, args.pods)
        emit(
            "kube_ready",
            kubeconfig=str(server.kubeconfig_path),
            namespace=namespace,
            pods=uids,
            url=server.url,
        )
        await stop.wait()
        crs = await call("GET", f"/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas")
        emit("crs", items=[{"metadata": i["metadata"], "spec": i.get("spec")} for i in crs.get("items", [])])
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
