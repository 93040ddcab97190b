"""Why the keys of an ended NATS lease left: ``expired`` when the server ended the lease, ``left`` otherwise.

A watcher says why an instance left from whichever message it hears first: the lease key's end (the server's
expiry marker, or a client's delete), or the deletion of the instance key itself by whoever purged it (the
lease's owner, once its keep-alive finds the lease lost; a revoke; any reader that saw the lease end). Its two
consumers deliver apart (on a cluster they may be on different servers), so a purge must say what ended the
lease: ``Dyndisc-Purged: expired`` when the lease key's last message is the server's expiry marker, nothing
otherwise (docs/backends/nats.md, "Orphans are purged by the readers"; chaos seed 16).

The watchers here whose consumer of the lease keys stops hearing changes (``_Lagging``) are the ones that
hear the purge first: the reason they give is the one the purge carries. What a purge wrote is read back raw,
with nats-py, never through dyndisc (whose readers would purge orphans themselves).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from nats_helpers import PROMPT, MakeStore, RawBucket, eventually, next_event, raw_bucket, unique_prefix

from dyndisc import BackendUnavailableError, Lease, LeaseNotFoundError, RemovalReason
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot
from dyndisc.backends.nats import NatsStore
from dyndisc.backends.nats.connection import WrongRevision
from dyndisc.backends.nats.feed import KV_OPERATION, PURGE_REASON, KvChange, KvFeed
from dyndisc.backends.nats.keys import LEASES_FILTER, encode_key, is_internal, lease_key
from dyndisc.testing.servers import NatsServer


class _Lagging:
    """Makes ``store``'s watches stop hearing changes of the lease keys once :meth:`lag` is called (their
    consumer of the instance keys goes on): a consumer on a server that fell behind, or was just killed."""

    def __init__(self, store: NatsStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.deaf = False
        open_feed = store.connection.open_feed

        async def opened(feed: KvFeed, key_filter: str) -> None:
            if key_filter == LEASES_FILTER:
                on_change = feed._on_change

                def maybe(change: KvChange) -> None:
                    if not self.deaf:
                        on_change(change)

                monkeypatch.setattr(feed, "_on_change", maybe)
            await open_feed(feed, key_filter)

        monkeypatch.setattr(store.connection, "open_feed", opened)

    def lag(self) -> None:
        self.deaf = True


@dataclass
class _Heard:
    """A key the owner wrote under its lease, heard by a watcher that then stopped hearing the lease keys."""

    owner: NatsStore
    lease: Lease
    key: str
    raw: RawBucket
    events: AsyncIterator[StoreEvent]

    def lease_key(self) -> str:
        return lease_key(self.lease.id, self.owner.scope)

    async def deleted_saying(self, purged: str | None, reason: RemovalReason) -> None:
        """The key's last message is a deletion whose ``Dyndisc-Purged`` header is ``purged``, and the
        watcher's next event is the key's removal for ``reason``."""
        headers = await self.raw.headers(encode_key(self.key))
        assert (headers.get(KV_OPERATION), headers.get(PURGE_REASON)) == ("DEL", purged), headers
        assert await _reason(self.events, self.key) == reason


@asynccontextmanager
async def _heard_by_a_lagging_watcher(
    server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch, ttl: float
) -> AsyncIterator[_Heard]:
    """An owner's key under a lease of ``ttl`` seconds, written while a watcher watched it; the watcher then
    stops hearing the lease keys (:class:`_Lagging`), so what it says of the key's end is what the key's own
    deletion says."""
    owner, watcher = make_store(server.url), make_store(server.url)
    key = f"{unique_prefix()}a"
    lagging = _Lagging(watcher, monkeypatch)
    async with raw_bucket(server, owner.bucket) as raw, watcher.watch(key) as events:
        assert await next_event(events) == StoreSnapshot(items={})
        lease = await owner.grant(ttl)
        await owner.create(key, b"1", lease.id)
        assert await next_event(events) == StorePut(key=key, value=b"1")
        lagging.lag()
        yield _Heard(owner, lease, key, raw, events)


async def _reason(events: AsyncIterator[Any], key: str) -> RemovalReason | None:
    """The reason of the next event, which must be the deletion of ``key``."""
    gone = await next_event(events)
    assert gone == StoreDelete(key=key), gone
    return gone.reason


async def test_an_owner_that_finds_its_lease_expired_deletes_its_keys_at_once_saying_they_expired(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No reader purges (the only watcher stopped hearing the lease keys): the owner's keep-alive, finding the
    # server's expiry marker, deletes the lease's keys before it reports the loss, and says they expired.
    async with _heard_by_a_lagging_watcher(dyndisc_nats_server, make_store, monkeypatch, ttl=2) as heard:
        # The lease is never renewed: the server ends it after two seconds.
        ended = heard.lease_key()
        await eventually(lambda: heard.raw.expired(ended), 2 * PROMPT, "the server to expire the lease key")
        with pytest.raises(LeaseNotFoundError):
            await heard.owner.keep_alive(heard.lease.id)
        await heard.deleted_saying("expired", RemovalReason.EXPIRED)  # by the time the loss is reported


async def test_an_owner_whose_lease_key_another_client_deleted_deletes_its_keys_saying_they_left(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another client deleted the lease key (an operator's 'nats kv del', or the first step of a revoke by
    # another process): the lease did not expire, so the owner's purge of its keys must not say it did.
    async with _heard_by_a_lagging_watcher(dyndisc_nats_server, make_store, monkeypatch, ttl=30) as heard:
        await heard.raw.delete(heard.lease_key())
        with pytest.raises(LeaseNotFoundError):
            await heard.owner.keep_alive(heard.lease.id)
        await heard.deleted_saying(None, RemovalReason.LEFT)  # by the time the loss is reported


async def test_the_keys_of_a_lease_its_owner_revoked_leave_even_a_lagging_watcher_as_left(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A revoke is a clean exit: its deletions of the keys say nothing of expiry, so a watcher that hears them
    # before the lease key's delete says "left" too.
    async with _heard_by_a_lagging_watcher(dyndisc_nats_server, make_store, monkeypatch, ttl=30) as heard:
        await heard.owner.revoke(heard.lease.id)
        await heard.deleted_saying(None, RemovalReason.LEFT)


async def test_watchers_say_left_for_a_lease_key_another_client_deleted_and_purge_its_keys_as_left(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner never learns (it does not renew meanwhile): a watcher that hears the lease key's delete says
    # "left" and purges the keys, and its purge says nothing of expiry, so a watcher that hears the purge
    # first says "left" as well.
    owner, prompt, late = (make_store(dyndisc_nats_server.url) for _ in range(3))
    key = f"{unique_prefix()}a"
    lagging = _Lagging(late, monkeypatch)
    async with (
        raw_bucket(dyndisc_nats_server, owner.bucket) as raw,
        prompt.watch(key) as heard,
        late.watch(key) as lagged,
    ):
        assert await next_event(heard) == StoreSnapshot(items={})
        assert await next_event(lagged) == StoreSnapshot(items={})
        lease = await owner.grant(30)
        await owner.create(key, b"1", lease.id)
        assert await next_event(heard) == StorePut(key=key, value=b"1")
        assert await next_event(lagged) == StorePut(key=key, value=b"1")
        lagging.lag()
        await raw.delete(lease_key(lease.id, owner.scope))
        assert await _reason(heard, key) == RemovalReason.LEFT

        async def purged() -> bool:
            found = await raw.last(encode_key(key))
            return found is not None and (found.headers or {}).get(KV_OPERATION) == "DEL"

        await eventually(purged, PROMPT, "the watcher to purge the key")
        headers = await raw.headers(encode_key(key))
        assert headers.get(PURGE_REASON) is None, headers
        assert await _reason(lagged, key) == RemovalReason.LEFT


async def test_a_list_purges_the_keys_of_a_lease_whose_every_trace_is_gone(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # A process died with nobody watching, long enough ago that even its lease key's expiry marker has
    # expired (NATS_KV_MARKER_TTL, 1 s in this bucket of the test's own): the next list finds its keys
    # joined to a lease key with nothing stored at all, leaves them out, and purges them.
    bucket = f"t{uuid.uuid4().hex[:12]}"
    owner, reader = (make_store(dyndisc_nats_server.url, kv_bucket=bucket, kv_marker_ttl=1) for _ in range(2))
    prefix = unique_prefix()
    async with raw_bucket(dyndisc_nats_server, bucket) as raw:
        try:
            lease = await owner.grant(1)  # never renewed
            await owner.create(f"{prefix}a", b"1", lease.id)
            await owner.put(f"{prefix}b", b"2", 0)
            ended = lease_key(lease.id, owner.scope)
            await eventually(lambda: raw.gone(ended), 3 * PROMPT, "the lease key's marker to expire")
            assert await reader.get_prefix(prefix) == {f"{prefix}b": b"2"}
            left = await raw.last(encode_key(f"{prefix}a"))  # the purge's marker itself lasts a second
            assert left is None or (left.headers or {}).get(KV_OPERATION) == "DEL", left
        finally:
            await raw.js.delete_key_value(bucket)


async def test_a_watcher_whose_view_of_the_leases_came_up_short_purges_nothing_live(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A consumer made while nats-server recovers its stream can come up short (docs/backends/nats.md): a key
    # whose live lease key is missing from the watch's initial state is held back, and its purge is called
    # off by the direct read of the lease key. The key shows up as soon as its owner renews the lease.
    owner, watcher = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    lease = await owner.grant(30)
    await owner.create(key, b"1", lease.id)
    live = lease_key(lease.id, owner.scope)
    open_feed = watcher.connection.open_feed

    async def short_of_the_lease(feed: KvFeed, key_filter: str) -> None:
        if key_filter == LEASES_FILTER:
            on_snapshot = feed._on_snapshot
            monkeypatch.setattr(
                feed, "_on_snapshot", lambda items: on_snapshot({k: v for k, v in items.items() if k != live})
            )
        await open_feed(feed, key_filter)

    tried = anyio.Event()
    purge_orphans = watcher._purge_orphans

    async def tracked(keys: list[tuple[str, int, str]]) -> None:
        await purge_orphans(keys)
        tried.set()

    monkeypatch.setattr(watcher.connection, "open_feed", short_of_the_lease)
    monkeypatch.setattr(watcher, "_purge_orphans", tracked)
    async with raw_bucket(dyndisc_nats_server, owner.bucket) as raw, watcher.watch(key) as events:
        assert await next_event(events) == StoreSnapshot(items={})
        with anyio.fail_after(PROMPT):
            await tried.wait()
        kept = await raw.last(encode_key(key))
        assert kept is not None
        assert (kept.data, (kept.headers or {}).get(KV_OPERATION)) == (b"1", None), kept
        assert await owner.keep_alive(lease.id) == 30
        assert await next_event(events) == StorePut(key=key, value=b"1")


def _renewals_land_unanswered(store: NatsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every renewal of ``store``'s lease keys lands, but its answer is lost and its retry is refused (the
    lease key moved on): what the keep-alive sees of a write whose answer a broken connection lost."""
    publish = store.connection.publish

    async def landed_unanswered(nats_key: str, value: bytes, **kwargs: Any) -> int:
        revision = await publish(nats_key, value, **kwargs)
        if is_internal(nats_key) and kwargs.get("expected"):
            raise WrongRevision(f"{nats_key} is at {revision}")
        return revision

    monkeypatch.setattr(store.connection, "publish", landed_unanswered)


