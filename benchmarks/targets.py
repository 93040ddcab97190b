"""What the benchmarks run against: a backend of dyndisc and the raw client of the same store (the limit).

Each target is an async context manager yielding a :class:`Target`. Servers are started on loopback with
``dyndisc.testing.servers`` (so every figure comes from a server this run owns, with no other load on it).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from benchmarks.raw import EtcdRawClient, FileRawClient, NatsRawClient, RawClient, StoreRawClient
from dyndisc import DiscoveryBackend, KvDiscovery, MemoryStore

__all__ = ["TARGETS", "RawClient", "Target"]


class Target:
    """A backend under test: ``new_backend()`` is a new connection, as another process would have.

    ``worker_env`` configures ``DistributedRuntime.from_env()`` in a worker subprocess (``None``: workers
    cannot live in another process, as with memory). ``server_requests()`` is the server's own count of
    requests received so far (``None`` when the server keeps none; the keep-alive case then counts calls).
    """

    def __init__(
        self,
        name: str,
        new_backend: Callable[[], DiscoveryBackend],
        raw: RawClient | None,
        *,
        worker_env: dict[str, str] | None = None,
        server_requests: Callable[[], Awaitable[int]] | None = None,
        versions: dict[str, str] | None = None,
        key_value: bool = True,
        new_raw: Callable[[], RawClient] | None = None,
    ) -> None:
        self.name = name
        self._make_backend = new_backend
        self._made: list[DiscoveryBackend] = []
        self.raw = raw
        self.worker_env = worker_env
        self.server_requests = server_requests
        self.versions = versions or {}
        #: Key-value backends can be seeded directly (the scale case needs 10,000 instances quickly).
        self.key_value = key_value
        #: Another raw client with connections of its own (the raw side of the fan-out to many watchers).
        self.new_raw = new_raw

    def new_backend(self) -> DiscoveryBackend:
        """A new backend (its own connection); :meth:`close_backends` closes it."""
        backend = self._make_backend()
        self._made.append(backend)
        return backend

    async def close_backends(self) -> None:
        """Close every backend made so far: a case leaves no connections behind for the next one."""
        made, self._made = self._made, []
        for backend in made:
            await backend.aclose()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        body: bytes = reply.read()
        return body


@asynccontextmanager
async def memory_target() -> AsyncIterator[Target]:
    store = MemoryStore()
    yield Target(
        "memory",
        lambda: KvDiscovery(store, owns_store=False),
        StoreRawClient(store),
        new_raw=lambda: StoreRawClient(store),
    )


@asynccontextmanager
async def etcd_target() -> AsyncIterator[Target]:
    from dyndisc.backends.etcd import EtcdSettings, EtcdStore
    from dyndisc.testing.servers import EtcdServer

    with EtcdServer() as server:
        settings = EtcdSettings.load(endpoints=server.client_url)
        received = re.compile(rb"^grpc_server_msg_received_total\{[^}]*\} (\S+)$", re.MULTILINE)

        async def server_requests() -> int:
            # Every gRPC message etcd received (unary requests and each keep-alive on the stream).
            return round(sum(float(v) for v in received.findall(_get(f"{server.client_url}/metrics"))))

        yield Target(
            "etcd",
            lambda: KvDiscovery(EtcdStore(settings)),
            EtcdRawClient(server.endpoint),
            worker_env={"DYN_DISCOVERY_BACKEND": "etcd", "ETCD_ENDPOINTS": server.client_url},
            server_requests=server_requests,
            versions={"etcd": server.version()},
            new_raw=lambda: EtcdRawClient(server.endpoint),
        )


@asynccontextmanager
async def nats_target() -> AsyncIterator[Target]:
    from dyndisc.backends.nats import NatsSettings, NatsStore
    from dyndisc.testing.servers import NatsServer

    with NatsServer() as server:
        bucket = "dyndisc_bench"
        settings = NatsSettings.load(server=server.url, kv_bucket=bucket, timeout=5.0)
        # The backend creates the bucket (with per-key TTLs) before the raw client uses it.
        first = NatsStore(settings)
        await first.get_prefix("/")
        await first.aclose()

        async def server_requests() -> int:
            return int(json.loads(_get(f"{server.monitor_url}/varz"))["in_msgs"])

        yield Target(
            "nats",
            lambda: KvDiscovery(NatsStore(settings)),
            NatsRawClient(server.url, bucket),
            worker_env={"DYN_DISCOVERY_BACKEND": "nats", "NATS_SERVER": server.url, "NATS_KV_BUCKET": bucket},
            server_requests=server_requests,
            versions={"nats-server": str(json.loads(_get(f"{server.monitor_url}/varz"))["version"])},
        )


@asynccontextmanager
async def file_target() -> AsyncIterator[Target]:
    from dyndisc.backends.file import FileStore

    root = Path(tempfile.mkdtemp(prefix="dyndisc-bench-"))
    try:
        yield Target(
            "file",
            lambda: KvDiscovery(FileStore(root / "kv")),
            FileRawClient(root / "raw"),
            worker_env={"DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(root / "kv")},
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _KubeWorkers:
    """What the test harness's worker backend needs: a cluster, a namespace and fresh pod names."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.count = 0

    def next_pod(self) -> str:
        self.count += 1
        return f"worker-{self.count}-{uuid.uuid4().hex[:6]}"

    async def start_pod(self) -> Any:
        """A pod listed ready in an EndpointSlice written here (this API server runs no controllers)."""
        return await self.cluster.ready_pod(self.namespace, self.next_pod())


@asynccontextmanager
async def kubernetes_target() -> AsyncIterator[Target]:
    # The conformance harness's cluster helpers (pods made ready in an EndpointSlice, as kubelet and the
    # EndpointSlice controller would) are reused rather than written twice.
    from tests.harnesses.kubernetes import Cluster, HarnessBackend, kubeconfig

    from dyndisc.testing.servers import KubeApiServer

    with KubeApiServer() as server:
        async with Cluster.open(server) as cluster:
            namespace = await cluster.create_namespace("bench")
            workers = _KubeWorkers(cluster, namespace)
            config = kubeconfig(server, server.admin_token)
            yield Target(
                "kubernetes",
                lambda: HarnessBackend(workers, namespace=namespace, kubeconfig=config, debounce=0.05),  # type: ignore[arg-type]
                None,
                key_value=False,
            )


TARGETS: dict[str, Callable[[], AbstractAsyncContextManager[Target]]] = {
    "memory": memory_target,
    "etcd": etcd_target,
    "nats": nats_target,
    "file": file_target,
    "kubernetes": kubernetes_target,
}
