"""NatsStore edges: what a user of the store relies on that the main tests leave unchecked.

Without a server (pointed at a port nothing listens on): what the startup-timeout error names, that a lease
TTL must be positive, that a watch of a missing server fails as an outage. On a server: lease ids are
63-bit; a closed store lets go of its connection, and a closed watch leaves nothing behind; a keep-alive is
one conditional write; a revoke, by the owner or by another client, deletes the lease's keys itself; writes
under a lease this store does not hold, or revoked, are refused without touching anything; create-if-absent
never overwrites, and copes with a deletion marker expiring under it; what the access probes say. (Why the
keys of an ended lease leave, and who purges them: ``test_nats_purge_reasons.py``.)

Several read the bucket raw (``store.connection.get``): a dyndisc reader would hide, and purge, orphans."""

from __future__ import annotations

import gc
import json
import uuid
from typing import Any

import anyio
import nats
import pytest
from nats.js import api
from nats_helpers import PROMPT, MakeServer, MakeStore, eventually, next_event, unique_prefix

from dyndisc import BackendUnavailableError, LeaseNotFoundError
from dyndisc.backends.kv import StoredValue, StoreSnapshot
from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.backends.nats.access import authorization_fragment
from dyndisc.backends.nats.connection import WrongRevision
from dyndisc.backends.nats.feed import KV_OPERATION, PURGE_REASON
from dyndisc.backends.nats.keys import encode_key, lease_key
from dyndisc.backends.nats.watch import NatsWatch
from dyndisc.testing.servers import NatsServer, free_ports
from dyndisc.testing.servers._process import http_request


def _nowhere(**overrides: float) -> NatsSettings:
    """Settings of a server that is not there (a free port: connecting is refused at once)."""
    (port,) = free_ports(1)
    return NatsSettings.load(server=f"nats://127.0.0.1:{port}", **{"timeout": 0.5, **overrides})


@pytest.mark.parametrize(
    ("name", "said"),
    [(None, "NATS_STARTUP_CONNECT_TIMEOUT"), ("--wait", "--wait")],
    ids=["the-variable", "a-command-option"],
)
async def test_giving_up_on_a_server_that_never_came_names_what_set_the_wait(
    name: str | None, said: str
) -> None:
    store = NatsStore(_nowhere(startup_connect_timeout=0.3), startup_timeout_name=name)
    try:
        with pytest.raises(BackendUnavailableError) as failure:
            await store.grant(5)
    finally:
        await store.aclose()
    assert f"(waited 0.3s: {said})" in str(failure.value)


@pytest.mark.parametrize("ttl", [0, 0.0, -1.0])
async def test_a_lease_ttl_that_is_not_positive_is_refused_before_anything_is_sent(ttl: float) -> None:
    # No server: a TTL let through would fail as an outage (BackendUnavailableError), not as a bad argument.
    store = NatsStore(_nowhere())
    try:
        with pytest.raises(ValueError, match="positive"):
            await store.grant(ttl)
    finally:
        await store.aclose()


