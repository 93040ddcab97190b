"""Listing a prefix in pages on real etcd: whole, at one revision, whatever is written between two pages."""

from __future__ import annotations

import base64
import copy
from typing import Any, cast

import pytest
from aetcd import rpc
from aetcd.utils import prefix_range_end
from etcd_helpers import MakeServer, MakeStore, next_event, unique_prefix

from dyndisc import AccessDeniedError, BackendUnavailableError
from dyndisc.backends.etcd import EtcdStore
from dyndisc.backends.etcd.connection import EtcdConnection
from dyndisc.backends.etcd.listing import list_prefix, prefix_pages
from dyndisc.backends.etcd.watch import EtcdSource
from dyndisc.backends.kv import StoreSnapshot
from dyndisc.backends.kv.revisioned import Failure
from dyndisc.testing.servers import EtcdServer

#: A page far smaller than the prefix, so a listing takes many pages.
PAGE = 7
KEYS = 50


def _put(server: EtcdServer, key: str, value: bytes) -> None:
    """Write through etcd's JSON gateway: a blocking call, so it lands before the next page is asked for."""
    server.api(
        "/v3/kv/put",
        {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()},
    )


def _delete(server: EtcdServer, key: str) -> None:
    server.api("/v3/kv/deleterange", {"key": base64.b64encode(key.encode()).decode()})


async def _whole_range_at(store: EtcdStore, prefix: str, revision: int) -> dict[str, bytes]:
    """The prefix at ``revision`` in one unpaged ``Range``: what a paged listing must equal."""

    def attempt(stubs: Any, metadata: Any, timeout: float) -> Any:
        request = rpc.RangeRequest(
            key=prefix.encode(), range_end=prefix_range_end(prefix.encode()), revision=revision
        )
        return stubs.kv.Range(request, timeout=timeout, metadata=metadata)

    reply = await store.connection.call("reading the truth", attempt)
    return {kv.key.decode(): bytes(kv.value) for kv in reply.kvs}


async def _fill(store: EtcdStore, prefix: str) -> dict[str, bytes]:
    written = {f"{prefix}k{n:04d}": f"v{n}".encode() for n in range(KEYS)}
    for key, value in written.items():
        await store.put(key, value, 0)
    return written


