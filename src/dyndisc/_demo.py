"""``dyndisc demo``: workers join, leave and crash while a frontend watches the instance set change."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from dyndisc._events import Added, Removed, Resync
from dyndisc._settings import canonical_backend_name
from dyndisc.backends import create_backend
from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.faults import CrashableBackend

ENDPOINT = "demo.backend.generate"


class _Worker:
    def __init__(self, number: int) -> None:
        self.number = number
        self.leave = anyio.Event()
        self.crash = False

    async def run(self, backend: str, ttl: float) -> None:
        # On a crashable backend, so the demo can show a crash in-process: no keep-alive, no revoke.
        crashable = CrashableBackend(create_backend(backend))
        async with crashable, DistributedRuntime(crashable, lease_ttl=ttl) as runtime:
            await runtime.endpoint(ENDPOINT).register(
                f"tcp://127.0.0.1:{9000 + self.number}", {"worker": self.number}
            )
            await self.leave.wait()
            if self.crash:
                crashable.crash()  # its lease must expire on the server's clock


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
                    say(f"- {event.instance_id:016x} left  (live: {len(live)})")

    name = canonical_backend_name(backend, "--backend")
    async with DistributedRuntime(name, lease_ttl=ttl) as frontend, anyio.create_task_group() as tg:
        say(f"backend {frontend.backend.name!r}, lease TTL {ttl}s")
        ready = anyio.Event()
        tg.start_soon(watch, frontend, ready)
        await ready.wait()
        workers = [_Worker(n) for n in range(1, 5)]
        for worker in workers[:3]:
            say(f"worker {worker.number} starting")
            tg.start_soon(worker.run, backend, ttl)
            await anyio.sleep(0.3)
        await anyio.sleep(1.0)
        say("worker 2 shuts down cleanly: its lease is revoked, it leaves at once")
        workers[1].leave.set()
        await anyio.sleep(1.0)
        say(f"worker 3 crashes: no more keep-alives, it leaves when its lease expires (<= {ttl}s)")
        workers[2].crash = True
        workers[2].leave.set()
        await anyio.sleep(ttl + 1.0)
        say("worker 4 starting")
        tg.start_soon(workers[3].run, backend, ttl)
        await anyio.sleep(1.0)
        say("everyone shuts down")
        for worker in (workers[0], workers[3]):
            worker.leave.set()
        await anyio.sleep(1.0)
        tg.cancel_scope.cancel()
    say(f"done: the watcher saw {changes} changes")
    return changes
