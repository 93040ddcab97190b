"""Small structured-concurrency helpers shared by the runtime and the backends."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

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

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._exclusive:
            await self._changed.wait()
        self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            if self._exclusive and not self._shared:  # the exclusive holder waits for the last of us
                self._notify()

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


class KeyedLocks:
    """One lock per key, made on first use and dropped once nobody holds or waits for it.

    Writes to different keys proceed concurrently; writes to one key (and a keep-alive's conditional
    re-publish of it) take turns.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (anyio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


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