async def test_a_prefix_of_many_pages_is_listed_whole_at_the_first_pages_revision(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(dyndisc_etcd_server.client_url)
    prefix = unique_prefix()
    written = await _fill(store, prefix)
    pages = 0

    def write_between_pages() -> None:
        # After every page: a change in the part already read, one in the part still to read, a key created
        # right after the last key read, a delete ahead. None may show: the listing is at one revision.
        nonlocal pages
        pages += 1
        _put(dyndisc_etcd_server, f"{prefix}k{pages:04d}", b"changed behind")
        _put(dyndisc_etcd_server, f"{prefix}k{(pages * PAGE + 3) % KEYS:04d}", b"changed ahead")
        _put(
            dyndisc_etcd_server, f"{prefix}k{pages * PAGE - 1:04d}+", b"created right after the last key read"
        )
        _delete(dyndisc_etcd_server, f"{prefix}k{(pages * PAGE + 5) % KEYS:04d}")

    listing = await list_prefix(store.connection, prefix, PAGE, on_page=write_between_pages)

    assert pages == -(-KEYS // PAGE), "one request per page of keys"
    assert listing.items == written, "the prefix as it was when the first page was read"
    assert listing.items == await _whole_range_at(store, prefix, listing.revision)
    assert await store.get_prefix(prefix) != written, (
        "the writes did land: only the listing does not show them"
    )


async def test_a_revision_compacted_between_two_pages_starts_the_listing_over(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd()
    store = make_store(server.client_url)
    prefix = unique_prefix()
    written = await _fill(store, prefix)
    first_revision = server.current_revision()
    pages = 0

    def compact_after_the_first_page() -> None:
        nonlocal pages
        pages += 1
        if pages == 1:
            _put(server, f"{prefix}late", b"written before the compaction")
            server.compact()  # the first page's revision is gone: the next page cannot be read at it

    listing = await list_prefix(store.connection, prefix, PAGE, on_page=compact_after_the_first_page)

    assert listing.revision > first_revision, "listed again, at a revision etcd still has"
    assert listing.items == {**written, f"{prefix}late": b"written before the compaction"}
    assert pages == 1 + -(-(KEYS + 1) // PAGE), "one page, then the whole listing again"


async def test_pages_after_a_compaction_start_the_listing_over(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    """Page by page, a listing that starts over says so: its next page does not continue the one before."""
    server = private_etcd()
    store = make_store(server.client_url)
    prefix = unique_prefix()
    written = await _fill(store, prefix)
    seen: list[tuple[bool, bool, int]] = []
    async for page in prefix_pages(store.connection, prefix, PAGE):
        seen.append((page.continues, page.more, len(page.items)))
        if len(seen) == 2:
            _put(server, f"{prefix}late", b"written before the compaction")
            server.compact()  # the next page cannot be read at the listing's revision
    assert seen[:3] == [(False, True, PAGE), (True, True, PAGE), (False, True, PAGE)]
    assert [c for c, _, _ in seen[3:]] == [True] * (len(seen) - 3)
    assert [m for _, m, _ in seen] == [True] * (len(seen) - 1) + [False]
    assert sum(n for _, _, n in seen[2:]) == len(written) + 1, "the listing again, with the late key"


async def test_a_watch_and_a_read_of_many_pages_see_every_key(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(dyndisc_etcd_server.client_url)
    store.source.page_size = PAGE
    prefix = unique_prefix()
    written = await _fill(store, prefix)
    assert await store.get_prefix(prefix) == written
    async with store.watch(prefix) as events:
        # The watch hands its snapshot on page by page, as each arrives: in order, all at one revision.
        parts = [await next_event(events)]
        while isinstance(parts[-1], StoreSnapshot) and parts[-1].more:
            parts.append(await next_event(events))
    assert all(isinstance(part, StoreSnapshot) for part in parts)
    snapshots = [part for part in parts if isinstance(part, StoreSnapshot)]
    assert [part.continues for part in snapshots] == [False] + [True] * (len(snapshots) - 1)
    keys = [key for part in snapshots for key in part.items]
    assert keys == sorted(written), "every key once, in key order"
    assert {k: v for part in snapshots for k, v in part.items.items()} == written
    assert len(snapshots) > 2, "a listing of many pages arrives in parts"


async def test_a_page_holds_at_least_one_key(make_store: MakeStore) -> None:
    store = make_store("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="at least one key"):
        await list_prefix(store.connection, "/p/", 0)


async def test_a_large_prefix_takes_few_pages_whatever_the_page_size(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    """etcd counts every key left in the range to answer each page: after the first page (whose count says
    how many are left), the rest comes in at most ``max_pages`` requests, not one per ``page_size`` keys."""
    store = make_store(dyndisc_etcd_server.client_url)
    prefix = unique_prefix()
    written = await _fill(store, prefix)
    pages = 0

    def counted() -> None:
        nonlocal pages
        pages += 1

    listing = await list_prefix(store.connection, prefix, 2, on_page=counted, max_pages=4)
    assert listing.items == written
    assert pages == 1 + 4, "a page of 2 keys, then the other 48 in 4 pages of 12"


class _RecordingKv:
    """A KV stub that notes each ``Range`` as it is sent."""

    def __init__(self, kv: Any, log: list[str]) -> None:
        self._kv, self._log = kv, log

    def Range(self, request: Any, **options: Any) -> Any:
        self._log.append(f"sent from {request.key.decode()}")
        return self._kv.Range(request, **options)


async def test_the_next_page_is_asked_for_before_a_page_is_handed_on(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader decodes on the same event loop: a page asked for only after it was handed on would wait
    for the decoding, and etcd would build it while nobody waits. So each page's request goes out first."""
    store = make_store(dyndisc_etcd_server.client_url)
    prefix = unique_prefix()
    await _fill(store, prefix)
    log: list[str] = []
    stubs = store.connection.stubs

    async def recording(member: int | None = None) -> Any:
        found, metadata = await stubs(member)
        proxy = copy.copy(found)
        proxy.kv = _RecordingKv(found.kv, log)
        return proxy, metadata

    monkeypatch.setattr(store.connection, "stubs", recording)
    async for page in prefix_pages(store.connection, prefix, PAGE):
        log.append(f"handed on up to {max(page.items)}")
    sent = [i for i, line in enumerate(log) if line.startswith("sent")]
    handed = [i for i, line in enumerate(log) if line.startswith("handed")]
    assert len(sent) == len(handed) > 2
    # Page k + 1 is sent before page k is handed on (the first page is read before anything is handed on).
    assert all(sent[k + 1] < handed[k] for k in range(len(handed) - 1)), log


async def test_the_watch_source_lists_a_prefix_whole_in_pages_with_its_revision_and_cluster(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    # The source's whole listing (its interface's own; the watches read it in parts) is the parts joined.
    store = make_store(dyndisc_etcd_server.client_url)
    prefix = unique_prefix()
    written = await _fill(store, prefix)
    source = EtcdSource(store.connection, page_size=PAGE)
    listing = await source.list(prefix)
    assert listing.items == written
    assert listing.items == await _whole_range_at(store, prefix, listing.revision)
    assert source.pages_read == -(-KEYS // PAGE)
    assert listing.cluster is not None
    parts = [p async for p in source.list_parts(prefix)]
    assert parts[-1].cluster == listing.cluster, "one cluster, however it is read"


def test_the_watch_source_takes_an_unreachable_or_refusing_server_for_a_refusal_and_a_bug_for_a_bug() -> None:
    # A refusal is retried and also told to the subscribers still waiting for their watch; an error that is
    # neither a server's answer nor an outage is a bug, and propagates (None).
    source = EtcdSource(cast(EtcdConnection, None))
    refusals = (BackendUnavailableError("no member answers"), AccessDeniedError("etcd refused the password"))
    for error in refusals:
        assert source.classify(error, "/p/") == Failure(error, refused=True)
    assert source.classify(ValueError("a bug"), "/p/") is None
