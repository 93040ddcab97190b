"""``dyndisc demo``: workers join, leave and crash while a frontend watches the instance set change."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from dyndisc._events import Added, RemovalReason, Removed, Resync
from dyndisc._models import EndpointId, Instance
from dyndisc._settings import BackendName, canonical_backend_name
from dyndisc.backends import DiscoveryBackend, Lease, create_backend
from dyndisc.runtime import DistributedRuntime

ENDPOINT = "demo.backend.generate"

#: How the watcher words a removal, by its reason (``None``: the backend could not tell).
REMOVALS = {
    RemovalReason.LEFT: "left",
    RemovalReason.EXPIRED: "expired (its lease ran out)",
    None: "removed",
}


class _Worker:
    """One worker of the script, with a backend of its own, as a process of its own would have."""

    def __init__(self, number: int, *, crashes: bool = False) -> None:
        self.number = number
        self.crashes = crashes
        self.leave = anyio.Event()
        self.transport = f"tcp://127.0.0.1:{9000 + number}"

    async def run(self, backend: BackendName, ttl: float) -> None:
        """Register, then on ``leave`` shut down cleanly (a runtime revokes its lease) or crash."""
        if self.crashes:
            await self._run_then_crash(backend, ttl)
            return
        async with DistributedRuntime(backend, lease_ttl=ttl) as runtime:
            await runtime.endpoint(ENDPOINT).register(self.transport, {"worker": self.number})
            await self.leave.wait()

    async def _run_then_crash(self, backend: str, ttl: float) -> None:
        """What a runtime does, reduced to its lease, then a death as a SIGKILLed process's: on ``leave`` the
        keep-alive stops and nothing is revoked, so the lease expires on the store's clock and only then do
        watchers see the worker go. (A runtime always revokes on exit: a crash is what it cannot show.)"""
        endpoint = EndpointId.parse(ENDPOINT)
        async with create_backend(backend) as made:
            lease = await made.grant_lease(ttl)
            await made.register(
                Instance(
                    namespace=endpoint.namespace,
                    component=endpoint.component,
                    endpoint=endpoint.endpoint,
                    instance_id=lease.id,
                    transport=self.transport,
                    metadata={"worker": self.number},
                ),
                lease,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(_keep_alive, made, lease)
                await self.leave.wait()
                tg.cancel_scope.cancel()  # the crash: no keep-alive from now on, and no revoke


async def _keep_alive(backend: DiscoveryBackend, lease: Lease) -> None:
    """Renew ``lease`` at half its time left, as a runtime's keep-alive loop does."""
    left = lease.ttl
    while True:
        await anyio.sleep(left / 2)
        left = await backend.keep_alive(lease)


async def run_demo(backend: str = "memory", ttl: float = 2.0, out: Callable[[str], object] = print) -> int:
    """Run the scripted demo; return how many changes the watcher saw."""
    start = time.monotonic()
    changes = 0

    def say(text: str) -> None:
        out(f"[{time.monotonic() - start:6.2f}s] {text}")

    async def watch(frontend: DistributedRuntime, ready: anyio.Event) -> None:
        nonlocal changes
        live: dict[int, str] = {}
        async with frontend.endpoint(ENDPOINT).watch() as events:
            async for event in events:
                if isinstance(event, Resync):
                    live = {i.instance_id: str(i.transport) for i in event.instances}
                    say(f"watching {ENDPOINT}: {len(live)} live")
                    ready.set()
                    continue
                changes += 1
                if isinstance(event, Added):
                    instance = event.instance
                    live[instance.instance_id] = str(instance.transport)
                    say(f"+ {instance.instance_id:016x} joined at {instance.transport}  (live: {len(live)})")
                elif isinstance(event, Removed):
                    live.pop(event.instance_id, None)
                    why = REMOVALS.get(event.reason, str(event.reason))
                    say(f"- {event.instance_id:016x} {why}  (live: {len(live)})")

    name = canonical_backend_name(backend, "--backend")
    async with DistributedRuntime(name, lease_ttl=ttl) as frontend, anyio.create_task_group() as tg:
        say(f"backend {frontend.backend.name!r}, lease TTL {ttl}s")
        ready = anyio.Event()
        tg.start_soon(watch, frontend, ready)
        await ready.wait()
        workers = [_Worker(1), _Worker(2), _Worker(3, crashes=True), _Worker(4)]
        for worker in workers[:3]:
            say(f"worker {worker.number} starting")
            tg.start_soon(worker.run, name, ttl)
            await anyio.sleep(0.3)
        await anyio.sleep(1.0)
        say("worker 2 shuts down cleanly: its lease is revoked, it leaves at once")
        workers[1].leave.set()
        await anyio.sleep(1.0)
        say(f"worker 3 crashes: no more keep-alives, it leaves when its lease expires (<= {ttl}s)")
        workers[2].leave.set()
        await anyio.sleep(ttl + 1.0)
        say("worker 4 starting")
        tg.start_soon(workers[3].run, name, ttl)
        await anyio.sleep(1.0)
        say("everyone shuts down")
        for worker in (workers[0], workers[3]):
            worker.leave.set()
        await anyio.sleep(1.0)
        tg.cancel_scope.cancel()
    say(f"done: the watcher saw {changes} changes")
    return changes
