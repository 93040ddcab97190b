"""An in-process store's changes by revision, served to shared watches the way etcd serves its own.

Every change an in-process store makes gets the next revision (the keys of one lease leave in one, as in an
etcd transaction). A bounded history of them (the last :data:`KEEP_REVISIONS`; :meth:`ChangeLog.compact`
drops older ones, as etcd's compaction) feeds the watch streams: a stream opened from a revision replays the
history from there and follows it, answers "compacted" when that history is gone, sends a progress
notification every :data:`PROGRESS_INTERVAL` while it has nothing to say, and can be dropped
(:meth:`ChangeLog.drop_streams`) to make its watch resume. So the resume logic of
:mod:`~dyndisc.backends.kv.revisioned` runs on an in-process store too, on whatever clock its event loop
keeps (a simulation's virtual one included): nothing here reads the wall clock or draws a random number.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import NoReturn

import anyio
import anyio.lowlevel

from dyndisc.backends.kv.revisioned import (
    Changes,
    Compacted,
    Created,
    Failure,
    Listing,
    Progress,
    RevisionedSource,
    StreamBroken,
    WatchReply,
)
from dyndisc.backends.kv.store import StoreDelete, StorePut

#: Revisions of history kept (older ones are compacted): a watch away for longer relists, as it would on an
#: etcd that compacts; the memory of a long-lived store stays bounded.
KEEP_REVISIONS = 10_000
#: Seconds between progress notifications to a stream with nothing to deliver (etcd's default is 10 min).
PROGRESS_INTERVAL = 600.0


class _Stream:
    """One open watch stream (its place in the history is the loop's local)."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = False


class ChangeLog(RevisionedSource):
    """The revisions of an in-process store, its history, and the watch streams served from it.

    ``items(prefix)`` is the store's current contents under a prefix (for listings: the store records every
    change here as it makes it, so what it lists is at :attr:`revision`).
    """

    name = "memory"

    def __init__(
        self,
        items: Callable[[str], dict[str, bytes]],
        *,
        keep: int = KEEP_REVISIONS,
        progress_interval: float | None = PROGRESS_INTERVAL,
        page_size: int | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"a change log keeps at least one revision, got {keep}")
        if page_size is not None and page_size < 1:
            raise ValueError(f"a listing part holds at least one key, got {page_size}")
        self._items = items
        self.keep = keep
        #: Seconds between progress notifications (``None``: never).
        self.progress_interval = progress_interval
        #: Keys per part of a watch's listing (``None``: one part), as etcd's pages: a simulation then runs
        #: the watches' paged snapshots, with other tasks running between two parts.
        self.page_size = page_size
        #: The revision of the last change (0: none yet).
        self.revision = 0
        #: The oldest revision a stream can start from: the history before it is gone.
        self.compacted = 1
        # The changes made at each revision from ``compacted`` to ``revision``, oldest first.
        self._history: deque[tuple[StorePut | StoreDelete, ...]] = deque()
        self._changed = anyio.Event()
        # A dict, not a set: streams are woken in the order they were opened (a simulation replays).
        self._streams: dict[_Stream, None] = {}

    # -- the store's side --------------------------------------------------------------------------------
    def record(self, events: Sequence[StorePut | StoreDelete]) -> None:
        """``events`` were made together: they are the next revision (nothing happens for none)."""
        if not events:
            return
        self.revision += 1
        self._history.append(tuple(events))
        if len(self._history) > self.keep:
            self.compact(self.revision - self.keep + 1)
        self._wake()

    def compact(self, revision: int | None = None) -> int:
        """Drop the history before ``revision`` (default: the current one), as etcd's compaction does: a
        stream that needs it answers "compacted". Compacting where it already is, or before, does nothing.
        Returns the revision the history now starts at."""
        target = self.revision if revision is None else revision
        if target > self.revision:
            raise ValueError(f"cannot compact at revision {target}: the store is at revision {self.revision}")
        # No stream needs waking: one that waits has delivered everything, so it is past any compaction.
        for _ in range(target - self.compacted):
            self._history.popleft()
        self.compacted = max(self.compacted, target)
        return self.compacted

    def drop_streams(self) -> None:
        """Break every open stream now (what it had not delivered is lost with it): each watch resumes
        from its revision, or relists if that history is gone by then."""
        for stream in self._streams:
            stream.dropped = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- RevisionedSource ----------------------------------------------------------------------------------
    async def list(self, prefix: str) -> Listing:
        await anyio.lowlevel.checkpoint()  # a call, as to a server: other tasks run, cancellation is honoured
        items = self._items(prefix)
        return Listing(items, self.revision)

    async def list_parts(self, prefix: str) -> AsyncGenerator[Listing, None]:
        if self.page_size is None:
            yield await self.list(prefix)
            return
        listing = await self.list(prefix)
        keys = sorted(listing.items)
        pages = [keys[i : i + self.page_size] for i in range(0, len(keys), self.page_size)] or [[]]
        for number, page in enumerate(pages):
            if number:
                await anyio.lowlevel.checkpoint()  # the next page is another call: the store goes on
            items = {key: listing.items[key] for key in page}
            more, continues = number < len(pages) - 1, number > 0
            yield Listing(items, listing.revision, listing.cluster, more=more, continues=continues)

    def classify(self, error: Exception, prefix: str) -> Failure | None:
        return None  # the log fails in no way of its own: anything else is a bug

    async def watch(self, prefix: str, start: int, deliver: Callable[[WatchReply], None]) -> NoReturn:
        stream = _Stream()
        self._streams[stream] = None
        try:
            await anyio.lowlevel.checkpoint()
            deliver(Created(self.revision))
            await self._serve(stream, prefix, start, deliver)
        finally:
            self._streams.pop(stream, None)

    async def _serve(
        self, stream: _Stream, prefix: str, cursor: int, deliver: Callable[[WatchReply], None]
    ) -> NoReturn:
        interval = self.progress_interval
        next_progress = anyio.current_time() + interval if interval else math.inf
        while True:
            if stream.dropped:
                raise StreamBroken("the memory store dropped the watch stream")
            if cursor < self.compacted:
                deliver(Compacted(self.compacted))
                raise StreamBroken("the history the stream needs is compacted")  # etcd ends it too
            if cursor <= self.revision:
                events = self._history[cursor - self.compacted]
                mine = [(cursor, event) for event in events if event.key.startswith(prefix)]
                cursor += 1
                if mine:
                    deliver(Changes(mine))
                    if cursor <= self.revision:  # more to come: one reply at a time, a drop can come between
                        await anyio.lowlevel.checkpoint()
                continue
            now = anyio.current_time()
            if interval and now >= next_progress:
                deliver(Progress(self.revision))
                next_progress = now + interval
                continue
            changed = self._changed
            if next_progress == math.inf:
                await changed.wait()
                continue
            with anyio.move_on_after(next_progress - now):
                await changed.wait()
