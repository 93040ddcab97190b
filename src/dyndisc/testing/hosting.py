"""Run a :class:`~dyndisc.DistributedRuntime` in a task of its own.

``async with runtime:`` must be entered and left in the same task (it owns a task group). Test fixtures
set up and tear down in different tasks, so they host the runtime in a dedicated task instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.faults import CrashableBackend

#: The type of the pytest plugin's ``dyndisc_make_runtime`` fixture:
#: ``await dyndisc_make_runtime(backend=None, **kwargs)`` starts a runtime in a task of its own (a
#: :class:`RuntimeHost`) and returns it.
MakeRuntime = Callable[..., Awaitable[DistributedRuntime]]


class RuntimeHost:
    """A runtime running in its own asyncio task until :meth:`stop` (or a crash) ends it."""

    def __init__(self, runtime: DistributedRuntime) -> None:
        self.runtime = runtime
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, runtime: DistributedRuntime) -> RuntimeHost:
        """Enter ``runtime`` in a new task and return once it is running (or raise why it could not start)."""
        host = cls(runtime)
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        host._task = asyncio.create_task(host._run(started), name=f"dyndisc-runtime-{id(runtime):x}")
        await started
        return host

    async def _run(self, started: asyncio.Future[None]) -> None:
        try:
            async with self.runtime:
                started.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
                return
            raise

    @property
    def done(self) -> bool:
        """True once the runtime has exited (stopped, or shut down by its lease-loss policy)."""
        return self._task is not None and self._task.done()

    async def wait(self) -> None:
        """Wait for the runtime to exit; re-raise what ended it (e.g. :class:`~dyndisc.LeaseLostError`)."""
        assert self._task is not None
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Leave the runtime cleanly (revoking its lease) and wait for it."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def crash(self) -> None:
        """Stop as a killed process would: no more keep-alives and no revoke; the lease expires by itself.

        The runtime must run on a :class:`~dyndisc.testing.faults.CrashableBackend` (the fixtures' runtimes
        do): ``DistributedRuntime(CrashableBackend(backend))``.
        """
        backend = self.runtime.backend
        if not isinstance(backend, CrashableBackend):
            raise TypeError(
                f"cannot crash a runtime on {type(backend).__name__}: build it on "
                "dyndisc.testing.CrashableBackend(backend) to crash it in a test"
            )
        backend.crash()
        await self.stop()
