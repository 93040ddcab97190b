"""An agent process of a real chaos run: it hosts workers or one watcher, on the backend its environment
names, takes commands from the orchestrator on stdin and reports on stdout, one JSON object a line.

Commands: ``{"cmd": "start", "name": "w0", "ttl": 2, "env": {...}}`` (``env``: variables to set first),
``{"cmd": "probed", "name": "w0"}`` (the store was read after ``w0``'s call returned: it goes on),
``{"cmd": <a worker's action: register, bulk, burst, put_entry ... exit>, "name": ..., "args": {...}}``,
``{"cmd": "watch", "name": "v0", "kind": "backend" | "runtime" | "client", "namespace": ..., "endpoint":
...}``, ``{"cmd": "quit"}``.
Reports carry ``t``, this host's ``time.monotonic()`` (the orchestrator's clock too): ``ready`` (once, when
it reads commands), ``op_start`` / ``op_end``, ``seen`` (a watch event as records), ``lease``,
``renewed`` (the server answered a renewal), ``returned`` (an exit or unregistration returned). The
orchestrator SIGKILLs or SIGSTOPs the whole process for the faults of a process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dyndisc._events import DiscoveryEvent
from dyndisc._models import InstanceQuery
from dyndisc._settings import canonical_backend_name
from dyndisc.backends import create_backend
from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.chaos.actors import Worker, watch_backend, watch_client, watch_runtime
from dyndisc.testing.chaos.calls import CALLS
from dyndisc.testing.chaos.history import Seen
from dyndisc.testing.hosting import RuntimeHost

log = logging.getLogger("dyndisc.chaos")

#: Seconds a worker waits for the orchestrator's reading of the store after a call returned.
PROBE_WAIT = 15.0


class _PipeRecorder:
    """Reports to the orchestrator, one JSON line each."""

    def __init__(self) -> None:
        self._ops = 0
        #: Set when the orchestrator has read the store after a worker's call returned, by worker.
        self.probed: dict[str, anyio.Event] = {}

    def _say(self, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"t": time.monotonic(), **fields}, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def now(self) -> float:
        return time.monotonic()

    def op_start(self, actor: str, action: str, args: dict[str, Any]) -> int:
        self._ops += 1
        self._say(type="op_start", op=self._ops, actor=actor, action=action, args=args)
        return self._ops

    def op_end(self, op: int, *, result: Any = None, error: BaseException | None = None) -> None:
        failure = None if error is None else f"{type(error).__name__}: {error}"
        self._say(type="op_end", op=op, result=result, error=failure)

    def seen(self, watcher: str, event: DiscoveryEvent) -> None:
        seen = Seen.of(watcher, 0.0, event)
        self._say(type="seen", watcher=watcher, kind=seen.kind, records=seen.records)

    def lease(self, runtime: str, instance_id: int | None, state: str) -> None:
        self._say(type="lease", runtime=runtime, instance_id=instance_id, state=state)

    def renewed(self, runtime: str, lease: int) -> None:
        self._say(type="renewed", runtime=runtime, lease=lease)

    async def returned(self, actor: str, action: str, args: dict[str, Any]) -> None:
        # The orchestrator reads the store raw as soon as it hears this (a probe), and says when it has: the
        # worker goes on only then, as in the simulation (its next call must not race the reading).
        probed = self.probed[actor] = anyio.Event()
        self._say(type="returned", actor=actor, action=action, args=args)
        with anyio.move_on_after(PROBE_WAIT):
            await probed.wait()

    def ready(self) -> None:
        """The agent has imported what it needs and reads commands."""
        self._say(type="ready")


async def _never_paused() -> None:
    """A real watcher is paused by SIGSTOP, not in code."""


class Agent:
    def __init__(self, backend_name: str) -> None:
        self.backend_name = backend_name
        self.recorder = _PipeRecorder()
        self.workers: dict[str, Worker] = {}

    async def command(self, tg: TaskGroup, line: str) -> bool:
        order = json.loads(line)
        cmd = order["cmd"]
        if cmd == "quit":
            return False
        if cmd == "start":
            # Who the worker is may come with the command (an agent started ahead of its worker: on
            # Kubernetes its pod is made only when the worker starts).
            os.environ.update(order.get("env") or {})
            worker = Worker(
                order["name"],
                create_backend(self.backend_name),
                self.recorder,
                order["ttl"],
                order["namespace"],
            )
            self.workers[worker.name] = worker
            tg.start_soon(worker.run)
        elif cmd in (*CALLS, "burst", "exit"):
            found = self.workers.get(order["name"])
            if found is not None and not found.finished:
                found.give(cmd, order.get("args", {}))
        elif cmd == "watch":
            tg.start_soon(self.watch, order)
        elif cmd == "probed":
            self.recorder.probed.get(order["name"], anyio.Event()).set()
        return True

    async def watch(self, order: dict[str, Any]) -> None:
        name, kind, query = order["name"], order["kind"], InstanceQuery(order["namespace"])
        while True:  # a watcher that cannot start yet (its server is away) tries again, as a supervisor would
            try:
                if kind == "backend":
                    async with create_backend(self.backend_name) as backend:
                        await watch_backend(name, backend, query, self.recorder, _never_paused)
                    return
                backend_name = canonical_backend_name(self.backend_name, "the agent's argument")
                runtime = DistributedRuntime(backend_name, lease_ttl=order["ttl"])
                host = await RuntimeHost.start(runtime)
                try:
                    if kind == "runtime":
                        await watch_runtime(name, runtime, query, self.recorder, _never_paused)
                    else:
                        await watch_client(name, runtime, order["endpoint"], self.recorder, _never_paused)
                finally:
                    await host.stop()
                return
            except Exception as exc:
                log.warning("watcher %s could not start (%s); trying again", name, exc)
                await anyio.sleep(0.5)

    async def run(self) -> None:
        if self.backend_name == "kubernetes":
            import dyndisc.backends.kubernetes.api  # noqa: F401 - the client's imports, before the clock runs
        self.recorder.ready()
        async with anyio.create_task_group() as tg:
            lines = anyio.wrap_file(sys.stdin)
            async for line in lines:
                if line.strip() and not await self.command(tg, line):
                    break
            for worker in self.workers.values():
                if not worker.finished and worker.host is not None:
                    worker.finished = True
                    with anyio.move_on_after(5):
                        await worker.host.stop()
            tg.cancel_scope.cancel()


def main() -> None:
    """``python -m dyndisc.testing.chaos.agent BACKEND`` (settings from the environment)."""
    level = os.environ.get("DYNDISC_CHAOS_LOG_LEVEL", "WARNING")  # the agents' logs are kept per seed
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("asyncio", "grpc", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.getLogger(noisy).getEffectiveLevel(), logging.INFO))
    anyio.run(Agent(sys.argv[1]).run)


if __name__ == "__main__":
    main()
