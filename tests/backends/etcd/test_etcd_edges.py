"""Edges of etcd's watch source, listing and departures that the other etcd tests leave open.

* What the watch source makes of a gRPC error that ended a watch: an outage (a slow or leaderless member) is
  retried quietly with the auth token kept; a refusal is told to the waiting subscribers and drops the token.
* What a watch does when its member fails (not accepted in time, stream closed, no leader, unreachable,
  grpc cancelling the read under it): which member the next calls start at, whether that member's channel is
  closed, that the stream is ended; and what it hands on (a cancel without a reason, the member that
  accepted a watch, etcd's progress on a quiet prefix, an overwrite without any lookup).
* Listings: one key per page and one page more are allowed, none is not; the page sent ahead is cancelled
  when the reader stops; a page lost to grpc is asked again, and a compaction meanwhile starts the listing
  over; a later page refused fails the listing.
* Departures: the oldest remembered reason is forgotten first; a lease with TTL 0 is still alive.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from contextlib import aclosing
from typing import Any

import anyio
import grpc
import pytest
from aetcd import rpc
from etcd_helpers import MakeServer, MakeStore, unique_prefix

from dyndisc import RemovalReason
from dyndisc.backends.etcd import departures as departures_module
from dyndisc.backends.etcd.connection import EtcdConnection, PermissionDenied, Transient, Unreachable
from dyndisc.backends.etcd.departures import Departures, lease_time_to_live, marker_key
from dyndisc.backends.etcd.listing import list_prefix, prefix_pages
from dyndisc.backends.etcd.settings import parse_endpoints
from dyndisc.backends.etcd.watch import EtcdSource
from dyndisc.backends.kv import StorePut
from dyndisc.backends.kv.revisioned import Cancelled, Changes, Created, Progress
from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import EtcdServer


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.fixture
async def connection(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A connection with a username whose authentications are counted (nothing listens: none is sent)."""
    found = EtcdConnection(parse_endpoints("http://127.0.0.1:1"), username="worker", password="secret")
    found.authentications = 0  # type: ignore[attr-defined]

    async def authenticate(stubs: Any) -> str:
        found.authentications += 1  # type: ignore[attr-defined]
        return f"token-{found.authentications}"  # type: ignore[attr-defined]

    monkeypatch.setattr(found, "_authenticate", authenticate)
    yield found
    await found.aclose()


async def test_a_slow_member_ending_a_watch_is_retried_quietly_and_keeps_the_token(
    connection: Any,
) -> None:
    source = EtcdSource(connection)
    assert (await connection.stubs())[1] == (("token", "token-1"),)
    failure = source.classify(_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "/p/")
    assert failure is not None
    assert isinstance(failure.error, Transient)
    assert not failure.refused, "an outage is retried without telling the waiting subscribers"
    assert (await connection.stubs())[1] == (("token", "token-1"),), "no new authentication"
    assert connection.authentications == 1


