"""Security checks of the fault suite: secured servers work end to end (ending in the invariant check) and
every misconfiguration is a clear error at start. Lease TTL 2 s.

etcd with TLS + client certificates and with user/password; NATS with credentials; Kubernetes with the
restricted token (forbidden outside its namespace); the file backend's permissions and a name that tries to
escape the root. The backends' own suites (``tests/backends/*/test_*security*.py``, ``test_kube_rbac.py``)
go through each error message in detail.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import anyio
import pytest
from fault_targets import NATS_BUCKET, MakeTarget, Target
from faultkit import PROMPT, Key, assert_converged, registrations, unique_namespace, watching

from dyndisc import (
    AccessDeniedError,
    DistributedRuntime,
    Instance,
    InstanceQuery,
    InvalidNameError,
    KvDiscovery,
)
from dyndisc.backends.etcd import EtcdStore
from dyndisc.backends.etcd.access import EtcdAccess
from dyndisc.backends.file import FileStore
from dyndisc.backends.kubernetes import KubernetesDiscovery
from dyndisc.backends.kubernetes.identity import PodIdentity
from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.backends.nats.access import authorization_fragment
from dyndisc.testing import RuntimeHost
from dyndisc.testing.chaos.plan import make_plan
from dyndisc.testing.chaos.runner import Session
from dyndisc.testing.chaos.targets import TARGETS
from dyndisc.testing.servers import EtcdServer, KubeApiServer, NatsServer
from harnesses.kubernetes import Cluster, kubeconfig

#: A misconfigured client must fail this fast, not after any startup wait.
FAIL_FAST = 5.0


async def works_end_to_end(target: Target) -> None:
    """A worker and two watchers on ``target``'s secured server; the invariant holds."""
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    host = await target.start()
    await host.runtime.endpoint(f"{ns}.w.a").register("tcp://10.0.0.1:1")
    async with watching([target.backend(), target.backend()], query) as watchers:
        await assert_converged(
            watchers, target.fresh, query, bound=PROMPT, expected=lambda: registrations([host.runtime], query)
        )
        assert len(watchers[0].instances) == 1


async def refused_at_start(target: Target, match: str, **settings: object) -> str:
    """A runtime whose store has ``settings`` fails to start, at once, with an error matching ``match``."""
    started = anyio.current_time()
    with anyio.fail_after(FAIL_FAST), pytest.raises(AccessDeniedError, match=match) as info:
        async with DistributedRuntime(target.store(**settings), lease_ttl=2):
            pytest.fail("the runtime must not start")
    assert anyio.current_time() - started < FAIL_FAST
    return str(info.value)


async def test_etcd_with_tls_and_client_certificates(make_target: MakeTarget) -> None:
    target = make_target("etcd", private_server=True, tls=True)
    assert isinstance(target.server, EtcdServer)
    tls = target.server.tls
    assert tls is not None
    target.store_settings = {
        "auth_ca": str(tls.ca_path),
        "auth_client_cert": str(tls.cert_path),
        "auth_client_key": str(tls.key_path),
    }
    await works_end_to_end(target)
    message = await refused_at_start(
        target, r"TLS handshake with etcd", auth_client_cert=None, auth_client_key=None
    )
    assert "ETCD_AUTH_CLIENT_CERT" in message


async def test_etcd_with_user_and_password(make_target: MakeTarget) -> None:
    target = make_target("etcd", private_server=True, auth=True)
    server = target.server
    assert isinstance(server, EtcdServer)
    target.store_settings = {"auth_username": server.username, "auth_password": server.password}
    await works_end_to_end(target)
    message = await refused_at_start(
        target, r"refused the password for user 'root' \(ETCD_AUTH_USERNAME", auth_password="not-it"
    )
    assert "not-it" not in message, "a password never appears in messages"


async def test_nats_with_credentials(make_target: MakeTarget) -> None:
    target = make_target("nats", private_server=True, user="svc", password="right-pw")
    assert isinstance(target.server, NatsServer)
    target.store_settings = {"user": "svc", "password": "right-pw"}
    await works_end_to_end(target)
    message = await refused_at_start(
        target, r"refused the password for user 'svc' \(NATS_USER", password="wrong-pw"
    )
    assert "wrong-pw" not in message, "a password never appears in messages"


