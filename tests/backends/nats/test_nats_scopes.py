"""Least privilege on a real nats-server started with the authorization entries ``dyndisc access nats``
prints: a worker writes its namespace only, a frontend only reads, leases stay in their scope, refusals are
clear and immediate."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from nats_helpers import MakeServer, MakeStore, eventually, next_event

from dyndisc import (
    AccessDeniedError,
    Added,
    DistributedRuntime,
    EndpointId,
    Instance,
    InstanceQuery,
    KvDiscovery,
    Removed,
)
from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.backends.nats import NatsStore
from dyndisc.backends.nats.access import authorization_fragment
from dyndisc.backends.nats.keys import lease_key
from dyndisc.cli import main
from dyndisc.testing.servers import NatsServer

BUCKET = "scoped"
PASSWORD = "pw-of-a-user"
#: A refusal must come at once: the server answers a refused publish with an error, never a reply.
FAIL_FAST = 1.0
#: The admin (no permissions: every subject) and the users of each role.
USERS = {"w-a": Scope(Role.WORKER, "a"), "w-b": Scope(Role.WORKER, "b"), "fe": Scope(Role.FRONTEND)}


def configuration(users: dict[str, Scope]) -> str:
    """A nats-server configuration: an admin, and each user with what ``dyndisc access nats`` prints."""
    entries = [
        authorization_fragment(scope, user, bucket=BUCKET, password=PASSWORD) for user, scope in users.items()
    ]
    return (
        "authorization {\n  users = [\n    {user: admin, password: admin-pw}\n"
        + "\n".join(entries)
        + "\n  ]\n}\n"
    )


class Users:
    """A nats-server with scoped users, and stores connected as each."""

    def __init__(self, server: NatsServer, make_store: MakeStore) -> None:
        self.server = server
        self.make_store = make_store
        self.admin = self.store("admin", password="admin-pw", scope=None)

    def store(
        self, user: str, *, password: str = PASSWORD, scope: str | None = "", **settings: Any
    ) -> NatsStore:
        # The scope of a user's processes is its name (what the fragment's comment says to set).
        return self.make_store(
            self.server.url,
            user=user,
            password=password,
            kv_bucket=BUCKET,
            scope=user if scope == "" else scope,
            **settings,
        )

    async def everything(self) -> dict[str, Any]:
        """Every key of the bucket and its last message, read as the admin."""
        found = await self.admin.connection.scan(">")
        return {key: (change.value, change.revision) for key, change in found.items()}


@pytest.fixture
async def users(private_nats: MakeServer, make_store: MakeStore) -> Users:
    made = Users(private_nats(config=configuration(USERS)), make_store)
    await made.admin.connection.jetstream()  # the admin creates the bucket
    return made


async def test_a_worker_writes_its_namespace_only_and_a_frontend_only_reads(users: Users) -> None:
    async with (
        DistributedRuntime(users.store("w-a"), lease_ttl=2) as runtime_a,
        DistributedRuntime(users.store("w-b"), lease_ttl=2) as runtime_b,
        KvDiscovery(users.store("fe"), owns_store=False) as reader,
        reader.watch(InstanceQuery()) as events,
    ):
        assert (await next_event(events)).instances == ()
        mine = await runtime_a.endpoint("a.backend.generate").register("tcp://10.0.0.1:1")
        assert await next_event(events) == Added(instance=mine)
        theirs = await runtime_b.endpoint("b.backend.generate").register("tcp://10.0.0.2:1")
        assert await next_event(events) == Added(instance=theirs)
        await runtime_a.register_model(mine.endpoint_id, {"display_name": "m"})
        await runtime_a.endpoint("a.backend.generate").register_event_channel("kv", {"kind": "Zmq"})
        before = await users.everything()

        started = time.monotonic()
        with pytest.raises(AccessDeniedError) as refused:
            await runtime_a.endpoint("b.backend.generate").register("tcp://10.0.0.1:1")
        assert time.monotonic() - started < FAIL_FAST, "refused at once, not after a timeout"
        message = str(refused.value)
        assert message.startswith(
            f"nats-server at {users.server.url} refused user 'w-a' writing /services/b/backend/generate/"
        )
        assert f"(publish to '$KV.{BUCKET}.=.services.b.backend.generate." in message
        assert "dyndisc access nats --namespace b --user <user> --role worker" in message
        with pytest.raises(AccessDeniedError, match="namespace 'b'"):
            await runtime_a.register_model(EndpointId("b", "backend", "generate"), {"display_name": "m"})
        with pytest.raises(AccessDeniedError, match="namespace 'b'"):
            await runtime_a.endpoint("b.backend.generate").register_event_channel("kv", {"kind": "Zmq"})
        assert await users.everything() == before, "a refused write leaves nothing behind"

        await anyio.sleep(4.5)  # two TTLs: the keep-alive goes on
        assert runtime_a.health().state.value == "held"
        assert runtime_a.registrations == [mine]
        assert await reader.list(InstanceQuery()) == [mine, theirs]

        async with DistributedRuntime(users.store("fe"), lease_ttl=2) as front:
            client = await front.endpoint("a.backend.generate").client()
            await client.wait_for_instances(timeout=5)
            assert client.instances() == [mine]
            assert len(await front.models()) == 1
            with pytest.raises(AccessDeniedError, match="refused user 'fe' writing /services/a/"):
                await front.endpoint("a.backend.generate").register("tcp://10.0.0.3:1")
            assert front.health().state.value == "held", "a frontend keeps its own lease (with no key)"


async def test_a_lease_key_stays_in_its_scope(users: Users) -> None:
    worker_a = users.store("w-a")
    worker_b = users.store("w-b")
    async with (
        KvDiscovery(users.store("fe"), owns_store=False) as reader,
        reader.watch(InstanceQuery()) as events,
    ):
        assert (await next_event(events)).instances == ()
        backend_a = KvDiscovery(worker_a, owns_store=False)
        lease = await backend_a.grant_lease(2)
        mine = await backend_a.register(_instance("a", lease.id), lease)
        assert await next_event(events) == Added(instance=mine)
        # Another scope cannot end a's lease, nor renew it: its key is a's scope's.
        own_key = lease_key(lease.id, "w-a")
        with pytest.raises(AccessDeniedError, match=f"refused user 'w-b' writing its lease key '{own_key}'"):
            await worker_b.connection.remove(own_key, expected=None)
        # A lease key of b's scope with a's lease id keeps nothing of a alive.
        forged = lease_key(lease.id, "w-b")
        await worker_b.connection.publish(forged, b"{}", ttl=60, lease_id=lease.id, scope="w-b")
        # a's worker dies without revoking: its lease key expires, and its instance leaves every reader.
        await worker_a.aclose()
        removed = await next_event(events, timeout=10)
        assert isinstance(removed, Removed)
        assert removed.instance_id == mine.instance_id
        assert await reader.list(InstanceQuery()) == []


def _instance(namespace: str, lease_id: int) -> Instance:
    return Instance(namespace, "backend", "generate", lease_id, "tcp://10.0.0.1:1")


async def test_scoped_credentials_without_their_scope_say_to_set_it(users: Users) -> None:
    store = users.store("w-a", scope=None)
    started = time.monotonic()
    with pytest.raises(AccessDeniedError) as refused:
        await store.grant(2)
    assert time.monotonic() - started < FAIL_FAST
    assert "refused user 'w-a' subscribing to '_inbox." in str(refused.value)
    assert "NATS_SCOPE unset" in str(refused.value)
    assert "set NATS_SCOPE to the scope 'dyndisc access nats' printed for this user" in str(refused.value)
    # Another user's scope: its inbox is refused too, with the same fix.
    other = users.store("w-a", scope="w-b")
    with pytest.raises(AccessDeniedError, match=r"refused user 'w-a' subscribing to '_inbox\.w-b\."):
        await other.grant(2)


async def test_a_frontend_watches_through_a_crash_it_may_not_clean_up(users: Users) -> None:
    worker = users.store("w-a")
    async with (
        KvDiscovery(users.store("fe"), owns_store=False) as reader,
        reader.watch(InstanceQuery()) as events,
    ):
        assert (await next_event(events)).instances == ()
        backend = KvDiscovery(worker, owns_store=False)
        lease = await backend.grant_lease(2)
        mine = await backend.register(_instance("a", lease.id), lease)
        assert await next_event(events) == Added(instance=mine)
        await worker.aclose()  # a crash: no revoke
        assert isinstance(await next_event(events, timeout=10), Removed)
        # The frontend may not purge the orphan (another namespace's key): it stays invisible.
        await anyio.sleep(1.5)
        assert await reader.list(InstanceQuery()) == []
        orphan = f"=.services.a.backend.generate.{lease.id:x}"
        assert orphan in await users.everything()
        # A worker of namespace a may: its first list of a purges it.
        async with DistributedRuntime(users.store("w-a"), lease_ttl=2) as runtime:
            assert await runtime.list(InstanceQuery("a")) == []

            async def purged() -> bool:
                return orphan not in await users.everything()

            await eventually(purged, 5, "the purge of the orphan by a worker of its namespace")


#: Namespaces next to each other: prefixes of one another, encoded separators, wildcards, non-ASCII.
NEIGHBOURS = [("a", "a-b"), ("a-b", "a"), ("a b", "a"), ("a=2E", "a"), ("*", "a"), ("a", ">"), ("ä", "a")]


async def test_names_made_to_escape_cannot_reach_a_neighbours_keys(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    names = sorted({name for pair in NEIGHBOURS for name in pair})
    scopes = {f"w{i}": Scope(Role.WORKER, name) for i, name in enumerate(names)}
    users = Users(private_nats(config=configuration(scopes)), make_store)
    await users.admin.connection.jetstream()
    user_of = {scope.namespace: user for user, scope in scopes.items()}
    for mine, theirs in NEIGHBOURS:
        async with DistributedRuntime(users.store(user_of[mine]), lease_ttl=5) as runtime:
            await runtime.namespace(mine).component("c").endpoint("e").register("tcp://10.0.0.1:1")
            before = await users.everything()
            endpoint = runtime.namespace(theirs).component("c").endpoint("e")
            with pytest.raises(AccessDeniedError, match=f"namespace {theirs!r}"):
                await endpoint.register("tcp://10.0.0.1:1")
            with pytest.raises(AccessDeniedError, match=f"namespace {theirs!r}"):
                await endpoint.register_model({"display_name": "m"})
            with pytest.raises(AccessDeniedError, match=f"namespace {theirs!r}"):
                await endpoint.register_event_channel("t", {})
            assert await users.everything() == before, f"{mine!r} wrote into {theirs!r}"
        await eventually(lambda: _no_lease_of(users), 5, "the runtime's revoke")


async def _no_lease_of(users: Users) -> bool:
    return not [k for k in await users.everything() if k.startswith("_dyndisc/lease.")]


def doctor(server: NatsServer, user: str, *args: str) -> tuple[int, str]:
    """``dyndisc doctor`` as ``user`` (its scope set, as the entry's comment says); exit code and output."""
    env = {
        "NATS_SERVER": server.url,
        "NATS_USER": user,
        "NATS_PASSWORD": PASSWORD,
        "NATS_SCOPE": user,
        "NATS_KV_BUCKET": BUCKET,
    }
    result = CliRunner().invoke(
        main, ["doctor", "--backend", "nats", "--ttl", "2", "--timeout", "10", *args], env=env
    )
    return result.exit_code, result.output


async def test_doctor_checks_the_scope_of_each_role_and_leaves_nothing_behind(users: Users) -> None:
    before = await users.everything()
    code, output = await anyio.to_thread.run_sync(doctor, users.server, "w-a", "--namespace", "a")
    assert code == 0, output
    assert "[ ok ] access: user 'w-a' (NATS_SCOPE='w-a')" in output
    assert (
        "[ ok ] can write: namespace 'a' (/services/a/, /v1/mdc/a/, /v1/event_channels/namespace/a/)"
        in output
    )
    assert "[ ok ] other namespaces: cannot write 'dyndisc-doctor-" in output
    assert "a registration arrived in" in output

    code, output = await anyio.to_thread.run_sync(doctor, users.server, "fe")
    assert code == 0, output
    assert "[ ok ] can write: nothing of namespace 'dyndisc-doctor': read-only credentials" in output

    code, output = await anyio.to_thread.run_sync(doctor, users.server, "w-a", "--namespace", "b")
    assert code == 1, output
    assert "[FAIL] can write: nothing of namespace 'b'" in output
    assert "dyndisc access nats --namespace b --user <user> --role worker" in output

    # No key, and no lease key, is left behind (deletion markers expire on their own).
    assert await users.everything() == before
