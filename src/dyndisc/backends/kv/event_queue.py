"""The queue between one store watch and its consumer, shared by the stores that fan one watch out."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable

import anyio

from dyndisc.backends.kv.store import StoreDelete, StoreEvent, StorePut, StoreSnapshot

#: Events a consumer may have queued before it is switched to a fresh snapshot instead: a slow consumer then
#: costs memory bounded by the size of the data, never an unbounded backlog, and stalls nobody.
MAX_PENDING_EVENTS = 10_000


class StoreEventQueue:
    """What one consumer of a watch has yet to read: a snapshot first, then puts and deletes.

    ``snapshot()`` returns the watched prefix's current contents, or ``None`` while they are not known yet
    (the consumer then waits for a :meth:`resync`). Past :data:`MAX_PENDING_EVENTS` queued events, or on
    :meth:`resync`, the backlog is dropped and the consumer's next event is a fresh snapshot.
    """

    def __init__(self, snapshot: Callable[[], dict[str, bytes] | None]) -> None:
        self._snapshot = snapshot
        self._pending: deque[StorePut | StoreDelete] = deque()
        self._needs_snapshot = True
        self._wake = anyio.Event()

    def push(self, event: StorePut | StoreDelete) -> None:
        """Queue a change (dropped while a snapshot is due: the snapshot will include it)."""
        if self._needs_snapshot:
            return
        if len(self._pending) >= MAX_PENDING_EVENTS:
            self.resync()
            return
        self._pending.append(event)
        self._wake.set()

    def resync(self) -> None:
        """Drop the backlog: the consumer's next event is a fresh snapshot."""
        self._pending.clear()
        self._needs_snapshot = True
        self._wake.set()

    async def events(self) -> AsyncIterator[StoreEvent]:
        """The consumer's events, for as long as it reads them."""
        while True:
            if self._needs_snapshot and (items := self._snapshot()) is not None:
                self._needs_snapshot = False
                self._pending.clear()
                yield StoreSnapshot(items=items)
            elif self._pending and not self._needs_snapshot:
                yield self._pending.popleft()
            else:
                await self._wake.wait()
                self._wake = anyio.Event()
