"""Small structured-concurrency helpers shared by the runtime and the backends."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager

import anyio
from anyio.abc import TaskGroup


@asynccontextmanager
async def background_tasks() -> AsyncIterator[TaskGroup]:
    """A task group for helper tasks that live exactly as long as the ``async with`` body.

    On a normal exit the helpers are cancelled. A single error (from the body or a helper) propagates as
    itself rather than wrapped in an ``ExceptionGroup``, so callers can catch what they expect.
    """
    try:
        async with anyio.create_task_group() as tg:
            yield tg
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _single(group) from None


async def run_bounded(jobs: Iterable[Callable[[], Awaitable[object]]], limit: int) -> None:
    """Run every job, at most ``limit`` at once, and return when all are done. The first error cancels the
    rest and propagates as itself (several at once: as a group)."""
    queue = iter(jobs)

    async def worker() -> None:
        for job in queue:
            await job()

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(limit):
                tg.start_soon(worker)
    except BaseExceptionGroup as group:
        raise _single(group) from None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the garbage collector out of a bulk step that makes many objects and frees none (decoding a
    snapshot): each collection it would trigger rescans everything made so far, so a large snapshot would
    cost more per instance than a small one. Only synchronous code may run inside (no awaits): the pause is
    process-wide, and must not outlast the step.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group


class SharedExclusiveLock:
    """Many holders in ``shared()`` at once, or one in ``exclusive()``; a waiting exclusive holder goes first.

    Registrations run concurrently under the shared side; replacing a lost lease takes the exclusive side,
    so no registration is half-way through on the old lease while endpoints move to the new one. The
    shared side takes no turn of the event loop unless an exclusive holder is waiting or inside: it is on
    every registration's path, and each turn of a busy loop costs more than the bookkeeping.
    """

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def shared(self) -> AbstractAsyncContextManager[None]:
        """Hold the shared side (a plain object, not a generator: it is on every registration's path)."""
        return _SharedHold(self)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        while self._exclusive:
            await self._changed.wait()
        self._exclusive = True
        try:
            while self._shared:
                await self._changed.wait()
        except BaseException:
            self._exclusive = False
            self._notify()
            raise
        try:
            yield
        finally:
            self._exclusive = False
            self._notify()


class _SharedHold:
    __slots__ = ("_lock",)

    def __init__(self, lock: SharedExclusiveLock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        lock = self._lock
        while lock._exclusive:
            await lock._changed.wait()
        lock._shared += 1

    async def __aexit__(self, *exc_info: object) -> None:
        lock = self._lock
        lock._shared -= 1
        if lock._exclusive and not lock._shared:  # the exclusive holder waits for the last of us
            lock._notify()


class KeyedLocks:
    """One lock per key, held only while used: writes to different keys proceed concurrently, writes to one
    key take turns. Taking a free key's lock costs no turn of the event loop (it is on every write's path);
    a waiter is woken when the key is released and tries again.
    """

    def __init__(self) -> None:
        #: Held keys, each with the events of the tasks waiting for it.
        self._held: dict[Hashable, list[anyio.Event]] = {}

    def hold(self, key: Hashable) -> AbstractAsyncContextManager[None]:
        """Hold ``key``'s lock for the ``async with`` block."""
        return _KeyHold(self._held, key)

    def __len__(self) -> int:
        return len(self._held)


class _KeyHold:
    __slots__ = ("_held", "_key")

    def __init__(self, held: dict[Hashable, list[anyio.Event]], key: Hashable) -> None:
        self._held = held
        self._key = key

    async def __aenter__(self) -> None:
        while (waiters := self._held.get(self._key)) is not None:
            released = anyio.Event()
            waiters.append(released)
            await released.wait()
        self._held[self._key] = []

    async def __aexit__(self, *exc_info: object) -> None:
        for released in self._held.pop(self._key):
            released.set()


class Wake:
    """A level-triggered flag a task can wait on: set by producers, cleared by the one consumer."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        """Wake the consumer (now, or at its next wait)."""
        self._event.set()

    def clear(self) -> None:
        """Forget earlier wake-ups (the consumer is about to look)."""
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self) -> None:
        """Wait until set."""
        await self._event.wait()
