"""Helpers for the Kubernetes backend tests: workers on pods the test runs (as kubelet would; the real
EndpointSlice controller lists them), and watchers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from dyndisc import Added, DiscoveryEvent, DistributedRuntime, Instance, InstanceQuery, Removed, Resync
from dyndisc.backends.kubernetes import KubernetesDiscovery, PodIdentity
from dyndisc.backends.kubernetes.worker import WorkerResource
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

    async def pod(self, name: str, *, ready: bool = True, app: str = "worker") -> PodIdentity:
        """A running pod; one of the namespace's Service (``app=worker``) is listed by the EndpointSlice
        controller as ready (or not) when this returns."""
        return await self.cluster.run_pod(self.namespace, name, ready=ready, app=app, wait=app == "worker")

    async def start(self, pod: PodIdentity, **kwargs: Any) -> RuntimeHost:
        backend_kwargs = {k: kwargs.pop(k) for k in ("kubeconfig", "debounce", "mode") if k in kwargs}
        kwargs.setdefault("lease_ttl", 2.0)
        backend = CrashableBackend(self.backend(pod, **backend_kwargs))
        host = await RuntimeHost.start(DistributedRuntime(backend, **kwargs))
        self.hosts.append(host)
        return host

    @staticmethod
    def resource(host: RuntimeHost) -> WorkerResource:
        """The worker resource of a runtime :meth:`start` made."""
        backend = host.runtime.backend
        assert isinstance(backend, CrashableBackend)
        assert isinstance(backend.inner, KubernetesDiscovery)
        assert backend.inner._resource is not None
        return backend.inner._resource

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


async def settle(
    events: AsyncIterator[DiscoveryEvent],
    state: set[Instance],
    *,
    quiet: float = 0.5,
    timeout: float = PROMPT,
) -> set[Instance]:
    """Apply events to ``state`` until none comes for ``quiet`` seconds; return the state then."""
    state = set(state)
    with anyio.fail_after(timeout):
        while True:
            with anyio.move_on_after(quiet):
                event = await anext(events)
                if isinstance(event, Resync):
                    state = set(event.instances)
                elif isinstance(event, Added):
                    state = {i for i in state if i.key != event.instance.key} | {event.instance}
                elif isinstance(event, Removed):
                    state = {i for i in state if i.key != event.key}
                continue
            return state


def everything() -> InstanceQuery:
    return InstanceQuery()


async def until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Wait until ``condition()`` holds (checked every ``every`` seconds), or fail saying ``what``."""
    deadline = anyio.current_time() + timeout
    while not condition():
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(every)
