"""Least privilege on a real etcd with auth enabled: the roles ``dyndisc access etcd`` makes, what they let a
worker and a frontend do, the refusals, and a sample of names made to escape a namespace's prefix."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from etcd_helpers import MakeServer, MakeStore

from dyndisc import (
    AccessDeniedError,
    Added,
    DistributedRuntime,
    DynamoTcp,
    EndpointId,
    InstanceQuery,
    KvDiscovery,
    Resync,
)
from dyndisc.backends.etcd import EtcdStore
from dyndisc.backends.etcd.access import EtcdAccess, etcdctl_commands, permissions
from dyndisc.backends.etcd.roles import Permission, get_role
from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.cli import main
from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import EtcdServer, ServerUnavailable
from dyndisc.testing.servers.etcd import build_etcdctl

#: A refusal must come at once, not after retries.
FAIL_FAST = 3.0
PASSWORD = "pw-of-a-user"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def namespace_grant(namespace: str) -> Permission:
    """The etcd permission on the instances of ``namespace`` (dyndisc layout) of its worker role."""
    grants = Scope(Role.WORKER, namespace).grants()
    return Permission.of(next(g for g in grants if g.prefix == f"/services/{namespace}/"))


def revoke(server: EtcdServer, role: str, perm: Permission) -> None:
    """Revoke ``perm`` from ``role`` by hand, as root."""
    server.api("/v3/auth/role/revoke", {"role": role, "key": b64(perm.key), "range_end": b64(perm.range_end)})


def everything(server: EtcdServer) -> dict[str, bytes]:
    """Every key in etcd, read as root."""
    reply = server.api("/v3/kv/range", {"key": b64(b"\0"), "range_end": b64(b"\0")})
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
        for kv in reply.get("kvs", [])
    }


class Users:
    """Users of each role on one etcd, made as ``dyndisc access etcd`` does, and stores of each."""

    def __init__(self, server: EtcdServer, make_store: MakeStore) -> None:
        self.server = server
        self.make_store = make_store
        self.root = make_store(server.client_url, auth_username="root", auth_password=server.password)
        self.access = EtcdAccess(self.root.connection)

    async def make(self, user: str, role: Role, namespace: str | None = None, **scope: Any) -> EtcdStore:
        await self.access.apply(Scope(role, namespace, **scope), user, password=PASSWORD)
        return self.store(user)

    def store(self, user: str) -> EtcdStore:
        return self.make_store(self.server.client_url, auth_username=user, auth_password=PASSWORD)


@pytest.fixture
def users(private_etcd: MakeServer, make_store: MakeStore) -> Users:
    return Users(private_etcd(auth=True), make_store)


async def test_applying_a_role_twice_changes_nothing_and_drift_is_brought_back(users: Users) -> None:
    scope = Scope(Role.WORKER, "a")
    first = await users.access.apply(scope, "w-a", password=PASSWORD)
    assert "created role 'dyndisc-worker-a'" in first.changes
    assert "created user 'w-a'" in first.changes
    assert "user 'w-a': granted role 'dyndisc-worker-a'" in first.changes
    assert first.notes == []
    again = await users.access.apply(scope, "w-a", password=PASSWORD)
    assert again.changes == []
    assert await get_role(users.root.connection, "dyndisc-worker-a") == permissions(scope)

    # Drift: a grant revoked by hand, one added by hand, another dyndisc role and a foreign one on the user.
    revoke(users.server, "dyndisc-worker-a", namespace_grant("a"))
    extra = {"permType": "READWRITE", "key": b64(b"/services/"), "range_end": b64(b"/services0")}
    users.server.api("/v3/auth/role/grant", {"name": "dyndisc-worker-a", "perm": extra})
    await users.access.apply(Scope(Role.FRONTEND), "someone-else", password=PASSWORD)
    users.server.api("/v3/auth/user/grant", {"user": "w-a", "role": "dyndisc-frontend"})
    users.server.api("/v3/auth/role/add", {"name": "theirs"})
    users.server.api("/v3/auth/user/grant", {"user": "w-a", "role": "theirs"})
    fixed = await users.access.apply(scope, "w-a", password="a-new-password")
    assert sorted(fixed.changes) == sorted(
        [
            "role 'dyndisc-worker-a': revoked readwrite /services/ (not in the role)",
            "role 'dyndisc-worker-a': granted read /services/ (it was missing)",
            "role 'dyndisc-worker-a': granted readwrite /services/a/ (it was missing)",
            "user 'w-a': changed its password to the one given",
            "user 'w-a': revoked role 'dyndisc-frontend' (one process, one role)",
        ]
    )
    assert len(fixed.notes) == 1
    assert "also holds role 'theirs', which dyndisc did not make" in fixed.notes[0]
    assert await get_role(users.root.connection, "dyndisc-worker-a") == permissions(scope)
    assert (await users.access.apply(scope, "w-a", password="a-new-password")).changes == []


async def test_a_worker_writes_its_namespace_only_and_a_frontend_only_reads(users: Users) -> None:
    worker_a = await users.make("w-a", Role.WORKER, "a")
    worker_b = await users.make("w-b", Role.WORKER, "b")
    frontend = await users.make("fe", Role.FRONTEND)
    async with (
        DistributedRuntime(worker_a, lease_ttl=2) as runtime_a,
        DistributedRuntime(worker_b, lease_ttl=2) as runtime_b,
        KvDiscovery(frontend, owns_store=False) as reader,
    ):
        async with reader.watch(InstanceQuery()) as events:
            assert await anext(events) == Resync(instances=())
            mine = await runtime_a.endpoint("a.backend.generate").register("tcp://10.0.0.1:1")
            assert await anext(events) == Added(instance=mine)
            theirs = await runtime_b.endpoint("b.backend.generate").register("tcp://10.0.0.2:1")
            assert await anext(events) == Added(instance=theirs)
        await runtime_a.register_model(mine.endpoint_id, {"display_name": "m"})
        await runtime_a.endpoint("a.backend.generate").register_event_channel("kv", {"kind": "Zmq"})
        before = everything(users.server)

        # The worker of a, in b: refused by etcd, at once, in one clear error; nothing written.
        with anyio.fail_after(FAIL_FAST), pytest.raises(AccessDeniedError) as refused:
            await runtime_a.endpoint("b.backend.generate").register("tcp://10.0.0.1:1")
        assert str(refused.value).startswith(
            f"etcd at {users.server.client_url} refused user 'w-a' writing /services/b/backend/generate/"
        )
        assert "its role 'dyndisc-worker-a' may write namespace 'a' only" in str(refused.value)
        assert "dyndisc access etcd --namespace b --user <user> --role worker" in str(refused.value)
        for write in (
            lambda: runtime_a.register_model(EndpointId("b", "backend", "generate"), {"display_name": "m"}),
            lambda: runtime_a.endpoint("b.backend.generate").register_event_channel("kv", {"kind": "Zmq"}),
            lambda: runtime_a.bucket("v1/mdc").put("b/x", {"a": 1}),
            lambda: runtime_a.bucket("v1/mdc").delete(f"b/backend/generate/{theirs.instance_id:x}"),
        ):
            with anyio.fail_after(FAIL_FAST), pytest.raises(AccessDeniedError, match="namespace 'b'"):
                await write()
        assert everything(users.server) == before, "a refused write leaves nothing behind"

        # The runtime goes on: its lease, its registration in a, its keep-alive (over two TTLs).
        await anyio.sleep(4.5)
        assert runtime_a.health().state.value == "held"
        assert runtime_a.registrations == [mine]
        assert await reader.list(InstanceQuery()) == [mine, theirs]
        assert len(await runtime_b.models()) == 1

        # The frontend reads both namespaces and writes neither.
        async with DistributedRuntime(frontend, lease_ttl=2) as front:
            assert await front.list(InstanceQuery("a")) == [mine]
            client = await front.endpoint("b.backend.generate").client()
            await client.wait_for_instances(timeout=5)
            assert client.instances() == [theirs]
            for namespace in ("a", "b"):
                with anyio.fail_after(FAIL_FAST), pytest.raises(AccessDeniedError) as refused:
                    await front.endpoint(f"{namespace}.backend.generate").register("tcp://10.0.0.3:1")
                assert "its role 'dyndisc-frontend' may only read" in str(refused.value)
            assert front.health().state.value == "held", "a frontend keeps its own lease (with no key)"


async def test_the_dynamo_layout_is_scoped_the_same(users: Users) -> None:
    worker = await users.make("w-a", Role.WORKER, "a")
    backend = KvDiscovery(worker, owns_store=False, layout="dynamo-v1")
    async with DistributedRuntime(backend, lease_ttl=2) as runtime:
        endpoint = runtime.endpoint("a.backend.generate")
        await endpoint.register(DynamoTcp("10.0.0.1", 9000))
        from dyndisc._models import Readiness

        await endpoint.register(DynamoTcp("10.0.0.1", 9000), readiness=Readiness.DRAINING)
        await endpoint.register_model({"display_name": "m"})
        keys = set(everything(users.server))
        assert any(k.startswith("v1/dyndisc_endpoints/a/backend/generate/") for k in keys)
        assert any(k.startswith("v1/mdc/a/backend/generate/") for k in keys)
        with pytest.raises(AccessDeniedError, match=r"writing v1/instances/b/backend/generate/"):
            await runtime.endpoint("b.backend.generate").register(DynamoTcp("10.0.0.1", 9000))
        with pytest.raises(AccessDeniedError, match=r"writing v1/dyndisc_endpoints/b/"):
            await runtime.endpoint("b.backend.generate").register(
                DynamoTcp("10.0.0.1", 9000), readiness=Readiness.DRAINING
            )
        assert set(everything(users.server)) == keys


async def test_a_refused_keep_alive_still_stops_the_runtime(users: Users) -> None:
    worker = await users.make("w-a", Role.WORKER, "a")

    async def run_until_stopped() -> None:
        async with DistributedRuntime(worker, lease_ttl=2) as runtime:
            await runtime.endpoint("a.backend.generate").register("tcp://10.0.0.1:1")
            # The role loses its namespace: etcd then refuses to renew a lease holding a key of it.
            revoke(users.server, "dyndisc-worker-a", namespace_grant("a"))
            with anyio.fail_after(10):
                await anyio.sleep_forever()

    with pytest.raises(AccessDeniedError, match=r"renewing lease .* denied user 'w-a'"):
        await run_until_stopped()


#: Namespaces next to each other: prefixes of one another, encoded separators, wildcards, non-ASCII.
NEIGHBOURS = [
    ("a", "a-b"),
    ("a-b", "a"),
    ("a", "ab"),
    ("a b", "a"),
    ("a%2F", "a"),
    ("a", "a%2F"),
    ("ä", "a"),
    ("a:", "a"),
    ("a+b", "a"),
    ("*", "a"),
    ("services", "a"),
]


async def test_names_made_to_escape_cannot_reach_a_neighbours_keys(users: Users) -> None:
    owners = {name for pair in NEIGHBOURS for name in pair}
    stores = {name: await users.make(f"w-{i}", Role.WORKER, name) for i, name in enumerate(sorted(owners))}
    for mine, theirs in NEIGHBOURS:
        async with DistributedRuntime(stores[mine], lease_ttl=5) as runtime:
            await runtime.namespace(mine).component("c").endpoint("e").register("tcp://10.0.0.1:1")
            await runtime.register_model(EndpointId(mine, "c", "e"), {"display_name": "m"})
            before = everything(users.server)
            endpoint = runtime.namespace(theirs).component("c").endpoint("e")
            with pytest.raises(AccessDeniedError, match=f"namespace {theirs!r}"):
                await endpoint.register("tcp://10.0.0.1:1")
            with pytest.raises(AccessDeniedError, match=f"namespace {theirs!r}"):
                await endpoint.register_model({"display_name": "m"})
            with pytest.raises(AccessDeniedError, match=f"namespace {theirs!r}"):
                await endpoint.register_event_channel("t", {})
            assert everything(users.server) == before, f"{mine!r} wrote into {theirs!r}"


@pytest.mark.parametrize(
    ("role", "namespace", "user"),
    [("worker", "a b", "w a"), ("frontend", None, "fe"), ("operator", None, "ops")],
)
async def test_the_printed_etcdctl_commands_make_the_same_role_and_user(
    users: Users, tmp_path: Path, role: str, namespace: str | None, user: str
) -> None:
    try:
        etcdctl = build_etcdctl()
    except ServerUnavailable as exc:
        server_unavailable(f"etcdctl: {exc}")
    password_file = tmp_path / "password"
    password_file.write_text(f"{PASSWORD}\n")
    scope = Scope(Role(role), namespace)
    env = {
        **os.environ,
        "PATH": f"{etcdctl.parent}{os.pathsep}{os.environ['PATH']}",
        "ETCDCTL_ENDPOINTS": users.server.client_url,
        "ETCDCTL_USER": f"root:{users.server.password}",
    }
    for line in etcdctl_commands(scope, user, password_file=str(password_file)):
        done = await anyio.run_process(["bash", "-c", line], env=env, check=False)
        assert done.returncode == 0, f"{line}: {done.stderr.decode()}"
    # What dyndisc would make, etcdctl made: applying the scope now changes nothing.
    assert (await users.access.apply(scope, user, password=PASSWORD)).changes == []
    assert await get_role(users.root.connection, scope.role_name) == permissions(scope)


def doctor(server: EtcdServer, user: str, password: str, *args: str) -> tuple[int, str]:
    """``dyndisc doctor`` as ``user``; its exit code and output."""
    result = CliRunner().invoke(
        main,
        ["doctor", "--backend", "etcd", "--ttl", "2", "--timeout", "10", *args],
        env={"ETCD_ENDPOINTS": server.client_url, "ETCD_AUTH_USERNAME": user, "ETCD_AUTH_PASSWORD": password},
    )
    return result.exit_code, result.output


def leases(server: EtcdServer) -> list[str]:
    return sorted(lease["ID"] for lease in server.api("/v3/lease/leases", {}).get("leases", []))


async def test_doctor_checks_the_scope_of_each_role_and_leaves_nothing_behind(users: Users) -> None:
    await users.make("w-a", Role.WORKER, "a")
    await users.make("fe", Role.FRONTEND)
    before, held = everything(users.server), leases(users.server)

    code, output = await anyio.to_thread.run_sync(doctor, users.server, "w-a", PASSWORD)
    assert code == 0, output
    assert "[ ok ] access: user 'w-a', whose roles may write namespace 'a'" in output
    assert "[ ok ] can read: /services/, /v1/mdc/, /v1/event_channels/ (everything routing reads)" in output
    assert (
        "[ ok ] can write: namespace 'a' (/services/a/, /v1/mdc/a/, /v1/event_channels/namespace/a/)"
        in output
    )
    assert "[ ok ] other namespaces: cannot write 'dyndisc-doctor-" in output
    assert "): confined to 'a'" in output
    assert "a registration arrived in" in output, "the round trip registers in the worker's own namespace"

    code, output = await anyio.to_thread.run_sync(doctor, users.server, "fe", PASSWORD)
    assert code == 0, output
    assert "[ ok ] can write: nothing of namespace 'dyndisc-doctor': read-only credentials" in output
    assert "no registration round trip: these credentials may not write namespace 'dyndisc-doctor'" in output

    code, output = await anyio.to_thread.run_sync(doctor, users.server, "fe", PASSWORD, "--namespace", "a")
    assert code == 1, output
    assert (
        "[FAIL] can write: nothing of namespace 'a': a process with these credentials cannot register"
        in output
    )
    assert (
        "fix: give the user the worker role of 'a': dyndisc access etcd --namespace a --user <user>" in output
    )

    code, output = await anyio.to_thread.run_sync(doctor, users.server, "root", users.server.password or "")
    assert code == 0, output
    assert "[ ok ] other namespaces: writable too (e.g. 'dyndisc-doctor-" in output

    # Drift: the worker's role lost its model cards; the doctor says so, and what fixes it.
    cards = Permission.of(next(g for g in Scope(Role.WORKER, "a").grants() if g.prefix == "/v1/mdc/a/"))
    revoke(users.server, "dyndisc-worker-a", cards)
    code, output = await anyio.to_thread.run_sync(doctor, users.server, "w-a", PASSWORD)
    assert code == 0, output  # a warning: registrations work, model cards would be refused
    assert (
        "[warn] can write: namespace 'a' in part: /services/a/, /v1/event_channels/namespace/a/; "
        "not /v1/mdc/a/" in output
    )
    assert "(a role that drifted is brought back)" in output

    assert everything(users.server) == before, "no key is left behind"
    assert leases(users.server) == held, "no lease is left behind"


async def test_the_access_command_makes_the_role_then_has_nothing_to_change(
    users: Users, tmp_path: Path
) -> None:
    password = tmp_path / "pw"
    password.write_text(f"{PASSWORD}\n")
    env = {
        "ETCD_ENDPOINTS": users.server.client_url,
        "ETCD_AUTH_USERNAME": "root",
        "ETCD_AUTH_PASSWORD": users.server.password or "",
    }
    args = ["access", "etcd", "-n", "a", "-u", "w-a", "-r", "worker", "--password-file", str(password)]

    def run() -> tuple[int, str]:
        result = CliRunner().invoke(main, args, env=env)
        return result.exit_code, result.output

    code, output = await anyio.to_thread.run_sync(run)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == f"etcd at {users.server.client_url}: role 'dyndisc-worker-a' for user 'w-a':"
    assert "  created role 'dyndisc-worker-a'" in lines
    assert "  created user 'w-a'" in lines
    code, output = await anyio.to_thread.run_sync(run)
    assert code == 0, output
    assert output.splitlines() == [
        f"etcd at {users.server.client_url}: role 'dyndisc-worker-a' for user 'w-a': nothing to change "
        "(every grant and the user are as they should be)"
    ]
    async with DistributedRuntime(users.store("w-a"), lease_ttl=2) as runtime:
        await runtime.endpoint("a.c.e").register("tcp://10.0.0.1:1")
    # Without root's credentials: etcd's refusal, said once.
    result = await anyio.to_thread.run_sync(
        lambda: CliRunner().invoke(
            main, args, env={**env, "ETCD_AUTH_USERNAME": "w-a", "ETCD_AUTH_PASSWORD": PASSWORD}
        )
    )
    assert result.exit_code == 1
    refused = f"Error: etcd at {users.server.client_url} refused user 'w-a' (etcdserver:"
    assert result.output.startswith(refused)
    assert "only etcd's root user may manage roles and users" in result.output
