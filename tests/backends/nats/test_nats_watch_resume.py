"""How a NATS watch comes back, path by path, on a real nats-server (nats/watch.py at its boundary).

A watch is two ordered consumers (the prefix's keys, the lease keys), each created with "deliver last per
subject". Two things bring it back after a break:

* the connection drops and comes back (a cut, a server restart): the watch makes new consumers at once and
  emits a fresh snapshot (a resync, never a resume);
* the connection stays up but a consumer is lost (deleted on the server, a stream moved to another server
  of a cluster): nats-py's ordered consumer notices the missing heartbeats and makes a new consumer from the
  stream sequence after the last message it delivered. That resume cannot see what left the stream
  meanwhile (a purge, a delete marker past its TTL; the bucket keeps one message per key), so the watch
  takes the first message of a consumer made anew as its cue to resync too.

Each test forces one path and checks what the watch delivers after it, event by event.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import nats
import pytest
from nats.js import JetStreamContext
from nats_helpers import PROMPT, MakeServer, MakeStore, eventually, next_event, unique_prefix

from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot
from dyndisc.backends.nats import NatsStore
from dyndisc.backends.nats.keys import encode_key
from dyndisc.testing.servers import NatsServer

#: nats-py's ordered consumer gives a consumer up after two idle heartbeats without a message; the tests of
#: that path ask for this heartbeat instead of the default 5 s, so the resume comes in about a second.
HEARTBEAT = 0.5
#: Time for nats-py to notice a lost consumer and make a new one: two heartbeats, checked every two.
RESUMED = 4 * HEARTBEAT + PROMPT


class _Heartbeats:
    """A JetStream context whose push subscriptions ask for :data:`HEARTBEAT` (all else passes through)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        return await self._js.subscribe(*args, idle_heartbeat=HEARTBEAT, **kwargs)


def quick_heartbeats(store: NatsStore) -> None:
    """Make ``store``'s watches ask for :data:`HEARTBEAT` (a timing, not a change of logic)."""
    bucket = store.connection

    async def open_feed(feed: Any, key_filter: str) -> None:
        js = await bucket.jetstream()
        with bucket.translate(f"watch keys {key_filter!r}"):
            await feed.open(_Heartbeats(js), bucket.stream, bucket.subject_prefix, key_filter)

    bucket.open_feed = open_feed  # type: ignore[method-assign]


