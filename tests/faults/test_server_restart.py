"""Scenario 4: nats-server killed and restarted during a watch (shorter and longer than the TTL);
kube-apiserver down longer than the TTL during a watch, and a forced ``410 Gone`` (the watch asks for history
the server no longer has)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from fault_targets import MakeTarget
from faultkit import PROMPT, assert_converged, registrations, unique_namespace, watching

from dyndisc import DistributedRuntime, InstanceQuery, LeaseChange
from dyndisc.backends.kubernetes import KubernetesDiscovery
from dyndisc.testing import RuntimeHost
from dyndisc.testing.server_fixtures import TcpProxyFactory
from dyndisc.testing.servers import KubeApiServer, NatsServer
from harnesses.kubernetes import Cluster, kubeconfig


@pytest.mark.slow
async def test_nats_server_restart_during_a_watch(make_target: MakeTarget) -> None:
    target = make_target("nats", private_server=True)
    target.ttl = 3.0  # stated: an outage of ~1 s is shorter than it, so live workers keep their ids
    server = target.server
    assert isinstance(server, NatsServer)
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    hosts = [await target.start() for _ in range(3)]
    for n, host in enumerate(hosts):
        for ep in ("a", "b"):
            await host.runtime.endpoint(f"{ns}.w.{ep}").register(f"tcp://10.0.0.{n}:1")
    live = lambda: registrations([h.runtime for h in hosts if not h.done], query)  # noqa: E731
    ids = [h.runtime.instance_id for h in hosts[:2]]

    async with watching([target.backend() for _ in range(3)], query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        await anyio.to_thread.run_sync(server.kill)
        await hosts[2].crash()  # dies while the server is down: its keys must expire, not linger
        await anyio.to_thread.run_sync(server.start)
        restarted = time.monotonic()
        # The crashed worker's keys expire within TTL + bound of its last keep-alive (before the crash).
        await assert_converged(
            watchers, target.fresh, query, bound=target.ttl + target.bound + PROMPT, expected=live
        )
        took = time.monotonic() - restarted
        late = await target.start()
        hosts.append(late)
        await late.runtime.endpoint(f"{ns}.w.a").register("tcp://10.0.0.9:1")
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        assert [h.runtime.instance_id for h in hosts[:2]] == ids, "an outage shorter than the TTL kept ids"
    print(f"nats-server restart: 3 watchers converged {took:.2f}s after the restart (TTL {target.ttl}s)")


@pytest.mark.slow
async def test_nats_server_down_longer_than_the_ttl_loses_nothing_and_leaves_no_phantom(
    make_target: MakeTarget,
) -> None:
    target = make_target("nats", private_server=True)
    target.ttl = 2.0  # TTL 2 s, server down 5 s
    server = target.server
    assert isinstance(server, NatsServer)
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    changes: list[LeaseChange] = []
    hosts = [await target.start(on_lease_change=changes.append) for _ in range(3)]
    for n, host in enumerate(hosts):
        for ep in ("a", "b"):
            await host.runtime.endpoint(f"{ns}.w.{ep}").register(f"tcp://10.0.0.{n}:1")
    live = lambda: registrations([h.runtime for h in hosts], query)  # noqa: E731

    async with watching([target.backend() for _ in range(3)], query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        await anyio.to_thread.run_sync(server.kill)
        await anyio.sleep(2.5 * target.ttl)
        await anyio.to_thread.run_sync(server.start)
        restarted = time.monotonic()
        # nats-server restores its messages on restart and the runtimes re-publish their keys before it
        # expires them, so leases survive (a key the server expired meanwhile is written again: its lease
        # is alive). Whichever way it goes, every endpoint of every runtime is listed under its current id
        # and no old id lingers beside a new one.
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        took = time.monotonic() - restarted
        await anyio.sleep(1.5 * target.ttl)  # and it stays so: nothing expires later
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        current = {h.runtime.instance_id for h in hosts}
        assert all(key[1] in current for w in watchers for key in w.instances), "no old id in any watcher"
    print(
        f"nats-server down {2.5 * target.ttl:.0f}s (TTL {target.ttl}s): converged {took:.2f}s after it; "
        f"{len(changes)} of {len(hosts)} leases replaced"
    )


@asynccontextmanager
async def kube_workers(server: KubeApiServer) -> AsyncIterator[tuple[Cluster, str, list[RuntimeHost]]]:
    hosts: list[RuntimeHost] = []
    async with Cluster.open(server) as cluster:
        namespace = await cluster.create_namespace()
        try:
            yield cluster, namespace, hosts
        finally:
            for host in hosts:
                if not host.done:
                    await host.stop()


@pytest.mark.slow
async def test_kube_apiserver_restart_and_410_gone_during_a_watch(
    dyndisc_kube_apiserver: KubeApiServer, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    proxy = dyndisc_tcp_proxy(dyndisc_kube_apiserver.host, dyndisc_kube_apiserver.port)
    direct = kubeconfig(dyndisc_kube_apiserver, dyndisc_kube_apiserver.admin_token)
    proxied = kubeconfig(dyndisc_kube_apiserver, dyndisc_kube_apiserver.admin_token, proxy.url_for("https"))
    query = InstanceQuery()
    backends: list[KubernetesDiscovery] = []

    def backend(**kwargs: object) -> KubernetesDiscovery:
        made = KubernetesDiscovery(namespace=namespace, debounce=0.05, **kwargs)  # type: ignore[arg-type]
        backends.append(made)
        return made

    def fresh() -> KubernetesDiscovery:
        return KubernetesDiscovery(namespace=namespace, kubeconfig=direct)

    try:
        async with kube_workers(dyndisc_kube_apiserver) as (cluster, namespace, hosts):
            for n in range(2):
                pod = await cluster.ready_pod(namespace, f"worker-{n}")
                # TTL 2 s, the API server down 5 s: an outage of any length is not a loss, so no worker
                # deletes or re-creates its resource and no watcher sees one leave.
                hosts.append(
                    await RuntimeHost.start(
                        DistributedRuntime(backend(identity=pod, kubeconfig=direct), lease_ttl=2)
                    )
                )
            for n, host in enumerate(hosts):
                await host.runtime.endpoint(f"dyn.w{n}.a").register(f"tcp://10.0.0.{n}:1")
            live = lambda: registrations([h.runtime for h in hosts], query)  # noqa: E731
            watcher_backends = [backend(kubeconfig=proxied) for _ in range(3)]

            async with watching(watcher_backends, query) as watchers:
                await assert_converged(watchers, fresh, query, bound=PROMPT, expected=live)
                # A forced 410 Gone: every watcher's next resume asks for history the server has dropped.
                relists = [sum(r.relists for r in b.reflectors) for b in watcher_backends]
                for watcher_backend in watcher_backends:
                    for reflector in watcher_backend.reflectors:
                        reflector.resource_version = "1"
                proxy.cut()
                await hosts[0].runtime.endpoint("dyn.w0.a").unregister()
                await hosts[0].runtime.endpoint("dyn.w0.b").register("tcp://10.0.0.0:2")
                proxy.restore()
                gone_at = time.monotonic()
                await assert_converged(watchers, fresh, query, bound=PROMPT * 2, expected=live)
                after_410 = time.monotonic() - gone_at
                for before, watcher_backend in zip(relists, watcher_backends, strict=True):
                    assert sum(r.relists for r in watcher_backend.reflectors) > before, "410 Gone: a relist"

                uids = {
                    n: (await cluster.call("GET", f"{cluster.crs_path(namespace)}/worker-{n}"))["metadata"][
                        "uid"
                    ]
                    for n in (0, 1)
                }
                departures = [dict(w.removed_at) for w in watchers]
                restarted = time.monotonic()
                await anyio.to_thread.run_sync(dyndisc_kube_apiserver.kill)
                await anyio.sleep(5.0)  # longer than the TTL
                await anyio.to_thread.run_sync(dyndisc_kube_apiserver.start)
                restart_took = time.monotonic() - restarted
                await hosts[1].runtime.endpoint("dyn.w1.b").register("tcp://10.0.0.1:2")
                back = time.monotonic()
                await assert_converged(watchers, fresh, query, bound=PROMPT * 3, expected=live)
                after_restart = time.monotonic() - back
                assert not any(h.done for h in hosts), "workers ride out the outage"
                assert [dict(w.removed_at) for w in watchers] == departures, "no watcher saw a worker leave"
                for n in (0, 1):
                    found = await cluster.call("GET", f"{cluster.crs_path(namespace)}/worker-{n}")
                    assert found["metadata"]["uid"] == uids[n], "no resource was deleted or re-created"
    finally:
        for made in backends:
            await made.aclose()
    print(
        f"kubernetes: 410 Gone -> relist converged in {after_410:.2f}s; api server down and back in "
        f"{restart_took:.1f}s (TTL 2 s), watchers converged {after_restart:.2f}s after it; 0 departures"
    )