@pytest.mark.slow
async def test_kubernetes_restricted_token_works_in_its_namespace_only(
    dyndisc_kube_apiserver: KubeApiServer,
) -> None:
    restricted = kubeconfig(dyndisc_kube_apiserver, dyndisc_kube_apiserver.restricted_token)
    admin = kubeconfig(dyndisc_kube_apiserver, dyndisc_kube_apiserver.admin_token)
    backends: list[KubernetesDiscovery] = []
    async with Cluster.open(dyndisc_kube_apiserver) as cluster:
        namespace = await cluster.create_namespace()
        elsewhere = await cluster.create_namespace()
        # The shipped least-privilege Role, bound to the restricted user.
        await cluster.grant_discovery_role(namespace)

        def backend(ns: str = namespace, **kwargs: object) -> KubernetesDiscovery:
            made = KubernetesDiscovery(namespace=ns, kubeconfig=restricted, debounce=0.05, **kwargs)  # type: ignore[arg-type]
            backends.append(made)
            return made

        try:
            pod = await cluster.ready_pod(namespace, "worker-0")
            host = await RuntimeHost.start(DistributedRuntime(backend(identity=pod), lease_ttl=2))
            try:
                await host.runtime.endpoint("dyn.w.a").register("tcp://10.0.0.1:1")
                query = InstanceQuery()
                async with watching([backend(), backend()], query) as watchers:
                    await assert_converged(
                        watchers,
                        lambda: KubernetesDiscovery(namespace=namespace, kubeconfig=admin),
                        query,
                        bound=PROMPT,
                        expected=lambda: registrations([host.runtime], query),
                    )
            finally:
                await host.stop()
            with anyio.fail_after(FAIL_FAST), pytest.raises(AccessDeniedError, match=r"forbidden"):
                await backend(elsewhere).list(InstanceQuery())
            # Nor write there: a worker's resource in another namespace is refused (docs/security.md).
            intruder = PodIdentity(name="intruder", namespace=elsewhere, uid=str(uuid.uuid4()))
            with anyio.fail_after(FAIL_FAST), pytest.raises(AccessDeniedError, match=r"forbidden"):
                await backend(elsewhere, identity=intruder).grant_lease(2)
        finally:
            for made in backends:
                await made.aclose()


def all_paths(directory: Path) -> list[Path]:
    """Every path under ``directory`` (a blocking walk, run in a thread)."""
    return list(directory.rglob("*"))


async def test_file_backend_permissions_and_names_that_try_to_escape(
    make_target: MakeTarget, tmp_path: Path
) -> None:
    os.umask(0o022)  # a permissive umask: the backend must still keep its files private
    target = make_target("file")
    assert target.root is not None
    await works_end_to_end(target)
    host = await target.start()
    for bad in ("..", "../etc", "a/b", ".", "ns.comp", "a\x00b"):
        with pytest.raises(InvalidNameError) as refused:
            await host.runtime.namespace(bad).component("c").endpoint("e").register("tcp://h:1")
        assert repr(bad) in str(refused.value), "the error names the bad name"
    assert host.runtime.registrations == [], "nothing was written"
    # Someone else's store writes keys made of dot segments: they stay inside the root, encoded.
    store = FileStore(target.root)
    await store.put("/services/../../../escaped/x", b"v", 0)
    await store.put("/services/./../c/e/1", b"v", 0)
    root = target.root
    everything = await anyio.to_thread.run_sync(all_paths, tmp_path)
    outside = [p for p in everything if root not in p.parents]
    assert [p for p in outside if p.name in {"escaped", "x", "x.rec"}] == []
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *everything] if root in (p, *p.parents)}
    assert {p: m for p, m in modes.items() if p.is_dir() and m != 0o700} == {}
    assert {p: m for p, m in modes.items() if p.is_file() and m != 0o600} == {}
    # A watcher lists only what it can read as records; the dot-segment keys are skipped, not followed.
    async with KvDiscovery(FileStore(target.root)) as reader:
        assert await reader.list(InstanceQuery(namespace="escaped")) == []


#: The password of every scoped user of the tests below.
SCOPED_PW = "scoped-pw"


async def scoped_target(make_target: MakeTarget, kind: str, namespaces: list[str]) -> Target:
    """A private ``kind`` server with auth, a worker user ``w-<ns>`` per namespace and a frontend ``fe`` made
    as ``dyndisc access`` makes them; the target's own stores (the truth, the revokes) are the admin's."""
    if kind == "etcd":
        target = make_target("etcd", private_server=True, auth=True)
        server = target.server
        assert isinstance(server, EtcdServer)
        target.store_settings = {"auth_username": server.username, "auth_password": server.password}
        root = target.store()
        assert isinstance(root, EtcdStore)
        access = EtcdAccess(root.connection)
        for ns in namespaces:
            await access.apply(Scope(Role.WORKER, ns), f"w-{ns}", password=SCOPED_PW)
        await access.apply(Scope(Role.FRONTEND), "fe", password=SCOPED_PW)
        return target
    users = {f"w-{ns}": Scope(Role.WORKER, ns) for ns in namespaces} | {"fe": Scope(Role.FRONTEND)}
    entries = [
        authorization_fragment(scope, user, bucket=NATS_BUCKET, password=SCOPED_PW)
        for user, scope in users.items()
    ]
    config = (
        "authorization {\n users = [\n {user: admin, password: admin-pw}\n" + "\n".join(entries) + "\n ]\n}\n"
    )
    target = make_target("nats", private_server=True, config=config)
    target.store_settings = {"user": "admin", "password": "admin-pw"}
    return target


