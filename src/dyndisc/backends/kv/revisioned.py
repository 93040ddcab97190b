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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
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
    """A prefix's contents at one revision, and the identity of the history that revision belongs to; or a
    part of them (:meth:`RevisionedSource.list_parts`): the parts of one listing are at one revision, in key
    order."""

    items: dict[str, bytes]
    revision: int
    #: Which history the revision counts in (etcd's cluster id); ``None`` when the source cannot tell.
    cluster: int | None = None
    #: More parts of this listing follow.
    more: bool = False
    #: This part continues the listing of the part before it (``False``: a listing starts, or starts over).
    continues: bool = False


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

    async def list_parts(self, prefix: str) -> AsyncGenerator[Listing, None]:
        """The same listing as it arrives, part by part, so what a page holds can be decoded while the next
        one is on its way. A part that does not continue the one before starts the listing over (the source
        had to: etcd compacted the revision of its first page). Here: one part, the whole listing."""
        yield await self.list(prefix)

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

    Its snapshot comes from the shared watch's listing, handed on part by part as the source reads it (the
    consumer decodes one page while the next is on its way), or, joining a watch that has listed already
    or is listing, or after falling behind, from a listing of its own; events queued meanwhile that the
    listing already reflects (by revision) are dropped, so nothing is applied twice or out of order.
    """

    def __init__(self, shared: SharedWatch) -> None:
        self.shared = shared
        self._pending: deque[tuple[int, StorePut | StoreDelete]] = deque()
        #: Parts of a snapshot not yet consumed, each with the revision it is at.
        self._parts: deque[tuple[StoreSnapshot, int]] = deque()
        #: Whether a shared listing is reaching this subscriber part by part (its first part did).
        self._receiving = False
        #: Whether this subscriber must list the prefix itself: the shared listing is behind it, or has
        #: already handed on its first part.
        self._must_list = shared.listed or shared.listing
        self._wake = anyio.Event()
        #: Set once the consumer may start reading: the watch is confirmed (or refused), or a snapshot has
        #: begun to arrive in parts (its consumer decodes them while the rest is read and the watch opened).
        self.may_start = anyio.Event()
        #: Why the watch could not be confirmed, found after its consumer started reading: raised to it.
        self.failure: Exception | None = None

    def snapshot(self, part: Listing) -> None:
        """A part of the shared watch's listing at ``part.revision``: the start of this subscriber's next
        snapshot, or its continuation."""
        if not part.continues:
            self._pending.clear()
            self._parts.clear()
            self._must_list = False
        elif not self._receiving:
            return  # it did not have the listing's first part: it lists the prefix itself
        snapshot = StoreSnapshot(part.items, more=part.more, continues=part.continues)
        self._parts.append((snapshot, part.revision))
        self._receiving = part.more
        if part.more:
            self.may_start.set()
        self._wake.set()

    def fail(self, error: Exception) -> None:
        """The watch could not be confirmed: its consumer gets ``error`` (if it has started reading)."""
        self.failure = error
        self._wake.set()

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
        self._parts.clear()
        self._receiving = False
        self._must_list = True
        self._wake.set()

    async def events(self) -> AsyncIterator[StoreEvent]:
        """The consumer's events, for as long as it reads them."""
        seen = 0  # the revision the last snapshot reflects: older queued events are in it already
        while True:
            if self.failure is not None:
                raise self.failure
            if self._parts:
                # No local holds the part: a large one is freed as soon as its consumer has decoded it.
                seen = self._parts[0][1]
                yield self._parts.popleft()[0]
            elif self._must_list:
                self._must_list = False
                async with aclosing(self.shared.source.list_parts(self.shared.prefix)) as parts:
                    async for part in parts:
                        if self._parts or self._receiving or self._must_list or self.failure:
                            break  # something newer came meanwhile: this listing is void
                        seen = part.revision
                        yield StoreSnapshot(part.items, more=part.more, continues=part.continues)
            elif self._pending and not self._receiving:
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
        #: Whether a listing is being handed on to the subscribers (its first part has been, its last not).
        self.listing = False
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

    async def _list(self) -> None:
        # Each part goes on as it arrives: while the source reads the next page, subscribers decode this one.
        part: Listing | None = None
        try:
            async with aclosing(self.source.list_parts(self.prefix)) as parts:
                async for part in parts:
                    self.listing = part.more
                    for subscriber in self.subscribers:
                        subscriber.snapshot(part)
                    if not part.more:
                        break
        finally:
            self.listing = False
        if part is None or part.more:
            raise StreamBroken(f"{self.source.name}'s listing of {self.prefix!r} ended before its last part")
        self.revision = part.revision
        self.cluster = part.cluster
        relisted, self.listed, self.needs_list = self.listed, True, False
        if relisted:
            self.relists += 1

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
    its watches is logged once, not once per watch opened meanwhile.

    A snapshot that comes in parts is handed to the consumer from its first part, before ``ready`` returns
    (nothing written after the first part's revision is missed: the watch starts after it), so a large one
    is decoded while the rest is read; if ``ready`` then raises, the consumer's next read raises it."""
    shared = watches.get(prefix)
    if shared is None:
        outage = None if outages is None else outages.setdefault(prefix, outage_log(source, prefix))
        shared = watches[prefix] = SharedWatch(source, prefix, outage)
    subscriber = Subscriber(shared)
    shared.subscribers[subscriber] = None
    try:
        async with background_tasks() as tg:
            tg.start_soon(shared.lead)
            tg.start_soon(_confirm, ready, shared, subscriber)
            await subscriber.may_start.wait()
            if subscriber.failure is not None:
                raise subscriber.failure
            yield subscriber.events()
    finally:
        shared.subscribers.pop(subscriber, None)
        if not shared.subscribers and watches.get(prefix) is shared:
            del watches[prefix]


async def _confirm(
    ready: Callable[[SharedWatch], Awaitable[None]], shared: SharedWatch, subscriber: Subscriber
) -> None:
    """Wait for ``ready``; what it raises goes to the subscriber, whether or not its consumer is reading."""
    try:
        await ready(shared)
    except Exception as exc:
        subscriber.fail(exc)
    finally:
        subscriber.may_start.set()
