"""A watch per prefix over a revisioned store, shared by its subscribers, that resumes from its revision.

The logic of every store whose changes carry revisions (etcd, the memory store), written once over a small
:class:`RevisionedSource`: list a prefix at a revision; open a stream of the prefix's changes from a
revision; say whether an error is worth retrying.

The shared watch keeps the revision its subscribers have seen, not the prefix's contents: every subscriber
decodes what it is given, so a copy of every raw value here would only double the memory of a large watch.
A broken stream is re-opened from ``revision + 1``, so the source replays exactly what was missed
(lease-expiry deletes included) and no resync is needed; progress notifications move the revision on while
nothing under the prefix changes, so a resume needs only history the server still has. Only when that
history is gone (compacted) or the source's history restarted (another cluster, or a revision that went
backwards) does it list the prefix again and send every subscriber a fresh snapshot. A subscriber that joins
a watch already running, or falls too far behind, lists the prefix itself and skips the events its listing
already holds (by revision).

Structured concurrency without a store-wide task group: every subscriber's ``watch()`` context runs a task
that waits on :attr:`SharedWatch.leader` and, holding it, pumps the stream. When the pumping subscriber
leaves, the next one takes over from the recorded revision.
"""

from __future__ import annotations

import abc
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn

import anyio

from dyndisc._concurrency import background_tasks
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc.backends.kv.event_queue import MAX_PENDING_EVENTS
from dyndisc.backends.kv.store import StoreDelete, StoreEvent, StorePut, StoreSnapshot

#: Backoff between attempts to resume a broken watch (reset once the source confirms a watch again): capped
#: at about a second, so a watch is back within a second of its server.
RETRY_MIN, RETRY_MAX = 0.05, 1.0


# -- what a source answers --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Listing:
    """A prefix's contents at one revision, and the identity of the history that revision belongs to."""

    items: dict[str, bytes]
    revision: int
    #: Which history the revision counts in (etcd's cluster id); ``None`` when the source cannot tell.
    cluster: int | None = None


@dataclass(frozen=True, slots=True)
class Created:
    """The stream is established; the server's history is at ``revision`` in ``cluster``."""

    revision: int
    cluster: int | None = None


@dataclass(frozen=True, slots=True)
class Changes:
    """Changes under the prefix, in order, each with the revision it was made at (a revision's changes are
    never split across two replies: a stream that breaks between replies loses no part of one)."""

    events: Sequence[tuple[int, StorePut | StoreDelete]]


@dataclass(frozen=True, slots=True)
class Progress:
    """Every change up to ``revision`` has been delivered (under this prefix there were none since)."""

    revision: int


@dataclass(frozen=True, slots=True)
class Compacted:
    """The history the stream would start from is gone: the server compacted it at ``revision``."""

    revision: int


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The server ended the stream (``reason``); it can be opened again from the same revision."""

    reason: str


WatchReply = Created | Changes | Progress | Compacted | Cancelled


@dataclass(frozen=True, slots=True)
class Failure:
    """What a source made of an error: retried in any case; a ``refused`` one is also reported to the
    subscribers still waiting for their watch (bad credentials, permissions, no answer in time)."""

    error: Exception
    refused: bool = False


class StreamBroken(Exception):
    """The stream ended or broke without an answer to act on: resume from the next revision."""


class RevisionedSource(abc.ABC):
    """Where a :class:`SharedWatch` reads: a store whose every change carries the next revision."""

    #: The server's name, for messages and the logger (``dyndisc.<name>``).
    name: str = "kv"

    @abc.abstractmethod
    async def list(self, prefix: str) -> Listing:
        """Every key under ``prefix`` at one revision (the latest)."""
        raise NotImplementedError

    @abc.abstractmethod
    async def watch(self, prefix: str, start: int, deliver: Callable[[WatchReply], None]) -> NoReturn:
        """Open a stream of the changes under ``prefix`` from revision ``start`` and hand each reply to
        ``deliver`` (which may raise: the stream then ends with that error). Never returns: it ends by
        raising, :class:`StreamBroken` or an error for :meth:`classify`."""
        raise NotImplementedError

    @abc.abstractmethod
    def classify(self, error: Exception, prefix: str) -> Failure | None:
        """What ``error`` (from :meth:`list` or :meth:`watch`) means; ``None`` if it is not the source's
        (a bug: it propagates)."""
        raise NotImplementedError


def outage_log(source: RevisionedSource, prefix: str) -> OutageLog:
    """A new outage log for the watch of ``prefix`` on ``source``, timed by the event loop's clock (a
    simulation's virtual one, or the monotonic clock)."""
    logger = logging.getLogger(f"dyndisc.{source.name}")
    return OutageLog(logger, f"{source.name} watch of {prefix!r}", clock=anyio.current_time)