@asynccontextmanager
async def admin(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """A JetStream client of the test's own, for what an operator (or a cluster) does to the stream."""
    nc = await nats.connect(server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def delete_consumers(js: JetStreamContext, stream: str) -> int:
    """Delete every consumer of ``stream`` (the watch's two, on a server of the test's own)."""
    consumers = await js.consumers_info(stream)
    for consumer in consumers:
        await js.delete_consumer(stream, consumer.name)
    return len(consumers)


async def until_consumers(js: JetStreamContext, stream: str, count: int) -> None:
    async def enough() -> bool:
        return len(await js.consumers_info(stream)) >= count

    await eventually(enough, RESUMED, f"{count} consumers on {stream}")


async def no_more_than(events: AsyncIterator[StoreEvent], writer: NatsStore, prefix: str) -> None:
    """Nothing else is queued: a marker written now is the very next event."""
    await writer.put(f"{prefix}marker", b"end", 0)
    assert await next_event(events) == StorePut(key=f"{prefix}marker", value=b"end")


async def test_a_consumer_lost_under_a_live_connection_resyncs_with_nothing_lost_or_twice(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    writer, watcher = make_store(server.url), make_store(server.url)
    quick_heartbeats(watcher)
    prefix = unique_prefix()
    await writer.put(f"{prefix}leaves", b"1", 0)
    await writer.put(f"{prefix}changes", b"1", 0)
    async with watcher.watch(prefix) as events, admin(server) as js:
        assert await next_event(events) == StoreSnapshot(
            items={f"{prefix}leaves": b"1", f"{prefix}changes": b"1"}
        )
        stream = watcher.connection.stream
        assert await delete_consumers(js, stream) == 2
        # Made while the watch has no consumer on the server.
        await writer.delete(f"{prefix}leaves")
        await writer.put(f"{prefix}changes", b"2", 0)
        await writer.put(f"{prefix}joins", b"1", 0)

        expected = {f"{prefix}changes": b"2", f"{prefix}joins": b"1"}
        assert await next_event(events, timeout=RESUMED) == StoreSnapshot(items=expected)
        await until_consumers(js, stream, 2)
        await no_more_than(events, writer, prefix)


async def test_a_consumer_lost_while_the_stream_is_purged_resyncs(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    writer, watcher = make_store(server.url), make_store(server.url)
    quick_heartbeats(watcher)
    prefix = unique_prefix()
    await writer.put(f"{prefix}purged", b"1", 0)
    async with watcher.watch(prefix) as events, admin(server) as js:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}purged": b"1"})
        stream = watcher.connection.stream
        await delete_consumers(js, stream)
        await js.purge_stream(stream)  # the history is gone, and every key with it: no delete marker
        await writer.put(f"{prefix}after", b"2", 0)

        assert await next_event(events, timeout=RESUMED) == StoreSnapshot(items={f"{prefix}after": b"2"})
        await no_more_than(events, writer, prefix)


@pytest.mark.slow
async def test_a_delete_whose_marker_expired_while_the_consumer_was_lost_resyncs(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    writer = make_store(server.url, kv_marker_ttl=1)
    watcher = make_store(server.url)  # nats-py's default heartbeat: it notices the lost consumer in 10-20 s
    prefix = unique_prefix()
    gone = f"{prefix}gone"
    await writer.put(gone, b"1", 0)
    async with watcher.watch(prefix) as events, admin(server) as js:
        assert await next_event(events) == StoreSnapshot(items={gone: b"1"})
        await delete_consumers(js, watcher.connection.stream)
        await writer.delete(gone)  # its marker lives 1 s: gone long before nats-py makes a new consumer

        async def marker_gone() -> bool:
            return await writer.connection.get(encode_key(gone)) is None

        await eventually(marker_gone, PROMPT, "the delete marker to expire")
        await writer.put(f"{prefix}after", b"2", 0)
        # The new consumer starts after the last message delivered: the delete is no longer there to see.
        assert await next_event(events, timeout=20 + PROMPT) == StoreSnapshot(items={f"{prefix}after": b"2"})
        await no_more_than(events, writer, prefix)


async def test_a_server_restarted_on_its_data_resyncs_once(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    writer, watcher = make_store(server.url), make_store(server.url)
    prefix = unique_prefix()
    await writer.put(f"{prefix}kept", b"1", 0)
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}kept": b"1"})
        await anyio.to_thread.run_sync(server.kill)
        await anyio.to_thread.run_sync(server.start)
        assert await next_event(events, timeout=RESUMED) == StoreSnapshot(items={f"{prefix}kept": b"1"})
        await writer.delete(f"{prefix}kept")
        assert await next_event(events) == StoreDelete(key=f"{prefix}kept")
        await no_more_than(events, writer, prefix)


def _lose_everything(server: NatsServer) -> None:
    """A restart without JetStream's state: its KV bucket and every key in it are gone."""
    server.kill()
    shutil.rmtree(server.store_dir)
    server.start()


async def test_a_server_restarted_without_its_data_resyncs_to_an_empty_bucket_once_there_is_one(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    writer, watcher = make_store(server.url), make_store(server.url)
    prefix = unique_prefix()
    await writer.put(f"{prefix}lost", b"1", 0)
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}lost": b"1"})
        await anyio.to_thread.run_sync(_lose_everything, server)
        await make_store(server.url).get_prefix(prefix)  # a new store's first connection makes the bucket
        assert await next_event(events, timeout=RESUMED) == StoreSnapshot(items={})
        await writer.put(f"{prefix}new", b"2", 0)
        assert await next_event(events) == StorePut(key=f"{prefix}new", value=b"2")


@pytest.mark.xfail(
    strict=True,
    reason="a NatsStore creates its bucket on its first connection only (nats/connection.py): after a server "
    "lost its JetStream state, its watches retry 'stream not found' for ever and keep what they had",
)
async def test_a_server_restarted_without_its_data_resyncs_the_watch_by_itself(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    watcher = make_store(server.url)
    prefix = unique_prefix()
    await watcher.put(f"{prefix}lost", b"1", 0)
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}lost": b"1"})
        await anyio.to_thread.run_sync(_lose_everything, server)
        assert await next_event(events, timeout=RESUMED) == StoreSnapshot(items={})
