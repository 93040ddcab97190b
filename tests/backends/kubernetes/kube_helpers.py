"""Helpers for the Kubernetes backend tests: workers on pods the test makes ready, and watchers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from dyndisc import DiscoveryEvent, DistributedRuntime, InstanceQuery, Resync
from dyndisc.backends.kubernetes import KubernetesDiscovery, PodIdentity
from dyndisc.testing import CrashableBackend, RuntimeHost
from harnesses.kubernetes import Cluster, kubeconfig

PROMPT = 5.0


class Workers:
    """Start worker runtimes (one pod each) and watcher backends in one namespace; all closed at teardown."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.hosts: list[RuntimeHost] = []
        self.backends: list[KubernetesDiscovery] = []
        self.config = kubeconfig(cluster.server, cluster.server.admin_token)

    def backend(self, identity: PodIdentity | None = None, **kwargs: Any) -> KubernetesDiscovery:
        kwargs.setdefault("kubeconfig", self.config)
        kwargs.setdefault("debounce", 0.05)
        backend = KubernetesDiscovery(namespace=self.namespace, identity=identity, **kwargs)
        self.backends.append(backend)
        return backend

    async def pod(self, name: str, *, ready: bool = True) -> PodIdentity:
        if ready:
            return await self.cluster.ready_pod(self.namespace, name)
        uid = await self.cluster.create_pod(self.namespace, name)
        return PodIdentity(name=name, namespace=self.namespace, uid=uid)

    async def start(self, pod: PodIdentity, **kwargs: Any) -> RuntimeHost:
        backend_kwargs = {k: kwargs.pop(k) for k in ("kubeconfig", "debounce") if k in kwargs}
        kwargs.setdefault("lease_ttl", 2.0)
        backend = CrashableBackend(self.backend(pod, **backend_kwargs))
        host = await RuntimeHost.start(DistributedRuntime(backend, **kwargs))
        self.hosts.append(host)
        return host

    async def close(self) -> None:
        for host in reversed(self.hosts):
            if not host.done:
                await host.stop()
        for backend in self.backends:
            await backend.aclose()


async def next_event(events: AsyncIterator[DiscoveryEvent], timeout: float = PROMPT) -> DiscoveryEvent:
    with anyio.fail_after(timeout):
        return await anext(events)


async def next_resync(events: AsyncIterator[DiscoveryEvent], timeout: float = PROMPT) -> Resync:
    """Skip events until the next ``Resync``."""
    with anyio.fail_after(timeout):
        while True:
            event = await anext(events)
            if isinstance(event, Resync):
                return event


def everything() -> InstanceQuery:
    return InstanceQuery()


async def until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Wait until ``condition()`` holds (checked every ``every`` seconds), or fail saying ``what``."""
    deadline = anyio.current_time() + timeout
    while not condition():
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(every)
