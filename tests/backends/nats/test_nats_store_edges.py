"""NatsStore edges: what the startup-timeout error names, TTLs a lease refuses, the range of lease ids, and
what closing a store does to its connection.

The first two need no nats-server: the store is pointed at a port nothing listens on.
"""

from __future__ import annotations

import json

import anyio
import nats
import pytest
from nats.js import api
from nats_helpers import PROMPT, MakeServer, MakeStore, eventually, unique_prefix

from dyndisc import BackendUnavailableError, LeaseNotFoundError
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.backends.nats.feed import KV_OPERATION, PURGE_REASON, is_expiry
from dyndisc.backends.nats.keys import encode_key, lease_key
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


async def _last_message(store: NatsStore, key: str) -> dict[str, str] | None:
    """The headers of the last message stored for ``key`` (read raw: a dyndisc reader would purge it)."""
    found = await store.connection.get(encode_key(key))
    assert found is not None, f"nothing stored for {key!r}"
    return dict(found.headers or {}) if found.headers else None


async def test_the_owner_of_an_expired_lease_purges_its_keys_as_expired(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # No reader at all: the owner's keep-alive is the one to find the lease ended and delete its keys. The
    # server ended it, so the deletions say so (a watcher hearing them before the lease's marker says
    # "expired", not "left": docs/backends/nats.md, "Orphans are purged by the readers").
    owner = make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    lease = await owner.grant(1)  # never renewed in time: it ends after a second
    await owner.create(key, b"1", lease.id)

    async def expired() -> bool:
        found = await owner.connection.get(lease_key(lease.id, owner.scope))
        return found is not None and is_expiry(found.headers)

    await eventually(expired, PROMPT, "the server to expire the lease key")
    with pytest.raises(LeaseNotFoundError):
        await owner.keep_alive(lease.id)
    headers = await _last_message(owner, key)
    assert headers is not None
    assert (headers.get(KV_OPERATION), headers.get(PURGE_REASON)) == ("DEL", "expired"), headers


async def test_the_owner_of_a_lease_removed_by_another_client_purges_its_keys_as_left(
    dyndisc_nats_server: NatsServer, make_store: MakeStore
) -> None:
    # Another client ended the lease (the first step of its revoke, or an operator's 'nats kv del'): the
    # owner's keep-alive reports it gone and deletes its keys, which did not expire.
    owner, other = make_store(dyndisc_nats_server.url), make_store(dyndisc_nats_server.url)
    key = f"{unique_prefix()}a"
    lease = await owner.grant(30)
    await owner.create(key, b"1", lease.id)
    assert await other.connection.remove(lease_key(lease.id, other.scope), expected=None)
    with pytest.raises(LeaseNotFoundError, match="revoked"):
        await owner.keep_alive(lease.id)
    headers = await _last_message(owner, key)
    assert headers is not None
    assert (headers.get(KV_OPERATION), headers.get(PURGE_REASON)) == ("DEL", None), headers
    assert await other.get_prefix(key) == {}


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
