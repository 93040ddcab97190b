"""One etcd watch per prefix, shared by every subscriber of an :class:`~dyndisc.backends.etcd.EtcdStore`.

The shared watch keeps the revision its subscribers have seen, not the prefix's contents: every subscriber
decodes what it is given, so a copy of every raw value here would only double the memory of a large watch.
A broken stream is re-opened from ``revision + 1``, so etcd replays exactly what was missed (lease-expiry
deletes included) and no resync is needed. Only when that history is gone (compacted) or the cluster's
history restarted does it list the prefix again and send every subscriber a fresh snapshot. A subscriber
that joins a watch already running, or falls too far behind, lists the prefix itself and skips the events
its listing already holds (by revision).

Structured concurrency without a store-wide task group: every subscriber's ``watch()`` context runs a task
that waits on :attr:`SharedWatch.leader` and, holding it, pumps the stream. When the pumping subscriber
leaves, the next one takes over from the recorded revision.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from dyndisc._concurrency import gc_paused
from dyndisc._errors import AccessDeniedError, BackendUnavailableError
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc.backends.etcd.connection import REQUIRE_LEADER, EtcdConnection, Stubs, Transient, Unreachable
from dyndisc.backends.etcd.grpc_calls import grpc_await, stray_cancellation
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot
from dyndisc.backends.kv.event_queue import MAX_PENDING_EVENTS

log = logging.getLogger("dyndisc.etcd")

#: Backoff between attempts to resume a broken watch (reset once etcd confirms a watch again): capped at
#: about a second, so a watch is back within a second of etcd.
RETRY_MIN, RETRY_MAX = 0.05, 1.0

_PUT = 0  # mvccpb.Event.EventType


class _Relist(Exception):
    """Internal: the history needed to resume is gone; list the prefix again."""


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
                items, header = await self.shared.fetch()
                if self._snapshot is None and not self._must_list:  # nothing newer arrived meanwhile
                    self._snapshot = (items, int(header.revision))
            elif self._pending:
                revision, event = self._pending.popleft()
                if revision > seen:
                    yield event
            else:
                await self._wake.wait()
                self._wake = anyio.Event()


class SharedWatch:
    """The one etcd watch of ``prefix`` in a store, and the prefix contents it maintains."""

    def __init__(self, connection: EtcdConnection, prefix: str, outage: OutageLog | None = None) -> None:
        self.connection = connection
        self.prefix = prefix
        self.revision = 0
        self.cluster_id: int | None = None
        self.listed = False
        self.needs_list = True
        self.subscribers: set[Subscriber] = set()
        self.leader = anyio.Lock()
        self.established = anyio.Event()
        #: Set once the watch is established or etcd refused it (bad credentials, permissions, TLS).
        self.settled = anyio.Event()
        self.refusal: Exception | None = None
        self._created = False
        self.last_error: str | None = None
        #: How many times the prefix was listed again after the first time (compaction, history reset).
        self.relists = 0
        #: How many times the stream was re-opened from the recorded revision.
        self.resumes = 0
        #: One line when the watch breaks, one when it is back: not one per attempt (the store keeps it per
        #: prefix, so a watch opened again and again while etcd is away says it once too).
        self.outage = outage if outage is not None else OutageLog(log, f"etcd watch of {prefix!r}")
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
        while True:
            try:
                if self.needs_list:
                    await self._list()
                await self._stream()
            except _Relist as exc:
                log.warning("etcd watch of %r: %s; listing the prefix again", self.prefix, exc)
                self.needs_list = True
                continue
            except Transient as exc:
                self.last_error = str(exc)
            except (BackendUnavailableError, AccessDeniedError) as exc:
                self._refused(exc)
            except grpc.aio.AioRpcError as exc:
                failure = self.connection.translate(exc, f"watching {self.prefix!r}")
                if isinstance(failure, Transient):
                    self.last_error = str(failure)
                else:
                    self.connection.invalidate_token()  # an auth failure is the usual cause
                    self._refused(failure)
            else:
                continue
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
        """etcd refused us (or stayed away past the call deadline): tell waiting subscribers, keep trying."""
        self.last_error = str(error)
        if not self.established.is_set():
            self.refusal = error
            self.settled.set()
        self._refused_now = True

    async def fetch(self) -> tuple[dict[str, bytes], Any]:
        """List the prefix: its contents and the header of the answer (revision, cluster id)."""
        key = self.prefix.encode()

        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.RangeRequest(key=key, range_end=prefix_range_end(key))
            return stubs.kv.Range(request, timeout=timeout, metadata=metadata)

        reply = await self.connection.call(
            f"listing {self.prefix!r}", attempt, attempt_timeout=self.connection.request_timeout
        )
        with gc_paused():  # many objects, none of them garbage: the collector would only rescan them
            items = {kv.key.decode(errors="replace"): bytes(kv.value) for kv in reply.kvs}
        return items, reply.header

    async def _list(self) -> None:
        items, header = await self.fetch()
        self.revision = int(header.revision)
        self.cluster_id = int(header.cluster_id)
        relisted, self.listed, self.needs_list = self.listed, True, False
        if relisted:
            self.relists += 1
        for subscriber in self.subscribers:
            subscriber.snapshot(items, self.revision)

    async def _stream(self) -> None:
        stubs, metadata = await self.connection.stubs()
        call = None
        try:
            # A member cut off from its cluster must not hold the watch open and silent: require a leader.
            call = stubs.watch.Watch(metadata=(*(metadata or ()), REQUIRE_LEADER))
            create = rpc.WatchCreateRequest(
                key=self.prefix.encode(),
                range_end=prefix_range_end(self.prefix.encode()),
                start_revision=self.revision + 1,
                progress_notify=True,
            )
            with anyio.fail_after(self.connection.request_timeout):
                await grpc_await(call.write(rpc.WatchRequest(create_request=create)))
            while True:
                # Read on our own task (one task per event would cost every event a turn of the loop): a
                # cancellation of ours reaches grpc's read and is re-raised as itself. Only a call already
                # ended answers a read with a fresh CancelledError that anyio would not recognise: such a
                # call is never read.
                if call.done():
                    raise Transient("the watch stream ended")
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    raise Transient("etcd closed the watch stream")
                self._handle(reply, stubs)
        except TimeoutError:
            self.connection.avoid(stubs.member)
            raise Transient("etcd did not accept the watch request in time") from None
        except grpc.aio.AioRpcError as exc:
            if isinstance(self.connection.translate(exc, "watching"), Unreachable):
                await self.connection.unreachable(stubs)  # the member is gone: resume on another one
            else:
                self.connection.avoid(stubs.member)  # no leader there (or too slow): resume elsewhere
            raise
        except Transient:
            self.connection.avoid(stubs.member)
            raise
        except grpc.aio.UsageError as exc:
            # Another call closed this member's channel (it found the member gone): resume on a new one.
            raise Transient(f"the watch's channel was closed under it ({exc})") from None
        except asyncio.CancelledError:
            if not stray_cancellation():
                raise
            raise Transient("the watch was cancelled under us: its channel was closed") from None
        finally:
            if call is not None:
                call.cancel()

    def _handle(self, reply: Any, stubs: Stubs) -> None:
        if reply.compact_revision:
            raise _Relist(
                f"etcd compacted its history past revision {self.revision + 1} (compacted at "
                f"{reply.compact_revision}) while the watch was away"
            )
        if reply.canceled:
            raise Transient(f"etcd cancelled the watch: {reply.cancel_reason or 'no reason given'}")
        if reply.created:
            header = reply.header
            if self.cluster_id not in (None, int(header.cluster_id)) or int(header.revision) < self.revision:
                # A different cluster, or one restored from an older backup: our revision means nothing there.
                raise _Relist(
                    f"the cluster's history changed (cluster {header.cluster_id:x} at revision "
                    f"{header.revision}, we were at {self.revision})"
                )
            self.connection.mark_ok(stubs.member)
            self._created = True
            self.outage.recovered()
            self.last_error = self.refusal = None
            self.established.set()
            self.settled.set()
            return
        if not reply.events:
            # A progress notification: every event up to the header's revision has been delivered.
            self.revision = max(self.revision, int(reply.header.revision))
            return
        for event in reply.events:
            kv = event.kv
            key = kv.key.decode(errors="replace")
            revision = int(kv.mod_revision)
            if event.type == _PUT:
                self._broadcast(StorePut(key=key, value=bytes(kv.value)), revision)
            else:  # etcd reports deletes of keys that existed only
                self._broadcast(StoreDelete(key=key), revision)
            self.revision = max(self.revision, revision)
