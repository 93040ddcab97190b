"""The watcher side against a real kube-apiserver with the real kube-controller-manager: readiness from the
EndpointSlices its controller writes for the discovery Service, joined with the workers' metadata, which its
garbage collector deletes with their pods.

Nothing plays kubelet but the tests: they run pods (bound to a Node) and write their status; the chain
Service labels -> EndpointSlice controller -> labelled slices -> our join is the real one. Slices are written
by hand only where the controller never writes what is tested (endpoints without a uid or a ready
condition).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import anyio
import pytest
from kube_helpers import PROMPT, Workers, everything, next_event, next_resync, until

from dyndisc import (
    Added,
    DiscoveryEvent,
    DistributedRuntime,
    Instance,
    InstanceQuery,
    Readiness,
    RemovalReason,
    Removed,
    Resync,
)
from dyndisc.backends.kubernetes import KubernetesDiscovery, PodIdentity
from dyndisc.backends.kubernetes.reflector import RETRY_MAX
from dyndisc.backends.kubernetes.siphash import instance_id_for
from dyndisc.testing import RuntimeHost
from dyndisc.testing.server_fixtures import TcpProxyFactory
from harnesses.kubernetes import Cluster, SliceEndpoint, kubeconfig


def removed(instance: Instance) -> Removed:
    return Removed(endpoint=instance.endpoint_id, instance_id=instance.instance_id)


async def test_readiness_flips_follow_the_pods_readiness(
    workers: Workers, cluster: Cluster, namespace: str, record_property: Callable[[str, object], None]
) -> None:
    pod = await workers.pod("worker-0")
    host = await workers.start(pod)
    instance = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    flips: list[float] = []
    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(instance,))
        for ready in (False, True, False, True):
            started = time.monotonic()
            # The readiness probe fails (or passes again): kubelet writes the pod's status, the controller
            # updates the slice, the watcher follows.
            await cluster.set_pod_status(namespace, "worker-0", ready=ready)
            event = await next_event(events)
            assert event == (Added(instance=instance) if ready else removed(instance))
            flips.append(time.monotonic() - started)
            if isinstance(event, Removed):
                assert event.reason is RemovalReason.NOT_READY, "its resource still lists it"
        await host.runtime.endpoint("dyn.c.e").unregister()
        left = await next_event(events)
        assert isinstance(left, Removed)
        assert left.reason is RemovalReason.LEFT, "taken out of its resource: it left"
    record_property("readiness_flip_seconds", [round(f, 3) for f in flips])
    print(f"readiness flip seen by the watcher after {statistics.median(flips):.3f}s (median)")


async def test_a_terminating_pod_is_draining_until_it_stops_serving(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    host = await workers.start(await workers.pod("worker-0"))
    instance = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    draining = instance.replace(readiness=Readiness.DRAINING)
    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(instance,))
        # Graceful deletion: the pod turns terminating; the controller lists it ready=false, serving=true.
        await cluster.delete_pod(namespace, "worker-0", grace_seconds=None)
        assert await next_event(events) == Added(instance=draining)
        client = await host.runtime.endpoint("dyn.c.e").client()
        await until(lambda: client.instances(include_draining=True) == [draining], PROMPT, "the client")
        assert client.instances() == [], "a draining instance takes no new work"
        # Its readiness probe fails as it shuts down: serving=false, gone.
        await cluster.set_pod_status(namespace, "worker-0", ready=False)
        assert await next_event(events) == removed(instance)
        await cluster.delete_pod(namespace, "worker-0", grace_seconds=0)  # kubelet finishes the deletion


async def test_a_deleted_pod_leaves_and_its_metadata_is_garbage_collected(
    workers: Workers, cluster: Cluster, namespace: str, record_property: Callable[[str, object], None]
) -> None:
    pods = [await workers.pod(f"worker-{i}") for i in range(2)]
    hosts = [await workers.start(p) for p in pods]
    gone, stays = [await h.runtime.endpoint("dyn.c.e").register(f"tcp://h:{i}") for i, h in enumerate(hosts)]
    await hosts[0].crash()  # the process dies with its pod: it deletes nothing itself
    watcher = workers.backend()
    async with watcher.watch(everything()) as events:
        assert await next_event(events) == Resync(
            instances=tuple(sorted([gone, stays], key=lambda i: i.instance_id))
        )
        started = time.monotonic()
        await cluster.delete_pod(namespace, "worker-0", grace_seconds=0)
        assert await next_event(events) == removed(gone)
        left = time.monotonic() - started
        # The garbage collector deletes the worker's DynamoWorkerMetadata through its ownerReference.
        collected = await cluster.wait_gone(f"{cluster.crs_path(namespace)}/worker-0")
    assert await watcher.list(everything()) == [stays]
    record_property("pod_deleted_to_removed_s", round(left, 3))
    record_property("pod_deleted_to_metadata_collected_s", round(collected, 3))
    print(f"removed {left:.3f}s after the pod was deleted; its metadata collected after {collected:.3f}s")


async def test_a_pod_behind_two_services_counts_once(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    await cluster.create_service(namespace, "also-worker", app="worker")  # a second Service, same pods
    host = await workers.start(await workers.pod("worker-0"))
    a = await host.runtime.endpoint("dyn.c.a").register("tcp://h:1")
    slices = await cluster.call("GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices")
    assert len(slices["items"]) == 2, "one slice per Service, both listing the pod"
    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(a,))
        # One Service (and, through the garbage collector, its slice) goes: the pod is still listed once.
        await cluster.call("DELETE", f"/api/v1/namespaces/{namespace}/services/also-worker")
        b = await host.runtime.endpoint("dyn.c.b").register("tcp://h:2")
        assert await next_event(events) == Added(instance=b), "nothing came in between: no Removed"
        await cluster.set_pod_status(namespace, "worker-0", ready=False)
        assert {await next_event(events), await next_event(events)} == {removed(a), removed(b)}


async def test_a_rollout_of_50_pods_is_coalesced(
    workers: Workers, cluster: Cluster, namespace: str, record_property: Callable[[str, object], None]
) -> None:
    count = 50
    watcher = workers.backend(debounce=0.2)
    seen: set[int] = set()
    all_seen = anyio.Event()

    async def consume(events: AsyncIterator[DiscoveryEvent]) -> None:  # a consumer that keeps up, as a client
        async for event in events:
            assert isinstance(event, Added)
            seen.add(event.instance.instance_id)
            if len(seen) == count:
                all_seen.set()

    async with watcher.watch(everything()) as events, anyio.create_task_group() as tg:
        assert await next_event(events) == Resync(instances=())
        tg.start_soon(consume, events)
        started = time.monotonic()
        for i in range(count):  # a rollout: pods start, their workers write their metadata, probes pass
            name = f"worker-{i}"
            pod = await cluster.run_pod(namespace, name, ready=False, wait=False)
            iid = instance_id_for(name)
            entry = {"namespace": "dyn", "component": "c", "endpoint": "e", "instance_id": iid}
            await cluster.apply(
                f"{cluster.crs_path(namespace)}/{name}",
                {
                    "apiVersion": "nvidia.com/v1alpha1",
                    "kind": "DynamoWorkerMetadata",
                    "metadata": {
                        "name": name,
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod.uid}
                        ],
                    },
                    "spec": {"data": {"endpoints": {f"dyn/c/e/{iid:x}": entry}}},
                },
            )
            await cluster.set_pod_status(namespace, name, ready=True)
        written = time.monotonic() - started
        with anyio.fail_after(PROMPT * 2):
            await all_seen.wait()
        took = time.monotonic() - started
        tg.cancel_scope.cancel()
    changes = 2 * count  # resources, and slice updates (the controller batches some of them)
    # At most one recomputation per debounce window (plus the one after the last write).
    assert watcher.recomputations <= took / 0.2 + 2
    assert watcher.recomputations < changes / 4
    record_property("rollout", {"pods": count, "seconds": round(took, 2), "joins": watcher.recomputations})
    print(f"{count} pods in {written:.2f}s, seen after {took:.2f}s: {watcher.recomputations} recomputations")


async def test_watches_share_one_informer_and_release_it(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    hosts = [await workers.start(await workers.pod(f"worker-{i}")) for i in range(3)]
    registered = [
        await h.runtime.endpoint(f"dyn.c.e{j}").register(f"tcp://h:{i}{j}")
        for i, h in enumerate(hosts)
        for j in range(3)
    ]
    # Routers: five runtimes sharing one backend (they hold the router pod's one resource between them).
    shared = workers.backend(await workers.pod("router", app="router"))
    routers = [await RuntimeHost.start(DistributedRuntime(shared, lease_ttl=60)) for _ in range(5)]

    def namespace_wide() -> list[str]:
        return sorted(r.what for r in shared.reflectors if r.field_selector is None)

    queries = [InstanceQuery("dyn", "c", f"e{j}") for j in range(3)] + [everything(), InstanceQuery("dyn")]
    try:
        clients = [await r.runtime.endpoint(f"dyn.c.e{j}").client() for r in routers for j in range(3)]
        async with AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(shared.watch(q)) for q in queries]
            # 15 clients in 5 runtimes and 5 more watches: one list and one watch of each kind in all, and
            # one of the routers' own resource.
            assert namespace_wide() == [
                f"DynamoWorkerMetadata in {namespace}",
                f"EndpointSlices in {namespace}",
            ]
            assert [r.field_selector for r in shared.reflectors if r.field_selector] == [
                "metadata.name=router"
            ]
            for stream, query in zip(streams, queries, strict=True):
                first = await next_event(stream)
                assert isinstance(first, Resync)
                assert set(first.instances) == {i for i in registered if query.matches(i.endpoint_id)}
            for client in clients:
                await until(lambda c=client: len(c.instances()) == 3, PROMPT, "every client's view")
            joins = (await shared.informer()).joins
            assert joins <= 3, f"the namespace was joined {joins} times for 20 watches"
    finally:
        for router in routers:
            await router.stop()
    # Nothing uses the reflectors any more: their watches are closed, their state dropped.
    assert shared.reflectors == ()


async def test_container_mode_sees_each_ready_container(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    containers = ("main", "engine-1")
    uid = await cluster.create_pod(namespace, "multi", node=await cluster.node(), containers=containers)
    await cluster.set_pod_status(namespace, "multi", ready=True, containers=containers)
    hosts = [
        await workers.start(
            PodIdentity(name="multi", namespace=namespace, uid=uid, container=c), mode="container"
        )
        for c in containers
    ]
    main, engine = [await h.runtime.endpoint("dyn.c.e").register(f"tcp://h:{i}") for i, h in enumerate(hosts)]
    assert main.instance_id == instance_id_for("multi")  # "main" keeps the pod's identity
    assert engine.instance_id == instance_id_for("multi-engine-1")
    watcher = workers.backend(mode="container")
    async with watcher.watch(everything()) as events:
        assert await next_event(events) == Resync(
            instances=tuple(sorted([main, engine], key=lambda i: i.instance_id))
        )
        # One engine's readiness probe fails: only its instance leaves.
        await cluster.set_pod_status(
            namespace, "multi", ready=True, containers=containers, not_ready=["engine-1"]
        )
        assert await next_event(events) == removed(engine)
    assert await watcher.list(everything()) == [main]


async def test_malformed_metadata_is_skipped_with_a_warning(
    workers: Workers, cluster: Cluster, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad_pods = {"bad-0": {"endpoints": ["not", "a", "map"]}, "bad-1": {"endpoints": {"x": {"garbage": True}}}}
    for name, data in bad_pods.items():
        pod = await workers.pod(name)
        await cluster.apply(
            f"{cluster.crs_path(namespace)}/{name}",
            {
                "apiVersion": "nvidia.com/v1alpha1",
                "kind": "DynamoWorkerMetadata",
                "metadata": {
                    "name": name,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod.uid}],
                },
                "spec": {"data": data},
            },
        )
    host = await workers.start(await workers.pod("worker-0"), lease_ttl=60)
    watcher = workers.backend()
    with caplog.at_level(logging.WARNING, "dyndisc.kubernetes"):
        async with watcher.watch(everything()) as events:
            assert await next_event(events) == Resync(instances=())
            good = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
            assert await next_event(events) == Added(instance=good)
            # A good worker whose record turns bad is removed (as a list or a new watch would not show it),
            # and its worker, which follows its resource, repairs it at once.
            await cluster.call(
                "PATCH",
                f"{cluster.crs_path(namespace)}/worker-0",
                body={"spec": {"data": {"endpoints": "garbage"}}},
                content_type="application/merge-patch+json",
            )
            await until(lambda: "spec.data.endpoints is not an object" in caplog.text, PROMPT, "the warning")
            later = await host.runtime.endpoint("dyn.c.f").register("tcp://h:2")
            found: set[Instance] = {good}
            with anyio.fail_after(PROMPT):
                while found != {good, later}:
                    event = await anext(events)
                    if isinstance(event, Added):
                        found.add(event.instance)
                    elif isinstance(event, Removed):
                        found.discard(good)
    assert "'bad-0'" in caplog.text
    assert "skipping malformed entry 'x' of DynamoWorkerMetadata 'bad-1'" in caplog.text
    assert sorted(await watcher.list(everything()), key=str) == sorted([good, later], key=str)


async def test_hand_written_slices_without_uid_or_ready_condition(
    workers: Workers, cluster: Cluster, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Pods no Service selects, listed only by a slice written by hand (the controller never writes one
    # without uids or ready conditions, and leaves slices it does not manage alone).
    pods = {n: await workers.pod(n, app="unlisted", ready=True) for n in ("no-uid", "no-ready", "fine")}
    hosts = {n: await workers.start(p) for n, p in pods.items()}
    registered = {n: await h.runtime.endpoint("dyn.c.e").register("tcp://h:1") for n, h in hosts.items()}
    await cluster.set_slice(
        namespace,
        "by-hand",
        [
            SliceEndpoint("no-uid", ""),
            SliceEndpoint("no-ready", pods["no-ready"].uid, ready=None),
            SliceEndpoint("fine", pods["fine"].uid),
        ],
    )
    with caplog.at_level(logging.WARNING, "dyndisc.kubernetes"):
        watcher = workers.backend()
        async with watcher.watch(everything()) as events:
            assert await next_event(events) == Resync(instances=(registered["fine"],))
        assert await watcher.list(everything()) == [registered["fine"]]
    assert caplog.text.count("skipping pod 'no-uid' of EndpointSlice 'by-hand'") == 1


async def test_watch_relists_after_410_gone(
    workers: Workers,
    cluster: Cluster,
    namespace: str,
    dyndisc_tcp_proxy: TcpProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = cluster.server
    proxy = dyndisc_tcp_proxy(server.host, server.port)
    host = await workers.start(await workers.pod("worker-0"))
    first = await host.runtime.endpoint("dyn.c.a").register("tcp://h:1")
    watcher = workers.backend(kubeconfig=kubeconfig(server, server.admin_token, proxy.url_for("https")))
    with caplog.at_level(logging.INFO, "dyndisc.kubernetes"):
        async with watcher.watch(everything()) as events:
            assert await next_event(events) == Resync(instances=(first,))
            # Force the next resume to ask for history the server no longer has: a 410 Gone.
            for reflector in watcher.reflectors:
                reflector.resource_version = "1"
            proxy.cut()
            await host.runtime.endpoint("dyn.c.a").unregister()
            second = await host.runtime.endpoint("dyn.c.b").register("tcp://h:2")
            proxy.restore()
            assert await next_resync(events, timeout=PROMPT * 2) == Resync(instances=(second,))
    assert "410 Gone" in caplog.text
    assert "relisting" in caplog.text


async def test_a_watch_survives_an_api_server_restart(
    workers: Workers, cluster: Cluster, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = cluster.server
    host = await workers.start(await workers.pod("worker-0"), lease_ttl=60)
    a = await host.runtime.endpoint("dyn.c.a").register("tcp://h:1")
    watcher = workers.backend()
    async with watcher.watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(a,))
        started = time.monotonic()
        await anyio.to_thread.run_sync(server.restart)
        restarted_in = time.monotonic() - started
        b = await host.runtime.endpoint("dyn.c.b").register("tcp://h:2")
        with anyio.fail_after(PROMPT * 3):
            seen = {a.key}
            while b.key not in seen:
                event = await anext(events)
                if isinstance(event, Resync):
                    seen = {i.key for i in event.instances}
                elif isinstance(event, Added):
                    seen.add(event.instance.key)
        assert seen == {a.key, b.key}
    assert watcher.stale_since is None
    assert not host.done, "the worker kept running through the restart"
    # The controller-manager comes back too, on client-go's backoff (up to 30 s): wait for it, so that the
    # tests after this one find it at work.
    started = time.monotonic()
    await cluster.create_pod(namespace, "after-restart", node=await cluster.node())
    await cluster.set_pod_status(namespace, "after-restart", ready=True)
    await cluster.wait_listed(namespace, "after-restart", timeout=90)
    back = time.monotonic() - started
    print(f"api server restarted in {restarted_in:.1f}s; controllers back {back:.1f}s later")


async def test_list_and_watch_are_namespace_local(workers: Workers, cluster: Cluster, namespace: str) -> None:
    host = await workers.start(await workers.pod("worker-0"))
    await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    elsewhere = KubernetesDiscovery(namespace=await cluster.create_namespace(), kubeconfig=workers.config)
    workers.backends.append(elsewhere)
    assert await elsewhere.list(InstanceQuery()) == []
    async with elsewhere.watch(InstanceQuery()) as events:
        assert await next_event(events) == Resync(instances=())


async def test_a_silent_partitioned_watch_is_noticed_and_resumed(
    workers: Workers, cluster: Cluster, dyndisc_tcp_proxy: TcpProxyFactory
) -> None:
    server = cluster.server
    proxy = dyndisc_tcp_proxy(server.host, server.port)
    host = await workers.start(await workers.pod("worker-0"))
    a = await host.runtime.endpoint("dyn.c.a").register("tcp://h:1")
    config = kubeconfig(server, server.admin_token, proxy.url_for("https"))
    watcher = workers.backend(kubeconfig=config, watch_timeout=2.0)
    async with watcher.watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(a,))
        proxy.blackhole(discard=True)  # no reset, no bytes: only a read timeout can tell
        started = time.monotonic()
        b = await host.runtime.endpoint("dyn.c.b").register("tcp://h:2")  # the worker does not use the proxy
        await until(lambda: watcher.stale_since is not None, 15.0, "the watcher to notice the silence")
        noticed = time.monotonic() - started
        proxy.restore()
        # An attempt begun in the silence ends at its read timeout, then waits at most one retry delay.
        back_within = 2.0 + RETRY_MAX + PROMPT * 2
        assert await next_event(events, timeout=back_within) == Added(instance=b)
    await until(lambda: watcher.stale_since is None, 1.0, "stale to clear")
    print(f"silence noticed after {noticed:.1f}s (watch_timeout 2s)")
