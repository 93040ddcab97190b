"""Reading a prefix from etcd in pages, every page at the first one's revision: one consistent snapshot.

One ``Range`` of a large prefix is one large answer: etcd builds it whole in memory, gRPC carries it as one
message, and a slow link must carry all of it within one deadline. Pages of :data:`LIST_PAGE_SIZE` keys bound
all three. But etcd counts every key left in the range to answer each page (its ``count``), so small pages of
a large prefix cost it quadratic time (a million keys in pages of 1,000: a minute, against two seconds in one
``Range``): after the first page, whose count says how many keys are left, a listing takes at most
:data:`LIST_MAX_PAGES` more, each of at least :data:`LIST_PAGE_SIZE` keys. The first page is read at the
latest revision; every later one continues after the last key read, at that same revision, so the pages
together are the prefix as it was at one revision, whatever is written meanwhile. If etcd compacts that
revision away between two pages, the listing starts over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from dyndisc._concurrency import gc_paused
from dyndisc.backends.etcd.connection import EtcdConnection, Stubs
from dyndisc.backends.etcd.grpc_calls import grpc_await, stray_cancellation

log = logging.getLogger("dyndisc.etcd")

#: Keys per ``Range`` request of a listing, at least. Discovery records are a few hundred bytes, so a page is
#: a few hundred KiB: well under etcd's request size guidance (1.5 MiB) and gRPC's default message cap.
LIST_PAGE_SIZE = 1000
#: Most pages a listing takes after its first: etcd then counts each key about ``LIST_MAX_PAGES / 2 + 1``
#: times in all, and a page of a million keys is an eighth of them (about 25 MB built at once by etcd).
LIST_MAX_PAGES = 8


@dataclass(frozen=True, slots=True)
class PrefixListing:
    """The keys under a prefix at ``revision`` of the cluster ``cluster_id``."""

    items: dict[str, bytes]
    revision: int
    cluster_id: int


@dataclass(frozen=True, slots=True)
class PrefixPage:
    """One page of a listing: keys in order, at the ``revision`` of the listing's first page."""

    items: dict[str, bytes]
    revision: int
    cluster_id: int
    #: More pages follow.
    more: bool
    #: This page continues the listing of the page before it (``False``: the listing starts, or starts over).
    continues: bool


class _CompactedMeanwhile(Exception):
    """Internal: the revision of the listing's first page was compacted before its last page was read."""


async def list_prefix(
    connection: EtcdConnection,
    prefix: str,
    page_size: int = LIST_PAGE_SIZE,
    on_page: Callable[[], None] | None = None,
    max_pages: int = LIST_MAX_PAGES,
) -> PrefixListing:
    """Every key under ``prefix`` at one revision, read ``page_size`` keys per request, or more if the rest
    would take over ``max_pages`` more requests; each request has the ordinary call deadline (a large prefix
    takes more requests, not a longer deadline). ``on_page`` is called after each page read."""
    items: dict[str, bytes] = {}
    async with aclosing(prefix_pages(connection, prefix, page_size, on_page, max_pages)) as pages:
        async for page in pages:
            if not page.continues:
                items = {}  # the listing started over
            items.update(page.items)
            if not page.more:
                return PrefixListing(items, page.revision, page.cluster_id)
    raise AssertionError("a listing ends with a page that says no more follow")


async def prefix_pages(
    connection: EtcdConnection,
    prefix: str,
    page_size: int = LIST_PAGE_SIZE,
    on_page: Callable[[], None] | None = None,
    max_pages: int = LIST_MAX_PAGES,
) -> AsyncGenerator[PrefixPage, None]:
    """The listing of :func:`list_prefix`, a page at a time as each arrives. If the revision of the first
    page is compacted before the last is read, the listing starts over: its next page does not continue."""
    if page_size < 1 or max_pages < 1:
        raise ValueError(f"a listing page holds at least one key, got {page_size} (of {max_pages} pages)")
    while True:
        try:
            # Closed with this generator, not whenever the loop finalizes it: its page asked ahead goes then.
            async with aclosing(_read_pages(connection, prefix, page_size, on_page, max_pages)) as pages:
                async for page in pages:
                    yield page
            return
        except _CompactedMeanwhile as exc:
            log.info("listing %r: etcd compacted revision %s between two pages; listing again", prefix, exc)


async def _read_pages(
    connection: EtcdConnection,
    prefix: str,
    page_size: int,
    on_page: Callable[[], None] | None,
    max_pages: int,
) -> AsyncGenerator[PrefixPage, None]:
    end = prefix_range_end(prefix.encode())
    request = rpc.RangeRequest(key=prefix.encode(), range_end=end, limit=page_size)
    reply = await _range(connection, prefix, request)
    revision, cluster_id = int(reply.header.revision), int(reply.header.cluster_id)
    left = int(reply.count) - len(reply.kvs)  # the first page's count: every key at this revision
    page_size = max(page_size, -(-left // max_pages))
    continues, ahead = False, None
    try:
        while True:
            with gc_paused():  # many objects, none of them garbage: the collector would only rescan them
                items = {kv.key.decode(errors="replace"): bytes(kv.value) for kv in reply.kvs}
            if on_page is not None:
                on_page()
            more = bool(reply.more and reply.kvs)
            if more:
                # The next page is asked for before this one is handed on: etcd builds it while the reader
                # decodes this one (asked after, it would wait for the decoding; a reader runs on our loop).
                start = bytes(reply.kvs[-1].key) + b"\0"  # the next key after the last one read
                request = rpc.RangeRequest(key=start, range_end=end, limit=page_size, revision=revision)
                ahead = await _send(connection, request)
            del reply  # the page's protobuf is garbage once copied: do not hold it while the reader decodes
            yield PrefixPage(items, revision, cluster_id, more=more, continues=continues)
            if not more:
                return
            reply = await _receive(connection, prefix, request, ahead)
            continues, ahead = True, None
    finally:
        if ahead is not None:
            ahead.cancel()  # the reader stopped reading: the page asked for ahead is not wanted


async def _range(connection: EtcdConnection, prefix: str, request: Any) -> Any:
    """One page, with the ordinary retries (on another member, within the request timeout)."""

    async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
        try:
            return await stubs.kv.Range(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if request.revision and exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # "... been compacted"
                raise _CompactedMeanwhile(request.revision) from None
            raise

    # A page may be large: give each attempt the whole request timeout.
    return await connection.call(f"listing {prefix!r}", attempt, attempt_timeout=connection.request_timeout)


async def _send(connection: EtcdConnection, request: Any) -> Any:
    """A page's request sent now, its answer to be taken by :func:`_receive`; ``None`` if it could not be
    sent (it is then asked with the ordinary retries)."""
    try:
        stubs, metadata = await connection.stubs()
        return stubs.kv.Range(request, timeout=connection.request_timeout, metadata=metadata)
    except (grpc.aio.AioRpcError, grpc.aio.UsageError, OSError):
        return None


async def _receive(connection: EtcdConnection, prefix: str, request: Any, ahead: Any) -> Any:
    """The answer to a request sent ahead; if it failed, the page asked again with the ordinary retries."""
    if ahead is not None:
        try:
            return await grpc_await(ahead)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # the listing's revision was compacted meanwhile
                raise _CompactedMeanwhile(request.revision) from None
        except grpc.aio.UsageError:
            pass  # its channel was closed under it (its member is gone)
        except asyncio.CancelledError:
            if not stray_cancellation():
                raise
    return await _range(connection, prefix, request)