async def test_renewals_that_land_unanswered_are_an_outage_not_a_lost_lease(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the server ends a lease (docs/backends/nats.md): a keep-alive whose renewals keep landing with
    their answers lost says the connection is in trouble, and the lease and its keys stay as they were (it
    used to give the lease up after three, and delete its keys)."""
    owner = make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    lease = await owner.grant(30)
    await owner.create(key, b"1", lease.id)
    with monkeypatch.context() as broken:
        _renewals_land_unanswered(owner, broken)
        with pytest.raises(BackendUnavailableError, match="landed with no answer"):
            await owner.keep_alive(lease.id)
    async with raw_bucket(dyndisc_nats_server, owner.bucket) as raw:
        kept = await raw.last(encode_key(key))
        headers = await raw.headers(encode_key(key))
    assert kept is not None
    assert kept.data == b"1"
    assert headers.get(PURGE_REASON) is None, headers
    publish = owner.connection.publish
    sent: list[str] = []

    async def counted(nats_key: str, value: bytes, **kwargs: Any) -> int:
        sent.append(nats_key)
        return await publish(nats_key, value, **kwargs)

    monkeypatch.setattr(owner.connection, "publish", counted)
    assert await owner.keep_alive(lease.id) == 30, "the same lease, renewed once answers come again"
    assert len(sent) == 1, "one write, expecting the revision of the renewal that landed unanswered"
    assert await owner.get_prefix(key) == {key: b"1"}
