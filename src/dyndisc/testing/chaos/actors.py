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
from dyndisc.testing.chaos.calls import CALLS, recorded_args
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

    def renewed(self, runtime: str, lease: int) -> None: ...

    async def returned(self, actor: str, action: str, args: dict[str, Any]) -> None:
        """``actor``'s ``action`` (a clean exit, an unregistration) returned: the harness reads the store."""
        ...


class CancelledByCaller(Exception):
    """What the history says of a call its caller cancelled (its ``move_on_after`` ran out)."""


class RecordedBackend(CrashableBackend):
    """A worker's backend: crashable and pausable, and every lease it is granted, every renewal the server
    answers and every record it writes go into the history (a replacement lease's and its writes
    included): what the checker judges leases by, and the set no watcher may hold anything outside of."""

    def __init__(self, inner: DiscoveryBackend, actor: str, recorder: Recorder) -> None:
        super().__init__(inner)
        self.actor = actor
        self.recorder = recorder

    async def grant_lease(self, ttl: float) -> Lease:
        op = self.recorder.op_start(self.actor, "grant", {"ttl": ttl})
        try:
            lease = await super().grant_lease(ttl)
        except BaseException as error:
            self.recorder.op_end(op, error=error)
            raise
        self.recorder.op_end(op, result=[lease.id, lease.ttl])
        return lease

    async def keep_alive(self, lease: Lease) -> float:
        left = await super().keep_alive(lease)
        if left > 0:
            self.recorder.renewed(self.actor, lease.id)
        return left

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

    def __init__(
        self, name: str, backend: DiscoveryBackend, recorder: Recorder, ttl: float, namespace: str
    ) -> None:
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
        """Queue an operation (a call of :data:`~.calls.CALLS`, ``burst`` or ``exit``)."""
        self._steps.append((action, args))
        self._wake.set()

    def _on_change(self, change: Any) -> None:
        self.recorder.lease(self.name, change.old_instance_id, "replaced")
        self.recorder.lease(self.name, change.new_instance_id, "held")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the runtime, then do the queued steps until ``exit`` (or until cancelled: a kill)."""
        runtime = DistributedRuntime(self.backend, lease_ttl=self.ttl, on_lease_change=self._on_change)
        op = self.recorder.op_start(self.name, "start", {"ttl": self.ttl})
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
            if action == "exit":
                await self._exit(runtime)
            elif action == "burst":
                async with anyio.create_task_group() as tg:
                    for registration in args["registrations"]:
                        tg.start_soon(self._call, runtime, "register", registration)
            else:
                await self._call(runtime, action, args)

    async def _call(self, runtime: DistributedRuntime, action: str, args: dict[str, Any]) -> None:
        args = recorded_args(action, args, self.namespace, self.name)
        op = self.recorder.op_start(self.name, action, args)
        result: Any = None
        try:
            with anyio.move_on_after(args.get("cancel_after", float("inf"))) as scope:
                result = await CALLS[action](runtime, args)
        except Exception as exc:
            self.recorder.op_end(op, error=exc)
            if self.host is not None and self.host.done and not self.finished:
                self.finished = True
                self.recorder.lease(self.name, None, "failed")
            return
        if scope.cancelled_caught:
            self.recorder.op_end(op, error=CancelledByCaller(f"cancelled after {args['cancel_after']}s"))
            return
        self.recorder.op_end(op, result=result)
        if action == "unregister":
            await self.recorder.returned(self.name, action, args)

    async def _exit(self, runtime: DistributedRuntime) -> None:
        """Leave the runtime cleanly. Whether that removed everything is for the store to say: the harness
        reads it as this returns (the runtime's own word, its health, is not asked)."""
        lease = runtime.instance_id
        op = self.recorder.op_start(self.name, "exit", {})
        assert self.host is not None
        self.finished = True
        try:
            await self.host.stop()
            await self.backend.aclose()  # the runtime does not close a backend it was given
        except Exception as exc:
            self.recorder.op_end(op, error=exc)
        else:
            self.recorder.op_end(op)
        self.recorder.lease(self.name, lease, "exited")
        await self.recorder.returned(self.name, "exit", {})

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