class _Relist(Exception):
    """Internal: the history needed to resume is gone; list the prefix again."""


# -- the subscribers --------------------------------------------------------------------------------------
class Subscriber:
    """One consumer of a shared watch: a snapshot first, then puts and deletes, resynced if it lags.

    Its snapshot comes from the shared watch's listing, or (joining a watch that has listed already, or
    after falling behind) from a listing of its own; events queued meanwhile that the listing already
    reflects (by revision) are dropped, so nothing is applied twice or out of order.
    """

    def __init__(self, shared: SharedWatch) -> None:
        self.shared = shared
        self._pending: deque[tuple[int, StorePut | StoreDelete]] = deque()
        self._snapshot: tuple[dict[str, bytes], int] | None = None
        #: Whether this subscriber must list the prefix itself (the shared listing is behind it).
        self._must_list = shared.listed
        self._wake = anyio.Event()

    def snapshot(self, items: dict[str, bytes], revision: int) -> None:
        """The shared watch listed the prefix at ``revision``: that is this subscriber's next event."""
        self._pending.clear()
        self._snapshot = (items, revision)
        self._must_list = False
        self._wake.set()

    def _take_snapshot(self) -> dict[str, bytes]:
        assert self._snapshot is not None
        items, self._snapshot = self._snapshot[0], None
        return items

    def push(self, event: StorePut | StoreDelete, revision: int) -> None:
        """Queue a change made at ``revision``; past the bound, list afresh instead (memory stays bounded)."""
        if len(self._pending) >= MAX_PENDING_EVENTS:
            self.resync()
            return
        self._pending.append((revision, event))
        self._wake.set()

    def resync(self) -> None:
        """Drop the backlog: the next event is a fresh snapshot, listed by this subscriber."""
        self._pending.clear()
        self._snapshot = None
        self._must_list = True
        self._wake.set()

    async def events(self) -> AsyncIterator[StoreEvent]:
        """The consumer's events, for as long as it reads them."""
        seen = 0  # the revision the last snapshot reflects: older queued events are in it already
        while True:
            if self._snapshot is not None:
                seen = self._snapshot[1]
                # No local holds the snapshot: a large one is freed as soon as its consumer has decoded it.
                yield StoreSnapshot(items=self._take_snapshot())
            elif self._must_list:
                self._must_list = False
                listing = await self.shared.fetch()
                if self._snapshot is None and not self._must_list:  # nothing newer arrived meanwhile
                    self._snapshot = (listing.items, listing.revision)
            elif self._pending:
                revision, event = self._pending.popleft()
                if revision > seen:
                    yield event
            else:
                await self._wake.wait()
                self._wake = anyio.Event()


