"""A Kubernetes fleet in one process: what the shared informer costs and saves, against the raw limit.

    python -m benchmarks.kube_fleet [--workers 1000] [--clients 100] [--endpoints 10] [--runs 3]
                                    [--worker-runtimes 100] [--idle 20] [--json out.json] [--quick]

On a kube-apiserver of its own (no controllers: the slices are written here, as the EndpointSlice controller
would), ``--workers`` workers are seeded (a DynamoWorkerMetadata each, listed ready in one EndpointSlice per
endpoint, ``--endpoints`` of them). Then, ``--runs`` times:

* **clients**: ``--clients`` runtimes share one backend (a router pod), each with a ``Client`` of one
  endpoint; measured from creating the clients to every client holding its endpoint's instances (first
  snapshot), the memory retained per instance (tracemalloc, in a second pass), the API watches open (the API
  server's ``apiserver_longrunning_requests``), and requests/s while nothing changes. The raw limit: the same
  HTTP client listing both kinds once and opening one watch of each (what any informer must do), as ratios
  ours / raw.
* **workers**: ``--worker-runtimes`` worker runtimes (a backend and a pod each) idle for ``--idle`` seconds
  at a lease TTL of 2 s and of 10 s: the API server's count of requests on worker resources per second.

Every figure is the median of the runs. The library is whatever ``dyndisc`` is importable, so the same
script measures an older version side by side (``PYTHONPATH=<its src> python -m benchmarks.kube_fleet``).
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import platform
import re
import statistics
import sys
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

import dyndisc
from benchmarks.cases import run_bounded
from dyndisc import Client, DistributedRuntime
from dyndisc.backends.kubernetes import KubernetesDiscovery, PodIdentity, instance_id_for
from dyndisc.backends.kubernetes.api import KubeApi, connect
from dyndisc.backends.kubernetes.join import DISCOVERY_LABELS, LABEL_SELECTOR
from dyndisc.backends.kubernetes.manifests import manifest
from dyndisc.testing.servers import KubeApiServer

#: The API server's watch timeout for the backends here: short enough that re-opened watches show up
#: within ``--idle`` (the library's default is 60 s, which only divides the rate by six).
WATCH_TIMEOUT = 10.0
Figures = dict[str, Any]


def _kubeconfig(server: KubeApiServer) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "bench",
                "cluster": {
                    "server": server.url,
                    "certificate-authority-data": base64.b64encode(server.ca_pem.encode()).decode(),
                },
            }
        ],
        "users": [{"name": "admin", "user": {"token": server.admin_token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "admin"}}],
        "current-context": "bench",
    }


# -- the API server's own figures ---------------------------------------------------------------------------
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)


def _metrics(server: KubeApiServer) -> list[tuple[str, dict[str, str], float]]:
    request = urllib.request.Request(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.admin_token}"}
    )
    context = server.tls.client_ssl_context(with_client_cert=False)
    with urllib.request.urlopen(request, timeout=10, context=context) as answer:
        text = answer.read().decode()
    found = []
    for name, labels, value in _SAMPLE.findall(text):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        found.append((name, pairs, float(value)))
    return found


def watchers_open(server: KubeApiServer) -> int:
    """Watches the API server has open on EndpointSlices and DynamoWorkerMetadata of a namespace or of one
    object (its own informers watch the whole cluster)."""
    return round(
        sum(
            value
            for name, labels, value in _metrics(server)
            if name == "apiserver_longrunning_requests"
            and labels.get("verb") == "WATCH"
            and labels.get("scope") in ("namespace", "resource")
            and labels.get("resource") in ("endpointslices", "dynamoworkermetadatas")
        )
    )


def requests_served(server: KubeApiServer, resource: str | None = None) -> float:
    """Requests the API server has answered on EndpointSlices and DynamoWorkerMetadata (or ``resource``)."""
    wanted = {resource} if resource else {"endpointslices", "dynamoworkermetadatas"}
    return sum(
        value
        for name, labels, value in _metrics(server)
        if name == "apiserver_request_total" and labels.get("resource") in wanted
    )


# -- seeding the fleet ---------------------------------------------------------------------------------------
def _entry(namespace: str, endpoint: str, name: str, n: int) -> tuple[str, dict[str, Any]]:
    iid = instance_id_for(name)
    record = {
        "type": "Endpoint",
        "namespace": "fleet",
        "component": "backend",
        "endpoint": endpoint,
        "instance_id": iid,
        "transport": {"tcp": f"10.1.{n // 250}.{n % 250 + 1}:9000"},
        "metadata": {"model": "m", "pod": name},
    }
    return f"fleet/backend/{endpoint}/{iid:x}", record


async def seed(api: KubeApi, namespace: str, workers: int, endpoints: int) -> None:
    """``workers`` workers over ``endpoints`` endpoints: their resources, and one ready slice per endpoint."""
    per_endpoint: dict[int, list[tuple[str, str]]] = {e: [] for e in range(endpoints)}
    crs = f"/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas"

    async def one(n: int) -> None:
        e = n % endpoints
        name, uid = f"worker-{n}", str(uuid.uuid4())
        key, record = _entry(namespace, f"e{e}", name, n)
        owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}
        body = {
            "apiVersion": "nvidia.com/v1alpha1",
            "kind": "DynamoWorkerMetadata",
            "metadata": {"name": name, "ownerReferences": [owner]},
            "spec": {"data": {"endpoints": {key: record}}},
        }
        await api.request("POST", crs, what=f"seeding {name}", body=body)
        per_endpoint[e].append((name, uid))

    await run_bounded(workers, 32, one)
    for e, pods in per_endpoint.items():
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"backend-e{e}", "labels": DISCOVERY_LABELS},
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [f"10.2.{i // 250}.{i % 250 + 1}"],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "targetRef": {"kind": "Pod", "namespace": namespace, "name": name, "uid": uid},
                }
                for i, (name, uid) in enumerate(pods)
            ],
            "ports": [{"name": "system", "port": 9090, "protocol": "TCP"}],
        }
        await api.request(
            "POST",
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            what="slice",
            body=body,
        )


# -- clients -------------------------------------------------------------------------------------------------
@asynccontextmanager
async def routers(
    config: dict[str, Any], namespace: str, count: int
) -> AsyncIterator[tuple[KubernetesDiscovery, list[DistributedRuntime]]]:
    """``count`` runtimes sharing one backend (a router pod)."""
    router = PodIdentity(name=f"router-{uuid.uuid4().hex[:6]}", namespace=namespace, uid=str(uuid.uuid4()))
    backend = KubernetesDiscovery(
        namespace=namespace, identity=router, kubeconfig=config, watch_timeout=WATCH_TIMEOUT
    )
    runtimes = [DistributedRuntime(backend, lease_ttl=30) for _ in range(count)]
    try:
        async with AsyncExitStack() as stack:
            for runtime in runtimes:
                await stack.enter_async_context(runtime)
            yield backend, runtimes
    finally:
        await backend.aclose()


async def _clients(runtimes: list[DistributedRuntime], endpoints: int, per_endpoint: int) -> list[Client]:
    """A client per runtime, each holding its endpoint's instances (keep them: a client's watch stops when
    its last client is closed or collected)."""
    clients = [await r.endpoint(f"fleet.backend.e{i % endpoints}").client() for i, r in enumerate(runtimes)]
    with anyio.fail_after(300):
        for client in clients:
            while len(client.instances()) < per_endpoint:
                await client.wait_changed()
    return clients


async def clients_case(
    server: KubeApiServer, config: dict[str, Any], namespace: str, sizes: argparse.Namespace
) -> Figures:
    per_endpoint = sizes.workers // sizes.endpoints
    async with routers(config, namespace, sizes.clients) as (backend, runtimes):
        gc.collect()
        started = time.perf_counter()
        held = await _clients(runtimes, sizes.endpoints, per_endpoint)
        snapshot = time.perf_counter() - started
        # A reflector lists, then watches from what it listed: its watch request may come a moment later.
        await anyio.sleep(1.0)
        watches = watchers_open(server)
        api = await backend.api()
        sent = getattr(api, "requests", None)
        served = requests_served(server)
        await anyio.sleep(sizes.idle)
        idle_served = (requests_served(server) - served) / sizes.idle
        idle_sent = None if sent is None else (api.requests - sent) / sizes.idle
        del held
    # Memory, in a pass of its own (tracemalloc slows everything down).
    async with routers(config, namespace, sizes.clients) as (_backend, runtimes):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        held = await _clients(runtimes, sizes.endpoints, per_endpoint)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del held
    raw = await raw_case(config, namespace)
    figures: Figures = {
        "snapshot_ms": round(snapshot * 1000, 1),
        "bytes_per_instance": round(retained / sizes.workers),
        "watches_open": watches,
        "idle_requests_per_s": round(idle_served, 2),
        **raw,
    }
    if idle_sent is not None:
        figures["idle_requests_sent_per_s"] = round(idle_sent, 2)
    figures["ratio_snapshot"] = round(figures["snapshot_ms"] / max(raw["raw_snapshot_ms"], 1e-6), 2)
    figures["ratio_bytes"] = round(figures["bytes_per_instance"] / max(raw["raw_bytes_per_instance"], 1), 2)
    figures["ratio_watches"] = round(watches / 2, 2)  # raw: one watch of each kind
    return figures


async def raw_case(config: dict[str, Any], namespace: str) -> Figures:
    """The limit: the same HTTP client lists both kinds once and opens one watch of each."""
    api = await connect(config)
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
    crs = f"/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas"
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept = [
            await api.request("GET", slices, what="listing", query={"labelSelector": LABEL_SELECTOR}),
            await api.request("GET", crs, what="listing"),
        ]
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        instances = len(kept[1].get("items") or ())
        gc.collect()
        started = time.perf_counter()
        listed = [
            await api.request("GET", slices, what="listing", query={"labelSelector": LABEL_SELECTOR}),
            await api.request("GET", crs, what="listing"),
        ]
        async with AsyncExitStack() as stack:
            for path, body in zip((slices, crs), listed, strict=True):
                query = {"watch": "true", "resourceVersion": body["metadata"]["resourceVersion"]}
                await stack.enter_async_context(
                    api.stream(path, what="watching", query=query, read_timeout=30)
                )
            took = time.perf_counter() - started
    finally:
        await api.aclose()
    return {"raw_snapshot_ms": round(took * 1000, 1), "raw_bytes_per_instance": round(retained / instances)}


# -- workers -------------------------------------------------------------------------------------------------
async def workers_case(
    server: KubeApiServer, config: dict[str, Any], namespace: str, sizes: argparse.Namespace, ttl: float
) -> Figures:
    """``--worker-runtimes`` workers, each its own backend and pod, idle at lease TTL ``ttl``."""
    backends = []
    async with AsyncExitStack() as stack:
        for n in range(sizes.worker_runtimes):
            pod = PodIdentity(
                name=f"idle-{n}-{uuid.uuid4().hex[:4]}", namespace=namespace, uid=str(uuid.uuid4())
            )
            backend = KubernetesDiscovery(
                namespace=namespace, identity=pod, kubeconfig=config, watch_timeout=WATCH_TIMEOUT
            )
            backends.append(backend)
            stack.push_async_callback(backend.aclose)
            runtime = await stack.enter_async_context(DistributedRuntime(backend, lease_ttl=ttl))
            await runtime.endpoint("fleet.idle.generate").register(f"tcp://10.3.0.{n % 250}:9000")
        await anyio.sleep(2.0)  # settled: every worker has seen its own write
        served = requests_served(server, "dynamoworkermetadatas")
        await anyio.sleep(sizes.idle)
        rate = (requests_served(server, "dynamoworkermetadatas") - served) / sizes.idle
    return {
        "ttl_s": ttl,
        "workers": sizes.worker_runtimes,
        "requests_per_s": round(rate, 2),
        "requests_per_worker_per_min": round(rate / sizes.worker_runtimes * 60, 2),
    }


# -- the run -------------------------------------------------------------------------------------------------
def _median(rows: list[Figures]) -> Figures:
    out: Figures = {}
    for key in rows[0]:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        out[key] = round(statistics.median(values), 2) if values else rows[0][key]
    return out


async def run(sizes: argparse.Namespace) -> dict[str, Any]:
    with KubeApiServer() as server:
        config = _kubeconfig(server)
        await anyio.to_thread.run_sync(server.create_crd, manifest("crd.yaml"))
        api = await connect(config)
        try:
            namespace = f"fleet-{uuid.uuid4().hex[:6]}"
            await api.request(
                "POST", "/api/v1/namespaces", what="namespace", body={"metadata": {"name": namespace}}
            )
            started = time.perf_counter()
            await seed(api, namespace, sizes.workers, sizes.endpoints)
            seeded = time.perf_counter() - started
        finally:
            await api.aclose()
        print(f"seeded {sizes.workers} workers in {seeded:.1f}s", file=sys.stderr, flush=True)
        clients = []
        for n in range(sizes.runs if "clients" in sizes.cases else 0):
            clients.append(await clients_case(server, config, namespace, sizes))
            print(f"clients run {n + 1}: {clients[-1]}", file=sys.stderr, flush=True)
        workers = {}
        for ttl in (2.0, 10.0) if "workers" in sizes.cases else ():
            rows = []
            for n in range(sizes.runs):
                rows.append(await workers_case(server, config, namespace, sizes, ttl))
                print(f"workers ttl {ttl} run {n + 1}: {rows[-1]}", file=sys.stderr, flush=True)
            workers[f"ttl{int(ttl)}"] = _median(rows)
    return {
        "meta": {
            "command": " ".join(["python", "-m", "benchmarks.kube_fleet", *sys.argv[1:]]),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "dyndisc": str(Path(dyndisc.__file__).parent),
            "python": platform.python_version(),
        },
        "sizes": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(sizes).items()},
        "clients": _median(clients) if clients else {},
        "workers": workers,
        "runs": {"clients": clients},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kube_fleet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-runtimes", type=int, default=100)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of quiet measured per case")
    parser.add_argument("--cases", default="clients,workers", help="comma-separated: clients, workers")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run for CI")
    parser.add_argument("--json", help="also write the results here")
    sizes = parser.parse_args()
    sizes.cases = set(sizes.cases.split(","))
    if sizes.quick:
        sizes.workers, sizes.clients, sizes.endpoints, sizes.runs = 40, 8, 4, 1
        sizes.worker_runtimes, sizes.idle = 4, 2.0
    results = anyio.run(run, sizes)
    print(json.dumps(results, indent=2))
    if sizes.json:
        with open(sizes.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
