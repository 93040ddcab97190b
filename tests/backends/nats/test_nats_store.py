"""NatsStore on a real nats-server: emulated leases, expiry seen by watchers, foreign data, slow watchers."""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack

import anyio
import nats
import pytest
from nats.js import api
from nats_helpers import PROMPT, MakeStore, eventually, next_event, unique_prefix

from dyndisc import BackendUnavailableError, ConfigurationError, LeaseNotFoundError, RemovalReason
from dyndisc.backends.kv import StoreDelete, StoredValue, StorePut, StoreSnapshot
from dyndisc.backends.nats import watch as _nats_watch
from dyndisc.backends.nats.feed import KvFeed
from dyndisc.backends.nats.keys import LEASES_FILTER, encode_key
from dyndisc.testing.servers import NatsServer


async def test_a_lease_without_keep_alive_expires_and_watchers_see_it(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    owner, watcher = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(1)
    await owner.create(f"{prefix}a", b"1", lease.id)
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}a": b"1"})
        started = time.monotonic()
        assert await next_event(events, timeout=3) == StoreDelete(key=f"{prefix}a")
        # The TTL was set at create, at most 1 s before; the server writes the marker on time.
        assert time.monotonic() - started <= 1.5
    with pytest.raises(LeaseNotFoundError, match="expired"):
        await owner.keep_alive(lease.id)
    assert await watcher.get_prefix(prefix) == {}


async def test_keep_alive_holds_keys_past_their_ttl(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    owner, watcher = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(1)
    await owner.create(f"{prefix}a", b"1", lease.id)
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}a": b"1"})
        for _ in range(6):  # 3 s: three TTLs
            await anyio.sleep(0.5)
            assert await owner.keep_alive(lease.id) == 1
        # Re-publishing a key is a put of the same value: a watcher may hear it, never a deletion.
        with anyio.move_on_after(0.5):
            while True:
                assert await next_event(events) == StorePut(key=f"{prefix}a", value=b"1")
    assert await watcher.get_prefix(prefix) == {f"{prefix}a": b"1"}
    await owner.revoke(lease.id)
    assert await watcher.get_prefix(prefix) == {}


async def test_keep_alives_and_concurrent_writes_hold_every_key(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # Writes of different keys run concurrently with each other and with the keep-alive's re-publishing;
    # none may be lost (a key written during a keep-alive is still kept alive by the next one).
    owner, watcher = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(1)  # TTL 1 s
    keys = {f"{prefix}k{n}": f"{n}".encode() for n in range(200)}
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={})

        async def keep_alive_for(seconds: float) -> None:
            with anyio.move_on_after(seconds):
                while True:
                    assert await owner.keep_alive(lease.id) == 1
                    await anyio.sleep(0.4)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_alive_for, 3.0)  # three TTLs
            for key, value in keys.items():
                tg.start_soon(owner.create, key, value, lease.id)
        seen: dict[str, bytes] = {}
        with anyio.move_on_after(0.5):
            while True:
                event = await next_event(events)
                assert isinstance(event, StorePut), f"a key was lost: {event}"
                seen[event.key] = event.value
        assert seen == keys
    assert await watcher.get_prefix(prefix) == keys
    await owner.revoke(lease.id)
    assert await watcher.get_prefix(prefix) == {}


