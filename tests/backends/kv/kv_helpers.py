"""Helpers of the revisioned-watch tests: the virtual clock, and reading a watch's events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from dyndisc.backends.kv import StoreEvent, StorePut
from dyndisc.backends.kv.revisioned import SharedWatch
from dyndisc.backends.memory import MemoryStore
from dyndisc.testing.chaos.sim import VirtualLoop

PREFIX = "/p/"
#: Virtual seconds a test may take: far more than any backoff, so only a test that hangs reaches it.
DEADLINE = 120.0


def virtual(test: Callable[[], Awaitable[None]]) -> None:
    """Run ``test`` on the virtual clock, failing it at :data:`DEADLINE` virtual seconds."""

    async def bounded() -> None:
        with anyio.fail_after(DEADLINE):
            await test()

    anyio.run(bounded, backend_options={"loop_factory": VirtualLoop})


async def take(events: AsyncIterator[StoreEvent], count: int) -> list[StoreEvent]:
    """The next ``count`` events."""
    return [await anext(events) for _ in range(count)]


async def nothing_more(events: AsyncIterator[StoreEvent], store: MemoryStore) -> None:
    """Nothing is queued for ``events``: a marker written now is the very next event."""
    await store.put(f"{PREFIX}marker", b"end", 0)
    assert await anext(events) == StorePut(key=f"{PREFIX}marker", value=b"end")


def shared(store: MemoryStore) -> SharedWatch:
    """The store's shared watch of :data:`PREFIX` (its revision, resumes and relists)."""
    return store._watches[PREFIX]
