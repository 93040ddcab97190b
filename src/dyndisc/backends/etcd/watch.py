"""etcd as a :class:`~dyndisc.backends.kv.revisioned.RevisionedSource`: the listing, the watch stream, errors.

What a shared watch does with it (resume from the next revision, relist after a compaction or on another
cluster, resync a lagging subscriber) is :mod:`dyndisc.backends.kv.revisioned`, the same for every
revisioned store. Here is only what is etcd's: the paged ``Range`` (:mod:`~dyndisc.backends.etcd.listing`),
the ``Watch`` stream and its replies, why each deleted key left (:mod:`~dyndisc.backends.etcd.departures`,
from the lease the delete's ``prev_kv`` names), which failures are worth retrying on another member, and which
member to avoid after one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, NoReturn

import anyio
import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from dyndisc._errors import AccessDeniedError, BackendUnavailableError
from dyndisc.backends.etcd.connection import REQUIRE_LEADER, EtcdConnection, Stubs, Transient, Unreachable
from dyndisc.backends.etcd.departures import Departures
from dyndisc.backends.etcd.grpc_calls import grpc_await, stray_cancellation
from dyndisc.backends.etcd.listing import LIST_PAGE_SIZE, list_prefix, prefix_pages
from dyndisc.backends.kv import StoreDelete, StorePut
from dyndisc.backends.kv.revisioned import (
    Cancelled,
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

_PUT = 0  # mvccpb.Event.EventType


class EtcdSource(RevisionedSource):
    """The listings and watch streams of one :class:`~dyndisc.backends.etcd.connection.EtcdConnection`."""

    name = "etcd"

    def __init__(self, connection: EtcdConnection, page_size: int = LIST_PAGE_SIZE) -> None:
        self.connection = connection
        #: Keys per ``Range`` request of a listing.
        self.page_size = page_size
        #: Pages read by the watches' listings so far: a listing still arriving page by page is progress.
        self.pages_read = 0
        #: Why deleted keys left, asked of etcd per lease.
        self.departures = Departures(connection)

    async def list(self, prefix: str) -> Listing:
        found = await list_prefix(self.connection, prefix, self.page_size, self._page_read)
        return Listing(found.items, found.revision, found.cluster_id or None)

    async def list_parts(self, prefix: str) -> AsyncGenerator[Listing, None]:
        async with aclosing(prefix_pages(self.connection, prefix, self.page_size, self._page_read)) as pages:
            async for page in pages:
                cluster = page.cluster_id or None
                yield Listing(page.items, page.revision, cluster, more=page.more, continues=page.continues)

    def _page_read(self) -> None:
        self.pages_read += 1

    def classify(self, error: Exception, prefix: str) -> Failure | None:
        if isinstance(error, Transient):
            return Failure(error)
        if isinstance(error, (BackendUnavailableError, AccessDeniedError)):
            return Failure(error, refused=True)
        if isinstance(error, grpc.aio.AioRpcError):
            failure = self.connection.translate(error, f"watching {prefix!r}")
            if isinstance(failure, Transient):
                return Failure(failure)
            self.connection.invalidate_token()  # an auth failure is the usual cause
            return Failure(failure, refused=True)
        return None

    async def watch(self, prefix: str, start: int, deliver: Callable[[WatchReply], None]) -> NoReturn:
        stubs, metadata = await self.connection.stubs()
        call = None
        try:
            # A member cut off from its cluster must not hold the watch open and silent: require a leader.
            call = stubs.watch.Watch(metadata=(*(metadata or ()), REQUIRE_LEADER))
            create = rpc.WatchCreateRequest(
                key=prefix.encode(),
                range_end=prefix_range_end(prefix.encode()),
                start_revision=start,
                progress_notify=True,
                prev_kv=True,  # a delete then names the lease its key was under: its reason
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
                await self._deliver(reply, stubs, deliver)
        except TimeoutError:
            self.connection.avoid(stubs.member)
            raise Transient("etcd did not accept the watch request in time") from None
        except grpc.aio.AioRpcError as exc:
            if isinstance(self.connection.translate(exc, "watching"), Unreachable):
                await self.connection.unreachable(stubs)  # the member is gone: resume on another one
            else:
                self.connection.avoid(stubs.member)  # no leader there (or too slow): resume elsewhere
            raise
        except (Transient, StreamBroken):
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

    async def _deliver(self, reply: Any, stubs: Stubs, deliver: Callable[[WatchReply], None]) -> None:
        """Hand one ``WatchResponse`` on as what it means."""
        if reply.compact_revision:
            deliver(Compacted(int(reply.compact_revision)))
        elif reply.canceled:
            deliver(Cancelled(reply.cancel_reason or "no reason given"))
        elif reply.created:
            # etcd's grpc-proxy confirms a watch that joins one it already holds with a header of its own
            # making: no cluster id (0) and the revision asked for. 0 tells no cluster (taken for another
            # cluster's, every watcher of a prefix but the first listed it again for ever).
            deliver(Created(int(reply.header.revision), int(reply.header.cluster_id) or None))
            self.connection.mark_ok(stubs.member)  # once the watch is accepted: this member serves it
        elif not reply.events:
            deliver(Progress(int(reply.header.revision)))
        else:
            leases = {int(e.prev_kv.lease) for e in reply.events if e.type != _PUT and e.HasField("prev_kv")}
            reasons = await self.departures.reasons(leases, self.connection.request_timeout) if leases else {}
            changes: list[tuple[int, StorePut | StoreDelete]] = []
            for event in reply.events:
                kv = event.kv
                key = kv.key.decode(errors="replace")
                if event.type == _PUT:
                    changes.append((int(kv.mod_revision), StorePut(key=key, value=bytes(kv.value))))
                else:  # etcd reports deletes of keys that existed only
                    reason = reasons.get(int(event.prev_kv.lease)) if event.HasField("prev_kv") else None
                    changes.append((int(kv.mod_revision), StoreDelete(key=key, reason=reason)))
            deliver(Changes(changes))