def as_user(target: Target, user: str) -> dict[str, object]:
    """The store settings of ``user`` on ``target``."""
    if target.kind == "etcd":
        return {"auth_username": user, "auth_password": SCOPED_PW}
    return {"user": user, "password": SCOPED_PW, "scope": user}


@pytest.mark.parametrize("kind", ["etcd", "nats"])
async def test_scoped_workers_ride_out_a_revoke_and_a_server_restart(
    make_target: MakeTarget, kind: str
) -> None:
    """Several workers, each confined to its namespace, and frontends watching them all: a lease revoked by
    the admin is replaced in the worker's own scope, a server restart is ridden out, and through it all a
    worker's write into another namespace is refused while the others' registrations stay."""
    a, b = unique_namespace("a"), unique_namespace("b")
    target = await scoped_target(make_target, kind, [a, b])
    query = InstanceQuery()
    workers = []
    for ns, count in ((a, 2), (b, 1)):
        for n in range(count):
            host = await target.start(target.backend(**as_user(target, f"w-{ns}")))
            await host.runtime.endpoint(f"{ns}.w.e{n}").register(f"tcp://10.0.0.{n + 1}:1")
            workers.append(host)
    runtimes = [host.runtime for host in workers]

    def expected() -> dict[Key, Instance]:
        return registrations(runtimes, query)

    frontends = [target.backend(**as_user(target, "fe")) for _ in range(2)]
    async with watching(frontends, query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=expected)
        assert len(watchers[0].instances) == 3

        revoked = workers[0].runtime.instance_id
        await target.raw.revoke(revoked)  # the admin ends a's first worker's lease
        await assert_converged(
            watchers, target.fresh, query, bound=PROMPT, expected=expected, what="after revoke"
        )
        assert workers[0].runtime.instance_id != revoked

        server = target.server
        assert isinstance(server, EtcdServer | NatsServer)
        await anyio.to_thread.run_sync(server.restart)
        await assert_converged(
            watchers, target.fresh, query, bound=PROMPT, expected=expected, what="after restart"
        )

        with anyio.fail_after(FAIL_FAST), pytest.raises(AccessDeniedError, match=f"namespace {b!r}"):
            await workers[0].runtime.endpoint(f"{b}.w.intruder").register("tcp://10.0.0.9:1")
        await assert_converged(
            watchers, target.fresh, query, bound=PROMPT, expected=expected, what="after refusal"
        )
    for host in workers:
        assert host.runtime.health().state.value == "held"


@pytest.mark.slow
def test_a_chaos_run_with_every_agent_on_scoped_credentials(tmp_path: Path) -> None:
    """The chaos harness's etcd-scoped target (``python -m dyndisc.testing.chaos --backend etcd-scoped``):
    workers as workers of the seed's namespace, watchers (runtimes, clients, the CLI) as a frontend, every
    fault of the etcd target (kill, partition, revoke, foreign writes, compaction, a paused watcher)."""
    target = TARGETS["etcd-scoped"]
    seeds = (0, 15)
    planned = {
        step.args["kind"]
        for seed in seeds
        for step in make_plan(seed, duration=15.0, workload=target().workload).steps
        if step.actor == "nemesis"
    }
    assert planned == set(target.faults), "the seeds draw every fault of the target"
    with Session("etcd-scoped", duration=15.0, logs=tmp_path) as session:
        scoped = session.target
        assert scoped is not None
        for seed in seeds:
            outcome = session.run(seed)
            assert outcome.ok, f"{outcome.report()}\n(agents' logs: {tmp_path})"
            assert outcome.operations > 10
        # The agents ran with the credentials of their roles (what the target gives each agent process).
        env = anyio.run(scoped.environment, "p0", "ns-x")
        assert env["ETCD_AUTH_USERNAME"] == "worker-ns-x"
        env = anyio.run(scoped.environment, "v0", "ns-x")
        assert env["ETCD_AUTH_USERNAME"] == "frontend"
