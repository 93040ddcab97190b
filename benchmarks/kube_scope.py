"""Kubernetes: the memory of one watcher at 10,000 workers, scoped to its deployment or not.

    python -m benchmarks.kube_scope [--workers 10000] [--deployments 20] [--runs 3] [--json out.json]
                                    [--quick]

On a kube-apiserver of its own (no controllers: the slices are written here, as the EndpointSlice controller
would), ``--workers`` workers are seeded in one namespace, split over ``--deployments``
DynamoGraphDeployments: each worker a DynamoWorkerMetadata labelled with its deployment's name (as a worker in
an operator's pod labels it), each deployment's pods listed ready in EndpointSlices of 100 endpoints (as the
controller cuts them) labelled with the discovery labels and the deployment (copied from its Service). Every
deployment has a Dynamo namespace of its own, as the operator gives it. A second namespace holds one
deployment alone.

Then ``--runs`` times, each watcher a backend of its own in this process, watching its deployment's Dynamo
namespace:

* **unscoped**: the whole namespace listed and watched (without ``DYN_KUBE_LABEL_SELECTOR``);
* **scoped**: ``DYN_KUBE_LABEL_SELECTOR`` selecting its deployment;
* **alone**: unscoped, in the namespace that holds only its deployment: what its own objects need.

Measured: what the process retains for the watcher once its first ``Resync`` arrived (tracemalloc, after a
collection; a first watcher, unmeasured, has paid for what a process allocates once), the objects its
reflectors hold, and the time to that ``Resync``. Medians of the runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import tracemalloc
import uuid
from typing import Any

import anyio

from benchmarks.cases import run_bounded
from benchmarks.kube_fleet import _kubeconfig
from dyndisc import InstanceQuery, Resync
from dyndisc.backends.kubernetes import KubernetesDiscovery, instance_id_for
from dyndisc.backends.kubernetes.api import KubeApi, connect
from dyndisc.backends.kubernetes.join import DISCOVERY_LABELS
from dyndisc.backends.kubernetes.manifests import manifest
from dyndisc.backends.kubernetes.scope import DEPLOYMENT_LABEL, deployment_selector
from dyndisc.testing.servers import KubeApiServer

#: Endpoints per EndpointSlice, as the EndpointSlice controller cuts them (its default maximum).
PER_SLICE = 100
CASES = ("unscoped", "scoped", "alone")


def graph(d: int) -> str:
    return f"graph-{d}"


async def seed(api: KubeApi, namespace: str, deployments: list[int], per_deployment: int) -> None:
    """``per_deployment`` workers of each deployment: their resources and their ready slices."""
    crs = f"/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas"
    pods: dict[int, list[tuple[str, str]]] = {d: [] for d in deployments}
    work = [(d, n) for d in deployments for n in range(per_deployment)]

    async def one(i: int) -> None:
        d, n = work[i]
        name, uid = f"{graph(d)}-w{n}", str(uuid.uuid4())
        iid = instance_id_for(name)
        record = {
            "type": "Endpoint",
            "namespace": f"dyn-{graph(d)}",
            "component": "backend",
            "endpoint": "generate",
            "instance_id": iid,
            "transport": {"tcp": f"10.{d % 250}.{n // 250}.{n % 250 + 1}:9000"},
        }
        body = {
            "apiVersion": "nvidia.com/v1alpha1",
            "kind": "DynamoWorkerMetadata",
            "metadata": {
                "name": name,
                "labels": {DEPLOYMENT_LABEL: graph(d)},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}],
            },
            "spec": {"data": {"endpoints": {f"dyn-{graph(d)}/backend/generate/{iid:x}": record}}},
        }
        await api.request("POST", crs, what=f"seeding {name}", body=body)
        pods[d].append((name, uid))

    await run_bounded(len(work), 32, one)
    for d, listed in pods.items():
        for s in range(0, len(listed), PER_SLICE):
            body = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{graph(d)}-worker-{s // PER_SLICE}",
                    "labels": {**DISCOVERY_LABELS, DEPLOYMENT_LABEL: graph(d)},
                },
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [f"10.200.{(s + i) // 250}.{(s + i) % 250 + 1}"],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "targetRef": {"kind": "Pod", "namespace": namespace, "name": name, "uid": uid},
                    }
                    for i, (name, uid) in enumerate(listed[s : s + PER_SLICE])
                ],
                "ports": [{"name": "system", "port": 9090, "protocol": "TCP"}],
            }
            path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            await api.request("POST", path, what="seeding a slice", body=body)


async def one_watcher(
    config: dict[str, Any], namespace: str, selector: str | None, expected: int
) -> dict[str, Any]:
    """One watcher of deployment 0's Dynamo namespace: what the process retains for it, and its reflectors."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    backend = KubernetesDiscovery(namespace=namespace, kubeconfig=config, label_selector=selector or "")
    try:
        async with backend.watch(InstanceQuery(namespace=f"dyn-{graph(0)}")) as events:
            first = await anext(events)
            took = time.perf_counter() - started
            if not isinstance(first, Resync) or len(first.instances) != expected:
                raise RuntimeError(f"expected a Resync of {expected} instances, got {first!r:.200}")
            gc.collect()
            retained = tracemalloc.get_traced_memory()[0] - before
            held = sum(len(r.items) for r in backend.reflectors)
    finally:
        tracemalloc.stop()
        await backend.aclose()
    return {"retained_bytes": retained, "objects_held": held, "first_resync_ms": round(took * 1000, 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    per_deployment = args.workers // args.deployments
    with KubeApiServer() as server:
        config = _kubeconfig(server)
        await anyio.to_thread.run_sync(server.create_crd, manifest("crd.yaml"))
        api = await connect(config)
        fleet, alone = f"scope-{uuid.uuid4().hex[:6]}", f"alone-{uuid.uuid4().hex[:6]}"
        try:
            for namespace in (fleet, alone):
                await api.request(
                    "POST", "/api/v1/namespaces", what="ns", body={"metadata": {"name": namespace}}
                )
            started = time.perf_counter()
            await seed(api, fleet, list(range(args.deployments)), per_deployment)
            await seed(api, alone, [0], per_deployment)
            print(f"seeded in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        finally:
            await api.aclose()
        where = {
            "unscoped": (fleet, None),
            "scoped": (fleet, deployment_selector(graph(0))),
            "alone": (alone, None),
        }
        rows: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
        # Once, unmeasured: what the first watcher of a process allocates for good (caches, TLS) is no
        # watcher's own.
        await one_watcher(config, alone, None, per_deployment)
        for n in range(args.runs):
            for case in CASES:
                namespace, selector = where[case]
                row = await one_watcher(config, namespace, selector, per_deployment)
                rows[case].append(row)
                print(f"run {n + 1} {case}: {row}", file=sys.stderr, flush=True)
    medians = {
        case: {key: statistics.median(r[key] for r in found) for key in found[0]}
        for case, found in rows.items()
    }
    alone_bytes = medians["alone"]["retained_bytes"]
    return {
        "meta": {
            "command": " ".join(["python -m benchmarks.kube_scope", *sys.argv[1:]]),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "python": platform.python_version(),
            "workers": args.workers,
            "deployments": args.deployments,
            "per_deployment": per_deployment,
            "runs": args.runs,
        },
        "medians": medians,
        "ratio_to_alone": {case: round(m["retained_bytes"] / alone_bytes, 2) for case, m in medians.items()},
        "runs": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kube_scope", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run for CI")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.deployments, args.runs = 60, 3, 1
    results = anyio.run(run, args)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
