"""Small helpers shared by the NATS backend tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio

from dyndisc.backends.nats import NatsStore
from dyndisc.testing.servers import NatsServer

MakeServer = Callable[..., NatsServer]
MakeStore = Callable[..., NatsStore]
E = TypeVar("E")

#: Seconds within which a change must reach a watcher once nats-server is reachable.
PROMPT = 5.0


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/t{uuid.uuid4().hex[:12]}/"


async def next_event(events: AsyncIterator[E], timeout: float = PROMPT) -> E:
    """The next event, or fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        return await anext(events)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds.

    For states that have no event to wait on (server-side stream state, a store's ``stale_since``).
    """
    try:
        with anyio.fail_after(timeout):
            while not await check():  # noqa: ASYNC110 - no event exists for these states
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