async def test_keep_alive_never_resurrects_a_key_deleted_by_someone_else(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    owner, other = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(5)
    await owner.create(f"{prefix}a", b"1", lease.id)
    await owner.create(f"{prefix}b", b"2", lease.id)
    await other.delete(f"{prefix}a")
    assert await owner.keep_alive(lease.id) == 5
    assert await other.get_prefix(prefix) == {f"{prefix}b": b"2"}


async def test_revoke_by_another_client_removes_every_key_of_the_lease(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    owner, other = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(30)
    survivor = await owner.grant(30)
    await owner.create(f"{prefix}a", b"1", lease.id)
    await owner.create(f"{prefix}b", b"2", lease.id)
    await owner.create(f"{prefix}c", b"3", survivor.id)
    async with other.watch(prefix) as events:
        assert isinstance(await next_event(events), StoreSnapshot)
        await other.revoke(lease.id)
        gone = {await next_event(events), await next_event(events)}
    assert gone == {StoreDelete(key=f"{prefix}a"), StoreDelete(key=f"{prefix}b")}
    assert await other.get_prefix(prefix) == {f"{prefix}c": b"3"}
    with pytest.raises(LeaseNotFoundError, match="revoked"):
        await owner.keep_alive(lease.id)
    assert await owner.keep_alive(survivor.id) == 30
    await other.revoke(lease.id)  # revoking an unknown lease is a no-op


async def test_create_reports_the_owner_and_adopts_its_own_key(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    first, second = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    one, two = await first.grant(30), await second.grant(30)
    assert await first.create(f"{prefix}a", b"1", one.id) is None
    assert await second.create(f"{prefix}a", b"2", two.id) == StoredValue(value=b"1", lease_id=one.id)
    assert await first.create(f"{prefix}a", b"x", one.id) == StoredValue(value=b"1", lease_id=one.id)
    await first.delete(f"{prefix}a")
    # The deletion marker is the key's last message: create must still succeed over it.
    assert await second.create(f"{prefix}a", b"2", two.id) is None
    assert await first.get_prefix(prefix) == {f"{prefix}a": b"2"}


async def test_a_key_created_without_a_lease_stays_and_one_under_an_ended_lease_is_refused(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    store, other = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    assert await store.create(f"{prefix}a", b"1", 0) is None
    assert await other.create(f"{prefix}a", b"2", 0) == StoredValue(value=b"1", lease_id=0)
    lease = await store.grant(30)
    await store.revoke(lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.create(f"{prefix}b", b"1", lease.id)
    assert await other.get_prefix(prefix) == {f"{prefix}a": b"1"}


async def test_a_revoke_deletes_a_key_whose_first_write_landed_without_an_answer(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    lease = await store.grant(30)
    publish = store.connection.publish

    async def answer_lost(*args: object, **kwargs: object) -> int:
        await publish(*args, **kwargs)  # type: ignore[arg-type]
        raise BackendUnavailableError("the answer was lost (a fault injected by the test)")

    monkeypatch.setattr(store.connection, "publish", answer_lost)
    with pytest.raises(BackendUnavailableError):
        await store.create(key, b"1", lease.id)
    monkeypatch.setattr(store.connection, "publish", publish)
    # The retry finds the key written under its own lease: it is ours, and the lease's to remove.
    assert await store.create(key, b"1", lease.id) == StoredValue(value=b"1", lease_id=lease.id)
    await store.revoke(lease.id)
    found = await store.connection.get(encode_key(key))
    assert found is not None
    assert found.headers is not None
    assert found.headers.get("KV-Operation") == "DEL", "deleted by the revoke, not left for a reader to purge"


async def test_an_empty_bucket_lists_nothing(private_nats: object, make_store: MakeStore) -> None:
    server = private_nats()  # type: ignore[operator]
    store = make_store(server.url, kv_bucket="empty")
    assert await store.get_prefix("/") == {}
    async with store.watch("/") as events:
        assert await next_event(events) == StoreSnapshot(items={})


async def test_foreign_keys_are_skipped_with_a_warning_and_the_watch_goes_on(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(dyndisc_nats_server.url, kv_bucket="foreign")
    await store.get_prefix("/")  # creates the bucket
    nc = await nats.connect(dyndisc_nats_server.url)
    try:
        kv = await nc.jetstream().key_value("foreign")
        await kv.put("=.services.=zz", b"not our encoding")
        async with store.watch("") as events:
            assert await next_event(events) == StoreSnapshot(items={})
            await kv.put("=.services.a=41", b"non-canonical")
            await store.put("/services/ok", b"1", 0)
            assert await next_event(events) == StorePut(key="/services/ok", value=b"1")
    finally:
        await nc.close()
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'=.services.=zz'" in m and "not written by dyndisc" in m for m in skipped), skipped
    assert any("'=.services.a=41'" in m for m in skipped), skipped


async def test_a_bucket_without_ttl_markers_is_refused_with_a_fix(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    nc = await nats.connect(dyndisc_nats_server.url)
    try:
        await nc.jetstream().create_key_value(api.KeyValueConfig(bucket="plain", history=1))
    finally:
        await nc.close()
    store = make_store(dyndisc_nats_server.url, kv_bucket="plain")
    with pytest.raises(ConfigurationError, match=r"'plain' \(NATS_KV_BUCKET\).*without per-message TTLs"):
        await store.grant(5)


async def test_a_slow_watcher_resyncs_and_does_not_stall_others(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_nats_watch, "MAX_PENDING_EVENTS", 20)
    writer, slow_store, fast_store = (make_store(dyndisc_nats_server.url) for _ in range(3))
    prefix = unique_prefix()
    async with slow_store.watch(prefix) as slow, fast_store.watch(prefix) as fast:
        assert await next_event(slow) == StoreSnapshot(items={})
        assert await next_event(fast) == StoreSnapshot(items={})
        for i in range(50):
            await writer.put(f"{prefix}{i:02}", b"x", 0)
            assert await next_event(fast) == StorePut(key=f"{prefix}{i:02}", value=b"x")
        # The slow one overflowed: its backlog was dropped for a fresh snapshot, then it goes on.
        seen: dict[str, bytes] = {}
        snapshots = 0
        with anyio.fail_after(PROMPT):
            while len(seen) < 50:
                event = await next_event(slow)
                if isinstance(event, StoreSnapshot):
                    snapshots, seen = snapshots + 1, dict(event.items)
                elif isinstance(event, StorePut):
                    seen[event.key] = event.value
        assert snapshots >= 1, "a watcher that fell behind must be resynced, not fed an unbounded backlog"
        await writer.delete(f"{prefix}00")
        assert await next_event(slow) == StoreDelete(key=f"{prefix}00")


async def test_deleted_keys_leave_nothing_behind_after_the_marker_ttl(
    private_nats: object, make_store: MakeStore
) -> None:
    server = private_nats()  # type: ignore[operator]
    store = make_store(server.url, kv_bucket="markers", kv_marker_ttl=1)
    lease = await store.grant(1)
    await store.create("/a", b"1", lease.id)  # its lease expires
    await store.put("/b", b"2", 0)
    await store.delete("/b")  # deleted
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()

        async def lease_gone() -> bool:
            # "/a" has no TTL of its own: once its lease key is gone, a reader sees it no more and purges it.
            return await store.get_prefix("/") == {}

        async def empty() -> bool:
            return (await js.stream_info("KV_markers")).state.messages == 0

        await eventually(lease_gone, 4, "the lease to end")
        # The lease key's expiry marker, the purged key's and the deleted key's markers expire: the stream
        # holds nothing at all.
        await eventually(empty, 6, "the stream to be empty")
    finally:
        await nc.close()


async def test_a_keep_alive_republishes_the_lease_key_alone(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # Keys carry no TTL of their own: what reaches a watcher per renewal is one message, however many
    # keys the lease holds.
    owner = make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(5)
    for n in range(50):
        await owner.create(f"{prefix}k{n}", b"1", lease.id)
    nc = await nats.connect(dyndisc_nats_server.url)
    subjects: list[str] = []
    renewed, revoked = anyio.Event(), anyio.Event()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        subjects.append(msg.subject)
        if len(subjects) == 3:
            renewed.set()
        if len(subjects) == 3 + 51:
            revoked.set()

    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            f"$KV.{owner.bucket}.>", cb=on_msg, ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW
        )
        for _ in range(3):
            assert await owner.keep_alive(lease.id) == 5
        with anyio.fail_after(PROMPT):
            await renewed.wait()
        await owner.revoke(lease.id)  # 50 deletes and the lease key's: the end of what we look at
        with anyio.fail_after(PROMPT):
            await revoked.wait()
        await sub.unsubscribe()
    finally:
        await nc.close()
    renewals = subjects[:3]
    assert renewals == [f"$KV.{owner.bucket}._dyndisc/lease.{lease.id:x}"] * 3, renewals


async def test_a_crashed_lease_leaves_every_watcher_and_its_keys_are_purged_once(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    owner = make_store(dyndisc_nats_server.url)
    watchers = [make_store(dyndisc_nats_server.url) for _ in range(3)]
    prefix = unique_prefix()
    lease = await owner.grant(1)  # never renewed: it ends after a second, as if its process crashed
    keys = {f"{prefix}k{n}": f"{n}".encode() for n in range(5)}
    for key, value in keys.items():
        await owner.create(key, value, lease.id)
    async with AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(w.watch(prefix)) for w in watchers]
        for events in streams:
            assert await next_event(events) == StoreSnapshot(items=keys)
        for events in streams:  # every watcher: every key of the lease leaves, at the lease key's marker
            gone = {await next_event(events, timeout=4) for _ in keys}
            assert gone == {StoreDelete(key=key) for key in keys}

        async def purged() -> bool:
            # Deleted in the bucket itself (a delete marker is the last message of each key), by one of the
            # watchers; the others' conditional deletes found nothing left to do.
            found = [await owner.connection.get(encode_key(key)) for key in keys]
            return all(m is not None and m.headers and m.headers.get("KV-Operation") == "DEL" for m in found)

        await eventually(purged, PROMPT, "the keys of the ended lease to be purged")
        for events in streams:  # and nothing else reached the watchers: no key came back
            with anyio.move_on_after(0.5):
                event = await anext(events)
                raise AssertionError(f"unexpected {event}")
    assert await owner.get_prefix(prefix) == {}


async def test_a_list_of_a_partial_segment_finds_every_key_that_starts_with_it(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    store = make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    for name in ("k0", "k1", "k2", "k10", "k3", "k11"):  # siblings written before and between them
        await store.put(f"{prefix}{name}", name.encode(), 0)
    assert await store.get_prefix(f"{prefix}k1") == {f"{prefix}{n}": n.encode() for n in ("k1", "k10", "k11")}


async def test_a_list_that_cannot_confirm_a_lease_ended_hides_its_keys_and_leaves_them_to_a_later_reader(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, reader, later = (make_store(dyndisc_nats_server.url) for _ in range(3))
    prefix = unique_prefix()
    lease = await owner.grant(1)  # never renewed: it ends after a second, as if its process crashed
    await owner.create(f"{prefix}a", b"1", lease.id)
    await owner.put(f"{prefix}b", b"2", 0)

    async def unreachable(nats_key: str) -> None:
        raise BackendUnavailableError("nats-server did not answer (a fault injected by the test)")

    # The reader cannot read the lease key to confirm the lease ended: it neither shows nor purges its key.
    monkeypatch.setattr(reader.connection, "get", unreachable)

    async def ended() -> bool:
        return await reader.get_prefix(prefix) == {f"{prefix}b": b"2"}

    await eventually(ended, PROMPT, "the lease's key to leave the list")
    found = await owner.connection.get(encode_key(f"{prefix}a"))
    assert found is not None
    assert found.data == b"1", "not purged on a guess"

    async def purged() -> bool:
        await later.get_prefix(prefix)  # a reader that can confirm it purges the orphan
        message = await owner.connection.get(encode_key(f"{prefix}a"))
        return (
            message is not None
            and message.headers is not None
            and message.headers.get("KV-Operation") == "DEL"
        )

    await eventually(purged, PROMPT, "a later reader to purge the orphan")


async def test_a_watcher_that_hears_the_purge_before_the_lease_marker_says_expired(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys of an expired lease are purged by whichever watcher saw its marker first; a watcher whose
    consumer of the lease keys lags behind its consumer of the keys (on a cluster they may be on different
    servers, one of them just killed) hears a key's purge before the lease's marker. It must still say the
    key expired, not that it left (nats-cluster chaos seed 16: a paused worker's endpoint "left")."""
    owner, purger, lagging = (make_store(dyndisc_nats_server.url) for _ in range(3))
    prefix = unique_prefix()
    lease = await owner.grant(1)  # never renewed: it ends after a second
    await owner.create(f"{prefix}a", b"1", lease.id)
    open_feed = lagging.connection.open_feed

    async def leases_deaf_when_live(feed: KvFeed, key_filter: str) -> None:
        if key_filter == LEASES_FILTER:  # the lease keys' initial state arrives, their changes never do
            monkeypatch.setattr(feed, "_on_change", lambda change: None)
        await open_feed(feed, key_filter)

    monkeypatch.setattr(lagging.connection, "open_feed", leases_deaf_when_live)
    async with lagging.watch(prefix) as late, purger.watch(prefix) as prompt:
        assert await next_event(late) == StoreSnapshot(items={f"{prefix}a": b"1"})
        assert await next_event(prompt) == StoreSnapshot(items={f"{prefix}a": b"1"})
        seen = await next_event(prompt, timeout=3)
        assert (seen, seen.reason) == (StoreDelete(key=f"{prefix}a"), RemovalReason.EXPIRED)
        heard = await next_event(late, timeout=PROMPT)  # the purger's delete of the key
        assert (heard, heard.reason) == (StoreDelete(key=f"{prefix}a"), RemovalReason.EXPIRED)


async def test_a_create_over_the_key_of_an_ended_lease_nobody_purged_takes_its_place(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    """The key of a lease that ended without its keys being purged (its process crashed) is absent for
    every reader: a create under another lease purges it and writes, it neither reports it there nor gives
    up."""
    from dyndisc.backends.nats.feed import is_removal
    from dyndisc.backends.nats.keys import lease_key

    owner, other = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(1)  # never renewed: it ends after a second, as if its process crashed
    await owner.create(f"{prefix}a", b"old", lease.id)

    async def ended() -> bool:  # read raw: a dyndisc reader would purge the orphan
        found = await other.connection.get(lease_key(lease.id, other.scope))
        return found is None or is_removal(found.headers)

    await eventually(ended, PROMPT, "the lease key to expire")
    mine = await other.grant(30)
    assert await other.create(f"{prefix}a", b"new", mine.id) is None
    assert await other.get_prefix(prefix) == {f"{prefix}a": b"new"}


async def test_a_renewal_that_landed_unanswered_does_not_lose_the_lease(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    """The lease key moved on by a renewal of ours whose answer was lost (cancelled mid-request): the next
    renewal finds a revision it did not expect, reads that it is ours, and renews from there."""
    from dyndisc.backends.nats import store as nats_store

    store = make_store(dyndisc_nats_server.url)
    lease = await store.grant(30)
    state = store._leases[lease.id]
    await store.connection.publish(  # the renewal that landed, its answer lost
        store._lease_key(lease.id),
        nats_store._lease_value(state.ttl),
        ttl=state.key_ttl,
        lease_id=lease.id,
        scope=store.scope,
    )
    assert await store.keep_alive(lease.id) == 30
    assert await store.keep_alive(lease.id) == 30


async def test_a_key_deleted_a_moment_ago_can_be_created_again(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    """A delete leaves a marker for a while (NATS_KV_MARKER_TTL): a create then writes over that marker, at
    its revision, rather than find the key taken or give up."""
    store = make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    lease = await store.grant(30)
    assert await store.create(key, b"1", lease.id) is None
    await store.delete(key)
    assert await store.create(key, b"2", lease.id) is None
    assert await store.get_prefix(key) == {key: b"2"}
