"""Helpers for the NATS cluster tests: runtimes placed on a chosen server of the cluster, and watchers that
record every event and check the set they show against what the workers hold."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from dyndisc import (
    Added,
    BackendUnavailableError,
    DiscoveryEvent,
    DistributedRuntime,
    EndpointId,
    Instance,
    Removed,
    Resync,
)
from dyndisc.backends.kv import KvDiscovery
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.runtime.lease_keeper import LeaseChange
from dyndisc.testing import RuntimeHost
from dyndisc.testing.servers import NatsCluster, NatsClusterServer

#: The lease TTL of the cluster tests: the runtime's default.
LEASE_TTL = 10.0
#: Seconds within which everything must have converged after a fault.
CONVERGE = 40.0


def cluster_settings(cluster: NatsCluster, bucket: str, **overrides: object) -> NatsSettings:
    """Settings naming every server of ``cluster``, for a replicated bucket of the test's own."""
    values: dict[str, object] = {
        "server": cluster.servers_setting,
        "kv_bucket": bucket,
        "kv_replicas": len(cluster.servers),
        "timeout": 3.0,
    }
    values.update(overrides)
    return NatsSettings.load(**values)


@dataclass
class Member:
    """A runtime on the cluster, its store, and the lease changes it was told of."""

    host: RuntimeHost
    store: NatsStore
    changes: list[LeaseChange] = field(default_factory=list)

    @property
    def runtime(self) -> DistributedRuntime:
        return self.host.runtime

    def server(self, cluster: NatsCluster) -> NatsClusterServer | None:
        """The server its connection is on now."""
        url = self.store.connection.connected_url
        return None if url is None else cluster.server_at(url)


class Fleet:
    """Runtimes on one cluster and one bucket, each given every server (``NATS_SERVER``): a runtime wanted on
    a given server is made again until its connection lands there (each picks its first server at random)."""

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster
        self.bucket = f"cl_{uuid.uuid4().hex[:10]}"
        self.namespace = f"t{uuid.uuid4().hex[:10]}"
        self.members: list[Member] = []

    async def member(
        self, on: NatsClusterServer | None = None, *, lease_ttl: float = LEASE_TTL, patience: float = 0.0
    ) -> Member:
        """A running runtime (on server ``on``); with ``patience``, a start the cluster cannot take now (no
        leader: :class:`BackendUnavailableError`) is tried again for up to that many seconds."""
        deadline = time.monotonic() + patience
        for _ in range(30):
            store = NatsStore(cluster_settings(self.cluster, self.bucket))
            changes: list[LeaseChange] = []
            runtime = DistributedRuntime(
                KvDiscovery(store), lease_ttl=lease_ttl, on_lease_change=changes.append
            )
            try:
                host = await RuntimeHost.start(runtime)
            except BackendUnavailableError:
                await store.aclose()
                if time.monotonic() >= deadline:
                    raise
                await anyio.sleep(0.2)
                continue
            found = Member(host, store, changes)
            if on is None or found.server(self.cluster) is on:
                self.members.append(found)
                return found
            await host.stop()
            await store.aclose()
        raise AssertionError(f"no runtime started on {on} in 30 tries")

    async def close(self) -> None:
        for member in reversed(self.members):
            if not member.host.done:
                with anyio.move_on_after(15):
                    await member.host.stop()
            await member.store.aclose()


@dataclass
class Follower:
    """A watch of one namespace, run in a task: the set it shows now, and every event with its time."""

    shown: dict[tuple[EndpointId, int], Instance] = field(default_factory=dict)
    events: list[tuple[float, DiscoveryEvent]] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None

    def apply(self, event: DiscoveryEvent) -> None:
        self.events.append((time.monotonic(), event))
        if isinstance(event, Resync):
            self.shown = {i.key: i for i in event.instances}
        elif isinstance(event, Added):
            self.shown[event.instance.key] = event.instance
        elif isinstance(event, Removed):
            self.shown.pop((event.endpoint, event.instance_id), None)
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, expected: set[tuple[EndpointId, int]], timeout: float = CONVERGE) -> float:
        """Wait until the set shown is exactly ``expected``; return when (``time.monotonic()``)."""
        try:
            with anyio.fail_after(timeout):
                while set(self.shown) != expected:
                    if self.error is not None:
                        raise AssertionError(f"the watch ended: {self.error!r}")
                    await self.changed.wait()
        except TimeoutError:
            missing = sorted(expected - set(self.shown), key=str)
            extra = sorted(set(self.shown) - expected, key=str)
            raise AssertionError(f"not converged in {timeout}s: missing {missing}, extra {extra}") from None
        return time.monotonic()

    def removals_of(self, instance_id: int, since: float) -> list[DiscoveryEvent]:
        """Events since ``since`` that took an instance of ``instance_id`` out of the set shown: a
        ``Removed``, or a ``Resync`` without it."""
        found: list[DiscoveryEvent] = []
        for at, event in self.events:
            if at < since:
                continue
            removed = isinstance(event, Removed) and event.instance_id == instance_id
            left_out = isinstance(event, Resync) and all(
                i.instance_id != instance_id for i in event.instances
            )
            if removed or left_out:
                found.append(event)
        return found


@asynccontextmanager
async def following(tg: TaskGroup, member: Member, namespace: str) -> AsyncIterator[Follower]:
    """Run a watch of ``namespace`` on ``member``'s runtime in ``tg`` for the block."""
    follower = Follower()
    done = anyio.Event()

    async def run() -> None:
        try:
            async with member.runtime.namespace(namespace).watch() as events:
                async for event in events:
                    follower.apply(event)
        except BaseException as exc:
            follower.error = exc
            follower.changed.set()
            raise
        finally:
            done.set()

    scope = anyio.CancelScope()

    async def guarded() -> None:
        with scope:
            await run()

    tg.start_soon(guarded)
    try:
        yield follower
    finally:
        scope.cancel()
        with anyio.move_on_after(5):
            await done.wait()


async def register_all(
    member: Member, namespace: str, count: int, tag: str = "ep", *, patience: float = 0.0
) -> set[tuple[EndpointId, int]]:
    """Register ``count`` endpoints of ``member``; return their keys. With ``patience``, a registration
    the server cannot take now (:class:`BackendUnavailableError`: during an election, the request ran out
    of ``NATS_TIMEOUT``) is made again, as an application would, for up to that many seconds."""
    keys = set()
    deadline = time.monotonic() + patience
    for n in range(count):
        endpoint = member.runtime.namespace(namespace).component("backend").endpoint(f"{tag}{n}")
        while True:
            try:
                instance = await endpoint.register(f"tcp://10.9.0.1:{9000 + n}")
                break
            except BackendUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                await anyio.sleep(0.2)
        keys.add(instance.key)
    return keys


def keys_of(member: Member, keys: set[tuple[EndpointId, int]]) -> set[tuple[EndpointId, int]]:
    """``keys`` under ``member``'s instance id now (a replaced lease re-registers everything under its id)."""
    return {(endpoint, member.runtime.instance_id) for endpoint, _ in keys}