# -- the shared watch -------------------------------------------------------------------------------------
class SharedWatch:
    """The one watch of ``prefix`` on ``source`` in a store, and the revision its subscribers have seen."""

    def __init__(self, source: RevisionedSource, prefix: str, outage: OutageLog | None = None) -> None:
        self.source = source
        self.prefix = prefix
        self.log = logging.getLogger(f"dyndisc.{source.name}")
        self.revision = 0
        self.cluster: int | None = None
        self.listed = False
        self.needs_list = True
        # A dict, not a set: subscribers are told of a change in the order they came (a simulation replays).
        self.subscribers: dict[Subscriber, None] = {}
        self.leader = anyio.Lock()
        self.established = anyio.Event()
        #: Set once the watch is established or the source refused it (bad credentials, permissions, TLS).
        self.settled = anyio.Event()
        self.refusal: Exception | None = None
        self._created = False
        self.last_error: str | None = None
        #: How many times the prefix was listed again after the first time (compaction, history reset).
        self.relists = 0
        #: How many times the stream was re-opened from the recorded revision.
        self.resumes = 0
        #: One line when the watch breaks, one when it is back: not one per attempt (a store may keep it per
        #: prefix, so a watch opened again and again while the server is away says it once too).
        self.outage = outage if outage is not None else outage_log(source, prefix)
        #: Whether the last failure was a refusal (logged at ERROR when it starts an outage).
        self._refused_now = False

    # -- fan-out ---------------------------------------------------------------------------------------
    def _broadcast(self, event: StorePut | StoreDelete, revision: int) -> None:
        for subscriber in self.subscribers:
            subscriber.push(event, revision)

    # -- pump ------------------------------------------------------------------------------------------
    async def lead(self) -> None:
        """Run in every subscriber's context: whoever holds :attr:`leader` keeps the watch going."""
        async with self.leader:
            await self._pump()

    async def _pump(self) -> None:
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        name = self.source.name
        while True:
            try:
                if self.needs_list:
                    await self._list()
                await self.source.watch(self.prefix, self.revision + 1, self._handle)
                raise StreamBroken(f"{name} ended the watch stream")  # a source's watch never returns
            except _Relist as exc:
                self.log.warning("%s watch of %r: %s; listing the prefix again", name, self.prefix, exc)
                self.needs_list = True
                continue
            except Exception as exc:
                failure = (
                    Failure(exc) if isinstance(exc, StreamBroken) else self.source.classify(exc, self.prefix)
                )
                if failure is None:
                    raise
                if failure.refused:
                    self._refused(failure.error)
                else:
                    self.last_error = str(failure.error)
            if self._created:  # the stream had been working: start the backoff over
                self._created = False
                backoff.reset()
            delay = backoff.next_delay()
            self.resumes += 1
            level = logging.ERROR if self._refused_now else logging.WARNING
            self._refused_now = False
            self.outage.failed(f"{self.last_error}; resuming from revision {self.revision + 1}", level=level)
            await anyio.sleep(delay)

    def _refused(self, error: Exception) -> None:
        """The source refused us (or stayed away past the call deadline): tell waiting subscribers, keep
        trying."""
        self.last_error = str(error)
        if not self.established.is_set():
            self.refusal = error
            self.settled.set()
        self._refused_now = True

    async def fetch(self) -> Listing:
        """List the prefix: its contents, the revision they are at, the history that revision counts in."""
        return await self.source.list(self.prefix)

    async def _list(self) -> None:
        listing = await self.fetch()
        self.revision = listing.revision
        self.cluster = listing.cluster
        relisted, self.listed, self.needs_list = self.listed, True, False
        if relisted:
            self.relists += 1
        for subscriber in self.subscribers:
            subscriber.snapshot(listing.items, self.revision)

    def _handle(self, reply: WatchReply) -> None:
        if isinstance(reply, Changes):
            for revision, event in reply.events:
                self._broadcast(event, revision)
                self.revision = max(self.revision, revision)
        elif isinstance(reply, Progress):
            # Every event up to this revision has been delivered: a resume starts after it.
            self.revision = max(self.revision, reply.revision)
        elif isinstance(reply, Created):
            # A reply that cannot tell its cluster (None: etcd's grpc-proxy confirms a watch joining one it
            # holds without one) is not another cluster's; its revision still tells a history gone back.
            other = reply.cluster is not None and self.cluster not in (None, reply.cluster)
            if other or reply.revision < self.revision:
                # A different cluster, or one restored from an older backup: our revision means nothing there.
                raise _Relist(
                    f"the cluster's history changed (cluster {reply.cluster or 0:x} at revision "
                    f"{reply.revision}, we were at {self.revision})"
                )
            self._created = True
            self.outage.recovered()
            self.last_error = self.refusal = None
            self.established.set()
            self.settled.set()
        elif isinstance(reply, Compacted):
            raise _Relist(
                f"{self.source.name} compacted its history past revision {self.revision + 1} (compacted at "
                f"{reply.revision}) while the watch was away"
            )
        else:
            raise StreamBroken(f"{self.source.name} cancelled the watch: {reply.reason}")


@asynccontextmanager
async def subscribe(
    watches: dict[str, SharedWatch],
    source: RevisionedSource,
    prefix: str,
    ready: Callable[[SharedWatch], Awaitable[None]],
    outages: dict[str, OutageLog] | None = None,
) -> AsyncIterator[AsyncIterator[StoreEvent]]:
    """Subscribe to the shared watch of ``prefix`` in ``watches`` (made on ``source`` if there is none);
    ``ready(shared)`` returns once the watch may be used (it raises if the source refused it). A new shared
    watch takes the prefix's outage log from ``outages`` (made there if missing), so an outage that outlives
    its watches is logged once, not once per watch opened meanwhile."""
    shared = watches.get(prefix)
    if shared is None:
        outage = None if outages is None else outages.setdefault(prefix, outage_log(source, prefix))
        shared = watches[prefix] = SharedWatch(source, prefix, outage)
    subscriber = Subscriber(shared)
    shared.subscribers[subscriber] = None
    try:
        async with background_tasks() as tg:
            tg.start_soon(shared.lead)
            await ready(shared)
            yield subscriber.events()
    finally:
        shared.subscribers.pop(subscriber, None)
        if not shared.subscribers and watches.get(prefix) is shared:
            del watches[prefix]