async def test_a_refusal_ending_a_watch_is_reported_and_drops_the_token(connection: Any) -> None:
    source = EtcdSource(connection)
    assert (await connection.stubs())[1] == (("token", "token-1"),)
    error = _rpc_error(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    failure = source.classify(error, "/p/")
    assert failure is not None
    assert isinstance(failure.error, PermissionDenied)
    assert failure.refused, "a refusal is told to the subscribers still waiting for their watch"
    # The usual cause is an expired or stale token: the next call authenticates again.
    assert (await connection.stubs())[1] == (("token", "token-2"),)
    assert connection.authentications == 2


async def _delivered(source: EtcdSource, reply: Any, member: int = 0) -> list[Any]:
    stubs, _ = await source.connection.stubs(member)
    got: list[Any] = []
    await source._deliver(reply, stubs, got.append)
    return got


async def test_a_watch_etcd_cancels_without_a_reason_is_cancelled_with_one_said() -> None:
    connection = EtcdConnection(parse_endpoints("http://127.0.0.1:1"))
    try:
        source = EtcdSource(connection)
        assert await _delivered(source, rpc.WatchResponse(canceled=True)) == [Cancelled("no reason given")]
        reply = rpc.WatchResponse(canceled=True, cancel_reason="etcdserver: permission denied")
        assert await _delivered(source, reply) == [Cancelled("etcdserver: permission denied")]
    finally:
        await connection.aclose()


async def test_a_member_that_accepts_a_watch_is_where_the_next_calls_start() -> None:
    connection = EtcdConnection(parse_endpoints("http://127.0.0.1:1,http://127.0.0.1:2"))
    try:
        source = EtcdSource(connection)
        connection.failed()  # the connection is stale, its calls start at member 0
        reply = rpc.WatchResponse(created=True, header=rpc.ResponseHeader(revision=7, cluster_id=42))
        assert await _delivered(source, reply, member=1) == [Created(7, 42)]
        assert connection.preferred == 1
        assert connection.stale_since is None
    finally:
        await connection.aclose()


class _EtcdWithFrequentProgress(EtcdServer):
    """An etcd that notifies a watch asking for progress every 100 ms (by default every 10 minutes)."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--watch-progress-notify-interval=100ms"]


async def test_a_quiet_watch_hears_etcd_s_progress(
    dyndisc_private_servers: PrivateServers, make_store: MakeStore
) -> None:
    # Progress lets a watch that sees no changes still tell a live stream from a stalled one.
    server = dyndisc_private_servers(_EtcdWithFrequentProgress)
    store = make_store(server.client_url)
    source = EtcdSource(store.connection)
    got: list[Any] = []
    heard = anyio.Event()

    def deliver(reply: Any) -> None:
        got.append(reply)
        if isinstance(reply, Progress):
            heard.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.watch, unique_prefix(), 0, deliver)
            await heard.wait()
            tg.cancel_scope.cancel()
    assert isinstance(got[0], Created)
    assert isinstance(got[-1], Progress)


class _Call:
    """A watch stream that accepts the create request (or never does) and then answers one read with
    ``answer`` (raised if an exception); notes whether it was cancelled."""

    def __init__(self, answer: Any, *, accepts: bool = True) -> None:
        self.answer, self.accepts = answer, accepts
        self.sent: list[Any] = []
        self.cancelled = False

    async def write(self, request: Any) -> None:
        if not self.accepts:
            await anyio.sleep_forever()
        self.sent.append(request)

    def done(self) -> bool:
        return False

    async def read(self) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def cancel(self) -> None:
        self.cancelled = True


class _WatchStub:
    def __init__(self, call: _Call) -> None:
        self.call = call

    def Watch(self, **options: Any) -> _Call:
        return self.call


async def _watch_on_member_0(call: _Call) -> tuple[EtcdConnection, Any, BaseException]:
    """Watch through ``call`` on the first of two members; the connection, that member's stubs, and what
    the watch raised."""
    connection = EtcdConnection(
        parse_endpoints("http://127.0.0.1:1,http://127.0.0.1:2"),
        request_timeout=0.2 if not call.accepts else 10.0,
    )
    stubs, _ = await connection.stubs(0)
    stubs.watch = _WatchStub(call)
    try:
        with anyio.fail_after(20):
            await EtcdSource(connection).watch("/p/", 5, lambda reply: None)
    except (Exception, asyncio.CancelledError) as exc:  # a cancellation let out is a result here, and
        return connection, stubs, exc  # a test that ends in one would not fail
    raise AssertionError("a watch ends only by raising")


@pytest.mark.parametrize(
    ("call", "raised"),
    [
        (_Call(None, accepts=False), Transient),  # the create request not accepted in time
        (_Call(grpc.aio.EOF), Transient),  # etcd closed the stream
        (_Call(_rpc_error(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")), grpc.aio.AioRpcError),
    ],
    ids=["create-not-accepted", "stream-closed", "no-leader"],
)
async def test_a_watch_that_fails_on_a_member_resumes_on_another_over_the_same_channel(
    call: _Call, raised: type[Exception]
) -> None:
    connection, stubs, exc = await _watch_on_member_0(call)
    try:
        assert isinstance(exc, raised)
        assert not isinstance(exc, Unreachable)
        assert connection.preferred == 1, "the next calls (and the resumed watch) start at the other member"
        assert connection.stale_since is not None
        assert (await connection.stubs(0))[0] is stubs, "the member answered: its channel stays open"
        assert call.cancelled, "the stream is ended, not left to the server"
    finally:
        await connection.aclose()


async def test_a_watch_whose_member_cannot_be_reached_closes_that_members_channel() -> None:
    call = _Call(_rpc_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    connection, stubs, exc = await _watch_on_member_0(call)
    try:
        assert isinstance(exc, grpc.aio.AioRpcError)
        assert connection.preferred == 1
        assert (await connection.stubs(0))[0] is not stubs, "a new channel when that member is asked again"
        assert call.cancelled
    finally:
        await connection.aclose()


async def test_grpc_cancelling_a_watch_read_under_it_is_a_failure_not_a_cancellation() -> None:
    # grpc.aio raises a CancelledError of its own when the channel is closed under a read: let out, it would
    # silently cancel the task group around the watch.
    connection, _, exc = await _watch_on_member_0(_Call(asyncio.CancelledError()))
    try:
        assert isinstance(exc, Transient)
    finally:
        await connection.aclose()


async def test_an_overwrite_is_delivered_without_asking_etcd_why_anything_left() -> None:
    # Only deletes have a reason to look up: a put that replaced a key (its prev_kv names the old lease) is
    # handed on at once, even when etcd would take its whole request timeout to answer a lookup.
    connection = EtcdConnection(parse_endpoints("http://127.0.0.1:1"), request_timeout=30.0)
    try:
        source = EtcdSource(connection)
        put = rpc.Event(
            type=rpc.Event.PUT,
            kv=rpc.KeyValue(key=b"/p/a", value=b"new", mod_revision=9, lease=7),
            prev_kv=rpc.KeyValue(key=b"/p/a", value=b"old", mod_revision=8, lease=6),
        )
        with anyio.fail_after(2):
            got = await _delivered(source, rpc.WatchResponse(events=[put]))
        assert got == [Changes([(9, StorePut(key="/p/a", value=b"new"))])]
    finally:
        await connection.aclose()


async def test_the_oldest_remembered_reason_is_forgotten_first(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Answers are remembered up to REMEMBERED (here 2): a third forgets the first asked, and only it.
    monkeypatch.setattr(departures_module, "REMEMBERED", 2)
    store = make_store(dyndisc_etcd_server.client_url)
    departures = Departures(store.connection)
    first, second, third = [await store.grant(30) for _ in range(3)]
    for lease in (first, second, third):
        await store.revoke(lease.id)  # leaves its marker
        assert await departures.reason(lease.id) is RemovalReason.LEFT
    for lease in (first, second, third):
        await store.delete(marker_key(lease.id))  # asked again, each would now read as expired
    assert await departures.reason(third.id) is RemovalReason.LEFT
    assert await departures.reason(second.id) is RemovalReason.LEFT
    assert await departures.reason(first.id) is RemovalReason.EXPIRED, "forgotten, so asked again"


@pytest.mark.parametrize(("ttl", "left"), [(0, 0.0), (3, 3.0), (-1, None)])
async def test_a_lease_with_under_a_second_left_is_still_alive(
    monkeypatch: pytest.MonkeyPatch, ttl: int, left: float | None
) -> None:
    # etcd answers whole seconds rounded down: 0 is a lease about to run out, -1 one it does not know.
    connection = EtcdConnection(parse_endpoints("http://127.0.0.1:1"))

    async def answer(what: str, attempt: Any, **options: Any) -> Any:
        return rpc.LeaseTimeToLiveResponse(ID=7, TTL=ttl)

    monkeypatch.setattr(connection, "call", answer)
    try:
        assert await lease_time_to_live(connection, 7) == left
    finally:
        await connection.aclose()


async def test_a_listing_may_take_one_key_per_page_and_one_page_more_but_not_none(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(dyndisc_etcd_server.client_url)
    prefix = unique_prefix()
    written = {f"{prefix}k{n}": b"v" for n in range(3)}
    for key, value in written.items():
        await store.put(key, value, 0)
    pages = [page async for page in prefix_pages(store.connection, prefix, 1, max_pages=1)]
    assert [len(page.items) for page in pages] == [1, 2], "a first key, then the other two in one page more"
    assert (await list_prefix(store.connection, prefix, 1, max_pages=1)).items == written
    with pytest.raises(ValueError, match="at least one key"):
        await list_prefix(store.connection, prefix, 1, max_pages=0)


class _Ahead:
    """A page's request sent ahead that etcd has not answered yet (``stray``: that grpc then cancels under
    its reader, as when its channel is closed)."""

    def __init__(self, *, stray: bool) -> None:
        self.stray = stray
        self.cancelled = False

    def __await__(self) -> Any:
        if self.stray:
            raise asyncio.CancelledError
        return (yield from asyncio.get_running_loop().create_future().__await__())

    def cancel(self) -> None:
        self.cancelled = True


class _AheadKv:
    """A KV stub that holds the first request for each page after the first (the one sent ahead) as an
    _Ahead, and sends the same page asked again (with the ordinary retries) to etcd."""

    def __init__(self, kv: Any, *, stray: bool) -> None:
        self._kv, self._stray = kv, stray
        self.held: dict[bytes, _Ahead] = {}

    def Range(self, request: Any, **options: Any) -> Any:
        if request.revision and request.key not in self.held:
            self.held[request.key] = _Ahead(stray=self._stray)
            return self.held[request.key]
        return self._kv.Range(request, **options)


async def _listing_through(kv: Any, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stubs = store.connection.stubs

    async def holding(member: int | None = None) -> Any:
        found, metadata = await stubs(member)
        proxy = copy.copy(found)
        proxy.kv = kv
        return proxy, metadata

    monkeypatch.setattr(store.connection, "stubs", holding)


async def _filled(store: Any, keys: int) -> tuple[str, dict[str, bytes]]:
    prefix = unique_prefix()
    written = {f"{prefix}k{n:02d}": f"v{n}".encode() for n in range(keys)}
    for key, value in written.items():
        await store.put(key, value, 0)
    return prefix, written


async def test_a_reader_that_stops_early_cancels_the_page_asked_for_ahead(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(dyndisc_etcd_server.client_url)
    prefix, _ = await _filled(store, 6)
    kv = _AheadKv(store.connection._open(0).kv, stray=False)
    await _listing_through(kv, store, monkeypatch)
    async with aclosing(prefix_pages(store.connection, prefix, 2)) as pages:
        async for page in pages:
            assert len(page.items) == 2
            break  # the reader wants no more
    # Cancelled as the listing closes (it was left to the event loop's finalizer of the generator the listing
    # read its pages from, one or more turns later: found by the mutants of listing.py).
    assert len(kv.held) == 1, "only the second page was asked for"
    assert all(ahead.cancelled for ahead in kv.held.values()), "the page asked ahead cancelled at close"


async def test_a_page_asked_ahead_that_grpc_cancels_under_the_listing_is_asked_again(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # grpc.aio raises a CancelledError of its own when a call's channel is closed under it: that page is
    # read again, and the listing is whole; let out, it would cancel whoever reads the listing.
    store = make_store(dyndisc_etcd_server.client_url)
    prefix, written = await _filled(store, 6)
    kv = _AheadKv(store.connection._open(0).kv, stray=True)
    await _listing_through(kv, store, monkeypatch)
    try:
        listing = await list_prefix(store.connection, prefix, 2)
    except asyncio.CancelledError:  # a test that ends in a cancellation would not fail
        raise AssertionError("a cancellation of grpc's was let out") from None
    assert listing.items == written
    assert len(kv.held) == 2, "the second and third pages were each sent ahead"


async def test_a_page_asked_again_after_a_compaction_starts_the_listing_over(
    private_etcd: MakeServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page sent ahead is lost (grpc cancels it under us), so it is asked again with the ordinary
    # retries; its revision was compacted meanwhile: the listing starts over at a revision etcd still has.
    server = private_etcd()
    store = make_store(server.client_url)
    prefix, written = await _filled(store, 6)
    first_revision = server.current_revision()
    late = f"{prefix}late"

    def compact_after_the_first_page() -> None:
        if not kv.held:
            server.api(
                "/v3/kv/put",
                {"key": base64.b64encode(late.encode()).decode(), "value": base64.b64encode(b"v").decode()},
            )
            server.compact()

    kv = _AheadKv(store.connection._open(0).kv, stray=True)
    await _listing_through(kv, store, monkeypatch)
    listing = await list_prefix(store.connection, prefix, 2, on_page=compact_after_the_first_page)
    assert listing.revision > first_revision
    assert listing.items == {**written, late: b"v"}


class _Refused:
    """A Range call that etcd answers with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __await__(self) -> Any:
        raise self.error
        yield  # a generator, as __await__ must return an iterator

    def cancel(self) -> None:
        pass


class _RefusingLaterPagesKv:
    """A KV stub under which every page after the first (asked at the listing's revision) is refused."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    def Range(self, request: Any, **options: Any) -> Any:
        if request.revision:
            return _Refused(_rpc_error(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied"))
        return self._kv.Range(request, **options)


async def test_a_later_page_refused_fails_the_listing_rather_than_starting_it_over(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a compaction (OUT_OF_RANGE) starts a listing over; any other answer is handled as on any call.
    store = make_store(dyndisc_etcd_server.client_url)
    prefix, _ = await _filled(store, 6)
    await _listing_through(_RefusingLaterPagesKv(store.connection._open(0).kv), store, monkeypatch)
    with anyio.fail_after(10), pytest.raises(PermissionDenied):
        await list_prefix(store.connection, prefix, 2)
