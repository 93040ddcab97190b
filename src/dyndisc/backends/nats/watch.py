"""A prefix watch over NATS KV that makes a new consumer, and resyncs, whenever it may have missed events."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import anyio
from anyio.abc import TaskStatus

from dyndisc._retry import Backoff
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot
from dyndisc.backends.kv.event_queue import MAX_PENDING_EVENTS as MAX_PENDING_EVENTS  # the same bound
from dyndisc.backends.nats.feed import KvChange, KvFeed
from dyndisc.backends.nats.keys import decode_key, is_internal, prefix_filter

log = logging.getLogger("dyndisc.nats")

#: Seconds a watch waits for its initial state before it gives up on the consumer and makes a new one.
SNAPSHOT_TIMEOUT = 10.0
#: Backoff bounds between attempts to re-create a consumer while the server is away.
RETRY_MIN, RETRY_MAX = 0.1, 2.0


def user_key(nats_key: str) -> str | None:
    """The dyndisc key stored at ``nats_key``; ``None`` (with a warning for foreign keys) if there is none."""
    if is_internal(nats_key):
        return None
    key = decode_key(nats_key)
    if key is None:
        log.warning(
            "skipping NATS KV key %r: not written by dyndisc (its encoding is not reversible)", nats_key
        )
    return key


class NatsWatch:
    """One prefix watch: keeps a consumer alive (re-creating it after reconnects) and queues events."""

    def __init__(self, open_feed: Callable[[KvFeed, str], Awaitable[None]], prefix: str) -> None:
        self._open_feed = open_feed
        self.prefix = prefix
        self.key_filter = prefix_filter(prefix)
        self.pending: deque[StoreEvent] = deque()
        self.wake = anyio.Event()
        self._restart = anyio.Event()
        self._generation = 0
        # Set by the initial state or by a restart request: what the run loop waits for after subscribing.
        self._progress = anyio.Event()
        self._has_snapshot = False

    def restart(self, why: str) -> None:
        """Drop the current consumer and resync from a new one (events of the old one are ignored)."""
        log.debug("restarting watch of %r: %s", self.prefix, why)
        self._generation += 1
        self._restart.set()
        self._progress.set()

    def on_reconnect(self) -> None:
        """The connection came back: the server may have dropped our consumer, so make a new one."""
        self.restart("reconnected")

    def _on_snapshot(self, generation: int, items: dict[str, KvChange]) -> None:
        if generation != self._generation:
            return
        snapshot: dict[str, bytes] = {}
        for nats_key, change in items.items():
            key = user_key(nats_key)
            if key is not None and key.startswith(self.prefix) and change.value is not None:
                snapshot[key] = change.value
        self.pending.clear()  # a snapshot supersedes everything before it
        self.pending.append(StoreSnapshot(items=snapshot))
        self._has_snapshot = True
        self._progress.set()
        self.wake.set()

    def _on_change(self, generation: int, change: KvChange) -> None:
        if generation != self._generation:
            return
        key = user_key(change.nats_key)
        if key is None or not key.startswith(self.prefix):
            return
        if len(self.pending) >= MAX_PENDING_EVENTS:
            # A slow consumer: stop queueing, resync once it catches up (memory stays bounded).
            self.pending.clear()
            self.restart("the consumer fell behind")
            return
        self.pending.append(
            StoreDelete(key=key) if change.value is None else StorePut(key=key, value=change.value)
        )
        self.wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep a consumer open until cancelled; ``started`` once the first one exists (its errors raise)."""
        started = False
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        while True:
            self._restart = anyio.Event()
            self._progress = anyio.Event()
            self._has_snapshot = False
            generation = self._generation
            feed = KvFeed(partial(self._on_snapshot, generation), partial(self._on_change, generation))
            try:
                await self._open_feed(feed, self.key_filter)
            except Exception as exc:
                await close_feed(feed)
                if not started:
                    raise
                delay = backoff.next_delay()
                log.warning(
                    "cannot re-create the watch of %r (%s); retrying in %.2fs", self.prefix, exc, delay
                )
                with anyio.move_on_after(delay):
                    await self._restart.wait()
                continue
            if not started:
                started = True
                task_status.started()
            try:
                with anyio.move_on_after(SNAPSHOT_TIMEOUT):
                    await self._progress.wait()
                if not self._has_snapshot and not self._restart.is_set():
                    log.warning(
                        "the watch of %r got no initial state in %.0fs; re-creating it",
                        self.prefix,
                        SNAPSHOT_TIMEOUT,
                    )
                    self.restart("no initial state")
                    continue
                backoff.reset()
                await self._restart.wait()
            finally:
                await close_feed(feed)

    async def events(self) -> AsyncIterator[StoreEvent]:
        """The queued events: a snapshot first (and after every restart), then puts and deletes."""
        while True:
            if self.pending:
                yield self.pending.popleft()
            else:
                await self.wake.wait()
                self.wake = anyio.Event()


async def close_feed(feed: KvFeed) -> None:
    """Close ``feed`` even when cancelled, giving up after 2 s on a dead connection."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
        await feed.close()
