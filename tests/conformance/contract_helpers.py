"""Helpers for the conformance tests (kept out of conftest.py so tests can import them)."""

from __future__ import annotations

from typing import Any

import anyio

from dyndisc import DiscoveryBackend, DistributedRuntime, InstanceQuery, InstanceSet
from dyndisc.testing import CrashableBackend, RuntimeHost
from harnesses.base import Harness


class Runtimes:
    """Start runtimes on the harness's backend; each gets a fresh backend connection, as a process would."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.hosts: list[RuntimeHost] = []
        self.backends: list[DiscoveryBackend] = []

    def backend(self) -> DiscoveryBackend:
        backend = self.harness.new_backend()
        self.backends.append(backend)
        return backend

    async def host(self, **kwargs: Any) -> RuntimeHost:
        kwargs.setdefault("lease_ttl", self.harness.lease_ttl)
        host = await RuntimeHost.start(DistributedRuntime(CrashableBackend(self.backend()), **kwargs))
        self.hosts.append(host)
        return host

    async def start(self, **kwargs: Any) -> DistributedRuntime:
        return (await self.host(**kwargs)).runtime

    async def close(self) -> None:
        for host in reversed(self.hosts):
            if not host.done:
                await host.stop()
        for backend in self.backends:
            await backend.aclose()


async def wait_until(source: InstanceSet, predicate: Any, timeout: float, what: str) -> None:
    """Wait until ``predicate()`` holds, re-checking on every change of ``source``."""
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await source.wait_changed()
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; have {source.instances()}"
        ) from None


def query(ns: str, component: str | None = None, endpoint: str | None = None) -> InstanceQuery:
    return InstanceQuery(namespace=ns, component=component, endpoint=endpoint)
