"""The actors of a chaos run: workers (a runtime each) and watchers of every kind, and what they record.

The same actors run in the simulation (in one process, on virtual time) and in the agent processes of a
real run; a :class:`Recorder` takes what they do and see (into a :class:`~.history.History`, or as JSON lines
to the orchestrator).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from dyndisc._client import Client
from dyndisc._events import DiscoveryEvent, Resync
from dyndisc._models import Instance, InstanceQuery
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.chaos.history import record_of
from dyndisc.testing.faults import CrashableBackend
from dyndisc.testing.hosting import RuntimeHost

log = logging.getLogger("dyndisc.chaos")


class Recorder(Protocol):
    """Where actors report: a history in this process, or the orchestrator of a real run."""

    def now(self) -> float: ...

    def op_start(self, actor: str, action: str, args: dict[str, Any]) -> int: ...

    def op_end(self, op: int, *, result: Any = None, error: BaseException | None = None) -> None: ...

    def seen(self, watcher: str, event: DiscoveryEvent) -> None: ...

    def lease(self, runtime: str, instance_id: int | None, state: str) -> None: ...


class RecordedBackend(CrashableBackend):
    """A worker's backend: crashable and pausable, and every record it writes goes into the history (the
    registrations a replacement lease makes included): the set no watcher may hold anything outside of."""

    def __init__(self, inner: DiscoveryBackend, actor: str, recorder: Recorder) -> None:
        super().__init__(inner)
        self.actor = actor
        self.recorder = recorder

    async def register(self, instance: Instance, lease: Lease) -> Instance:
        # Recorded before the call: a write whose answer never came may still have been applied.
        op = self.recorder.op_start(self.actor, "write", {"record": list(record_of(instance))})
        try:
            stored = await super().register(instance, lease)
        except BaseException as error:
            self.recorder.op_end(op, error=error)
            raise
        self.recorder.op_end(op, result=list(record_of(stored)))
        return stored


class Worker:
    """One runtime, doing the steps it is given one after another (as an application does)."""

    def __init__(self, name: str, backend: DiscoveryBackend, recorder: Recorder, ttl: float, namespace: str):
        self.name = name
        self.recorder = recorder
        self.backend = RecordedBackend(backend, name, recorder)
        self.ttl = ttl
        self.namespace = namespace
        self.host: RuntimeHost | None = None
        self._steps: list[tuple[str, dict[str, Any]]] = []
        self._wake = anyio.Event()
        self.finished = False

    def give(self, action: str, args: dict[str, Any]) -> None:
        """Queue an operation (``register``, ``unregister``, ``exit``)."""
        self._steps.append((action, args))
        self._wake.set()

    def _on_change(self, change: Any) -> None:
        self.recorder.lease(self.name, change.old_instance_id, "replaced")
        self.recorder.lease(self.name, change.new_instance_id, "held")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the runtime, then do the queued steps until ``exit`` (or until cancelled: a kill)."""
        runtime = DistributedRuntime(self.backend, lease_ttl=self.ttl, on_lease_change=self._on_change)
        op = self.recorder.op_start(self.name, "start", {})
        try:
            self.host = await RuntimeHost.start(runtime)
        except Exception as exc:
            self.recorder.op_end(op, error=exc)
            self.finished = True
            task_status.started()
            return
        self.recorder.op_end(op, result=f"{runtime.instance_id:x}")
        self.recorder.lease(self.name, runtime.instance_id, "held")
        task_status.started()
        while not self.finished:
            while not self._steps:
                self._wake = anyio.Event()
                await self._wake.wait()
            action, args = self._steps.pop(0)
            await self._do(runtime, action, args)

    async def _do(self, runtime: DistributedRuntime, action: str, args: dict[str, Any]) -> None:
        if "endpoint" in args:
            args = {**args, "endpoint": f"{self.namespace}.{args['endpoint']}"}
        op = self.recorder.op_start(self.name, action, args)
        try:
            if action == "register":
                found = await runtime.endpoint(args["endpoint"]).register(args["transport"], args["metadata"])
                self.recorder.op_end(op, result=list(record_of(found)))
            elif action == "unregister":
                await runtime.endpoint(args["endpoint"]).unregister()
                self.recorder.op_end(op)
            elif action == "exit":
                lease = runtime.instance_id
                assert self.host is not None
                self.finished = True
                await self.host.stop()
                await self.backend.aclose()  # the runtime does not close a backend it was given
                health = runtime.health()
                self.recorder.op_end(op)
                # Revoked: gone now. Not revoked (the store was away): it ends on its TTL, as a kill's.
                self.recorder.lease(self.name, lease, "revoked" if health.reason == "revoked" else "killed")
            else:
                raise ValueError(f"unknown worker action {action!r}")
        except Exception as exc:
            self.recorder.op_end(op, error=exc)
            if self.host is not None and self.host.done:
                self.finished = True
                self.recorder.lease(self.name, None, "failed")

    def kill(self) -> None:
        """Die as a SIGKILLed process: no keep-alive, no revoke (the caller cancels the task)."""
        self.backend.crash()
        if self.host is not None and not self.host.done:
            self.recorder.lease(self.name, self.host.runtime.instance_id, "killed")
        self.finished = True

    def pause(self) -> None:
        """Stop sending anything (a SIGSTOP) until :meth:`resume`."""
        self.backend.pause()

    def resume(self) -> None:
        self.backend.resume()


async def watch_backend(
    name: str,
    backend: DiscoveryBackend,
    query: InstanceQuery,
    recorder: Recorder,
    paused: Callable[[], Awaitable[None]],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A backend watch: every event it delivers, recorded."""
    async with backend.watch(query) as events:
        task_status.started()
        async for event in events:
            recorder.seen(name, event)
            await paused()


async def watch_runtime(
    name: str,
    runtime: DistributedRuntime,
    query: InstanceQuery,
    recorder: Recorder,
    paused: Callable[[], Awaitable[None]],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """``runtime.watch()``: every event a subscriber gets, recorded."""
    async with runtime.watch(query) as events:
        task_status.started()
        async for event in events:
            recorder.seen(name, event)
            await paused()


async def watch_client(
    name: str,
    runtime: DistributedRuntime,
    endpoint: str,
    recorder: Recorder,
    paused: Callable[[], Awaitable[None]],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A ``Client`` of one endpoint: its whole view (draining instances too), recorded at every change."""
    client: Client = await runtime.endpoint(endpoint).client()
    task_status.started()
    while True:
        recorder.seen(name, Resync(instances=tuple(client.instances(include_draining=True))))
        await client.wait_changed()
        await paused()
