"""Small helpers shared by the etcd backend tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import anyio

from dyndisc.backends.etcd import EtcdStore
from dyndisc.testing.servers import EtcdServer

MakeServer = Callable[..., EtcdServer]
MakeStore = Callable[..., EtcdStore]
E = TypeVar("E")

#: Seconds within which a change must reach a watcher once etcd is reachable.
PROMPT = 10.0


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/t{uuid.uuid4().hex[:12]}/"


async def next_event(events: AsyncIterator[E], timeout: float = PROMPT) -> E:
    """The next event, or fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        return await anext(events)


async def poll_until(predicate: Callable[[], bool], what: str, timeout: float = PROMPT) -> None:
    """Wait until ``predicate()`` holds, for state that has no change notification (e.g. ``stale_since``)."""
    with anyio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on: the state is a plain attribute
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
