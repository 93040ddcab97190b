"""Small helpers shared by the NATS backend tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import nats
from nats.js import api

from dyndisc.backends.nats import NatsStore
from dyndisc.backends.nats.feed import MARKER_REASON
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


class RawBucket:
    """A dyndisc bucket read and written with plain nats-py."""

    def __init__(self, js: Any, bucket: str) -> None:
        self.js = js
        self.bucket = bucket

    async def last(self, nats_key: str) -> api.RawStreamMsg | None:
        """The last message stored for ``nats_key`` (a value or a deletion marker), ``None`` if none."""
        try:
            found: api.RawStreamMsg = await self.js.get_msg(
                f"KV_{self.bucket}", subject=f"$KV.{self.bucket}.{nats_key}"
            )
        except nats.js.errors.NotFoundError:
            return None
        return found

    async def headers(self, nats_key: str) -> dict[str, str]:
        """The headers of the last message of ``nats_key``, which must exist."""
        found = await self.last(nats_key)
        assert found is not None, f"nothing stored for {nats_key!r}"
        return dict(found.headers or {})

    async def expired(self, nats_key: str) -> bool:
        """Whether the last message of ``nats_key`` is the server's expiry marker."""
        found = await self.last(nats_key)
        return found is not None and MARKER_REASON in (found.headers or {})

    async def gone(self, nats_key: str) -> bool:
        """Whether nothing at all is stored for ``nats_key`` (its expiry marker too has expired)."""
        return await self.last(nats_key) is None

    async def delete(self, nats_key: str) -> None:
        """Delete ``nats_key`` as any KV client does (``nats kv del``): a ``KV-Operation: DEL`` marker."""
        kv = await self.js.key_value(self.bucket)
        await kv.delete(nats_key)


@asynccontextmanager
async def raw_bucket(server: NatsServer, bucket: str) -> AsyncIterator[RawBucket]:
    """A dyndisc bucket read and written with plain nats-py, never through dyndisc (whose readers hide, and
    purge, what they find orphaned)."""
    nc = await nats.connect(server.url)
    try:
        yield RawBucket(nc.jetstream(), bucket)
    finally:
        await nc.close()