async def test_lease_ids_are_random_positive_63_bit_numbers(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # docs/backends/nats.md: "Lease ids are random 63-bit numbers" (never 0). With 64 random bits instead,
    # each id would be 2**63 or more with probability 1/2: 64 leases miss that with probability 2**-64.
    store = make_store(dyndisc_nats_server.url)
    leases = [await store.grant(30) for _ in range(64)]
    try:
        ids = [lease.id for lease in leases]
        assert all(0 < lease_id < 2**63 for lease_id in ids), [f"{i:x}" for i in ids if i >= 2**63]
        assert len(set(ids)) == len(ids)
    finally:
        async with anyio.create_task_group() as tg:
            for lease in leases:
                tg.start_soon(store.revoke, lease.id)


async def _connections(server: NatsServer) -> int:
    """The client connections nats-server has open now (its monitoring endpoint ``/connz``)."""
    status, body = await anyio.to_thread.run_sync(lambda: http_request(f"{server.monitor_url}/connz"))
    assert status == 200, body
    return int(json.loads(body)["num_connections"])


async def test_a_closed_store_lets_go_of_its_connection_and_refuses_further_use(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats()
    store = make_store(server.url)
    await store.grant(5)  # connects on first use
    assert await _connections(server) == 1
    await store.aclose()

    async def none_open() -> bool:
        return await _connections(server) == 0

    await eventually(none_open, PROMPT, "nats-server to see the closed store's connection go")
    with pytest.raises(BackendUnavailableError, match="closed"):
        await store.grant(5)


async def _last_headers(store: NatsStore, key: str) -> dict[str, str]:
    """The headers of the last message stored for ``key`` (read raw: a dyndisc reader would purge it)."""
    found = await store.connection.get(encode_key(key))
    assert found is not None, f"nothing stored for {key!r}"
    return dict(found.headers or {})


async def test_each_keep_alive_is_one_write_expecting_the_revision_the_last_one_made(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # docs/backends/nats.md: the keep-alive re-publishes the lease key alone, conditional on the revision
    # this store last wrote (Nats-Expected-Last-Subject-Sequence): one message per renewal. A plain NATS
    # subscriber of the lease key's subject hears every write sent to it, stored or refused.
    owner = make_store(dyndisc_nats_server.url)
    lease = await owner.grant(30)
    granted = await owner.connection.get(lease_key(lease.id, owner.scope))
    assert granted is not None
    heard: list[dict[str, str]] = []
    revoked = anyio.Event()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        headers = dict(msg.headers or {})
        if headers.get(KV_OPERATION) == "DEL":
            revoked.set()  # the owner's last write: everything it sent before has been heard
        else:
            heard.append(headers)

    nc = await nats.connect(dyndisc_nats_server.url)
    try:
        await nc.subscribe(f"$KV.{owner.bucket}.{lease_key(lease.id, owner.scope)}", cb=on_msg)
        await nc.flush()  # subscribed before the first renewal is sent
        for _ in range(3):
            assert await owner.keep_alive(lease.id) == 30
        await owner.revoke(lease.id)
        with anyio.fail_after(PROMPT):
            await revoked.wait()
    finally:
        await nc.close()
    expected = [int(h[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE]) for h in heard]
    assert len(expected) == 3, heard
    assert expected[0] == granted.seq
    assert expected[0] < expected[1] < expected[2], expected


async def test_a_revoke_deletes_its_keys_itself_then_its_lease_key(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # docs/backends/nats.md: "Revoke deletes the keys and then the lease key" (no reader needed to purge).
    owner = make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(30)
    await owner.create(f"{prefix}a", b"1", lease.id)
    await owner.put(f"{prefix}b", b"2", lease.id)
    await owner.revoke(lease.id)
    ended = await owner.connection.get(lease_key(lease.id, owner.scope))
    assert ended is not None
    assert (ended.headers or {}).get(KV_OPERATION) == "DEL"
    for name in ("a", "b"):
        found = await owner.connection.get(encode_key(f"{prefix}{name}"))
        assert found is not None
        headers = found.headers or {}
        assert (headers.get(KV_OPERATION), headers.get(PURGE_REASON)) == ("DEL", None), headers
        assert int(found.seq or 0) < int(ended.seq or 0), "the lease key goes last"


async def test_a_write_under_a_lease_this_store_does_not_hold_is_refused_before_it_touches_the_key(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # A lease must be kept alive by the store that granted it: another store writing under it is refused
    # (LeaseNotFoundError), and the key the lease's owner holds is left as it was.
    owner, other = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    lease = await owner.grant(30)
    await owner.create(key, b"1", lease.id)
    before = await owner.connection.get(encode_key(key))
    assert before is not None
    with pytest.raises(LeaseNotFoundError):
        await other.put(key, b"2", lease.id)
    with pytest.raises(LeaseNotFoundError):
        await other.create(key, b"2", lease.id)
    after = await owner.connection.get(encode_key(key))
    assert after is not None
    assert (after.seq, after.data) == (before.seq, b"1")
    assert await other.get_prefix(key) == {key: b"1"}


async def test_create_never_overwrites_a_key_even_the_first_one_of_a_new_bucket(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # create-if-absent expects "no previous revision": the very first message of a bucket has revision 1.
    store = make_store(dyndisc_nats_server.url, kv_bucket=f"edges-{uuid.uuid4().hex[:12]}")
    key = f"{unique_prefix()}a"
    await store.put(key, b"first", 0)
    assert await store.create(key, b"second", 0) == StoredValue(value=b"first", lease_id=0)
    assert await store.get_prefix(key) == {key: b"first"}


async def test_losing_a_create_to_another_lease_and_revoking_leaves_the_winner_key_alone(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    owner, rival = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    mine, theirs = await owner.grant(30), await rival.grant(30)
    assert await owner.create(key, b"1", mine.id) is None
    assert await rival.create(key, b"2", theirs.id) == StoredValue(value=b"1", lease_id=mine.id)
    await rival.revoke(theirs.id)  # the rival's lease never held the key: its revoke must not delete it
    assert await rival.get_prefix(key) == {key: b"1"}


async def test_a_lease_revoked_by_its_own_store_takes_no_more_writes_or_renewals(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    store = make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await store.grant(30)
    await store.create(f"{prefix}a", b"1", lease.id)
    await store.revoke(lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.put(f"{prefix}b", b"2", lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.create(f"{prefix}c", b"3", lease.id)
    with pytest.raises(LeaseNotFoundError):
        await store.keep_alive(lease.id)
    assert await store.get_prefix(prefix) == {}


async def test_a_revoke_by_another_client_deletes_the_lease_keys_itself(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # docs/backends/nats.md: revoking a lease of another process "scans the bucket for keys whose
    # Dyndisc-Lease header names it and deletes them" (no reader needed to purge them).
    owner, other = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    lease = await owner.grant(30)
    await owner.create(f"{prefix}a", b"1", lease.id)
    await owner.put(f"{prefix}b", b"2", 0)
    await other.revoke(lease.id)
    headers = await _last_headers(other, f"{prefix}a")
    assert (headers.get(KV_OPERATION), headers.get(PURGE_REASON)) == ("DEL", None), headers
    kept = await other.connection.get(encode_key(f"{prefix}b"))
    assert kept is not None
    assert kept.data == b"2"


async def test_a_write_answered_after_its_lease_was_found_gone_is_deleted_and_refused(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease ends (another client removes its lease key, the owner's keep-alive finds it gone) while a
    # put under it awaits its answer: the key it wrote belongs to no live lease and no revoke will cover
    # it, so the put deletes it and fails with LeaseNotFoundError (the runtime then writes it again under
    # the new lease).
    owner, other = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    lease = await owner.grant(30)
    publish = owner.connection.publish
    lost: list[LeaseNotFoundError] = []

    async def lease_lost_meanwhile(nats_key: str, value: bytes, **options: Any) -> int:
        revision = await publish(nats_key, value, **options)
        if nats_key == encode_key(key) and not lost:
            assert await other.connection.remove(lease_key(lease.id, other.scope), expected=None)
            with pytest.raises(LeaseNotFoundError) as gone:
                await owner.keep_alive(lease.id)
            lost.append(gone.value)
        return revision

    monkeypatch.setattr(owner.connection, "publish", lease_lost_meanwhile)
    with pytest.raises(LeaseNotFoundError):
        await owner.put(key, b"1", lease.id)
    assert lost, "the keep-alive ran while the put awaited its answer"
    headers = await _last_headers(other, key)
    assert headers.get(KV_OPERATION) == "DEL", headers


async def test_a_watch_of_a_server_that_is_not_there_fails_as_an_outage_before_it_opens() -> None:
    store = NatsStore(_nowhere())
    try:
        with anyio.fail_after(PROMPT), pytest.raises(BackendUnavailableError):
            async with store.watch("/x/"):
                pytest.fail("the watch opened")
    finally:
        await store.aclose()


async def test_a_create_over_a_deletion_marker_that_expires_meanwhile_still_creates(
    dyndisc_nats_server: NatsServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deleted key keeps its marker for NATS_KV_MARKER_TTL, then has no message at all. A create refused
    # because of the marker that finds, when it looks, that the marker has just gone (the subject purged
    # from the stream here, as its TTL would) creates the key as new.
    store = make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    await store.put(key, b"old", 0)
    await store.delete(key)
    publish = store.connection.publish
    nc = await nats.connect(dyndisc_nats_server.url)
    expired: list[bool] = []

    async def marker_expires_meanwhile(nats_key: str, value: bytes, **options: Any) -> int:
        try:
            return await publish(nats_key, value, **options)
        except WrongRevision:
            if nats_key == encode_key(key) and not expired:
                subject = store.connection.subject_prefix + nats_key
                assert await nc.jetstream().purge_stream(store.connection.stream, subject=subject)
                expired.append(True)
            raise

    monkeypatch.setattr(store.connection, "publish", marker_expires_meanwhile)
    try:
        assert await store.create(key, b"new", 0) is None
    finally:
        await nc.close()
    assert expired, "the create was refused by the marker first"
    assert await store.get_prefix(key) == {key: b"new"}


_BUCKET = "edges"
_PASSWORD = "pw-of-a-user"


def _access_configuration() -> str:
    """An admin, a frontend (what ``dyndisc access nats`` prints: reads only) and a user refused reads."""
    frontend = authorization_fragment(Scope(Role.FRONTEND), "fe", bucket=_BUCKET, password=_PASSWORD)
    refused = ", ".join(f'"{s}"' for s in ("$JS.API.STREAM.MSG.GET.>", "$JS.API.DIRECT.GET.>"))
    blind = (
        f'{{user: blind, password: "{_PASSWORD}", permissions: {{'
        f'publish: {{allow: [">"], deny: [{refused}]}}, subscribe: {{allow: [">"]}}}}}}'
    )
    return (
        "authorization {\n  users = [\n    {user: admin, password: admin-pw}\n"
        f"{frontend}\n    {blind}\n  ]\n}}\n"
    )


async def test_the_access_probes_say_false_for_what_the_server_refuses_not_that_they_cannot_tell(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    # KeyValueStore.may_write / may_read: None means "cannot tell (no access control)", which dyndisc
    # doctor reports as a skipped scope check; nats-server has access control and says yes or no.
    server = private_nats(config=_access_configuration())
    admin = make_store(server.url, user="admin", password="admin-pw", kv_bucket=_BUCKET)
    await admin.connection.jetstream()  # the admin creates the bucket
    frontend = make_store(server.url, user="fe", password=_PASSWORD, kv_bucket=_BUCKET, scope="fe")
    blind = make_store(server.url, user="blind", password=_PASSWORD, kv_bucket=_BUCKET)
    key = "/services/a/backend/generate/dyndisc-doctor-probe"
    assert (await admin.may_read("/services/"), await admin.may_write(key)) == (True, True)
    assert (await frontend.may_read("/services/"), await frontend.may_write(key)) == (True, False)
    assert await blind.may_read("/services/") is False
    assert await admin.get_prefix("/services/") == {}, "the probes wrote nothing"


def _watches_alive() -> int:
    gc.collect()
    return sum(isinstance(o, NatsWatch) for o in gc.get_objects())


async def test_a_closed_watch_leaves_nothing_behind_in_its_store(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # A long-lived store (a frontend's) opens and closes watches for as long as it runs: each must be
    # freed once closed (its event iterator, dropped unfinished, is closed by the event loop soon after).
    store = make_store(dyndisc_nats_server.url)
    prefix = unique_prefix()
    await store.connection.jetstream()
    before = _watches_alive()
    for _ in range(3):
        async with store.watch(prefix) as events:
            assert await next_event(events) == StoreSnapshot(items={})
        del events

    async def all_freed() -> bool:
        return _watches_alive() <= before

    await eventually(all_freed, PROMPT, "the closed watches to be freed")
