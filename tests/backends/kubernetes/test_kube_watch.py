"""The watcher side against a real kube-apiserver: readiness from EndpointSlices joined with the metadata.

There is no kubelet or EndpointSlice controller: the tests create Pod objects and write the EndpointSlices
the controller would (discovery labels, endpoints with a ``targetRef`` to the pod and ready conditions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import anyio
import pytest
from kube_helpers import PROMPT, Workers, everything, next_event, next_resync, until

from dyndisc import Added, DiscoveryEvent, Instance, InstanceQuery, Readiness, Removed, Resync
from dyndisc.backends.kubernetes import KubernetesDiscovery
from dyndisc.backends.kubernetes.siphash import instance_id_for
from dyndisc.testing.server_fixtures import TcpProxyFactory
from harnesses.kubernetes import Cluster, SliceEndpoint, kubeconfig


def removed(instance: Instance) -> Removed:
    return Removed(endpoint=instance.endpoint_id, instance_id=instance.instance_id)


async def test_readiness_flips_and_draining(workers: Workers, cluster: Cluster, namespace: str) -> None:
    pod = await workers.pod("worker-0")
    host = await workers.start(pod)
    instance = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    draining = instance.replace(readiness=Readiness.DRAINING)

    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(instance,))
        await cluster.set_slice(
            namespace, "worker-0-slice", [SliceEndpoint("worker-0", pod.uid, ready=False)]
        )
        assert await next_event(events) == removed(instance)
        await cluster.set_slice(namespace, "worker-0-slice", [SliceEndpoint("worker-0", pod.uid, ready=True)])
        assert await next_event(events) == Added(instance=instance)
        # Terminating but still passing its readiness probe: listed as draining, not dropped.
        await cluster.set_slice(
            namespace,
            "worker-0-slice",
            [SliceEndpoint("worker-0", pod.uid, ready=False, serving=True, terminating=True)],
        )
        assert await next_event(events) == Added(instance=draining)
        client = await host.runtime.endpoint("dyn.c.e").client()
        assert client.instances() == []
        assert client.instances(include_draining=True) == [draining]
        await cluster.set_slice(
            namespace,
            "worker-0-slice",
            [SliceEndpoint("worker-0", pod.uid, ready=False, serving=False, terminating=True)],
        )
        assert await next_event(events) == removed(instance)


async def test_a_pod_listed_in_several_slices_counts_once(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    pod = await workers.pod("worker-0", ready=False)
    host = await workers.start(pod)
    a = await host.runtime.endpoint("dyn.c.a").register("tcp://h:1")
    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=())
        await cluster.set_slice(namespace, "one", [SliceEndpoint("worker-0", pod.uid, ready=True)])
        await cluster.set_slice(namespace, "two", [SliceEndpoint("worker-0", pod.uid, ready=True)])
        assert await next_event(events) == Added(instance=a)
        # Not ready in one slice, ready in the other: still live. The next event is the new endpoint's,
        # which proves no Removed came in between.
        await cluster.set_slice(namespace, "one", [SliceEndpoint("worker-0", pod.uid, ready=False)])
        b = await host.runtime.endpoint("dyn.c.b").register("tcp://h:2")
        assert await next_event(events) == Added(instance=b)
        await cluster.delete_slice(namespace, "two")
        assert {await next_event(events), await next_event(events)} == {removed(a), removed(b)}


async def test_a_deleted_pod_leaves(workers: Workers, cluster: Cluster, namespace: str) -> None:
    pods = [await workers.pod(f"worker-{i}") for i in range(2)]
    hosts = [await workers.start(p) for p in pods]
    gone, stays = [await h.runtime.endpoint("dyn.c.e").register(f"tcp://h:{i}") for i, h in enumerate(hosts)]
    watcher = workers.backend()
    async with watcher.watch(everything()) as events:
        assert await next_event(events) == Resync(
            instances=tuple(sorted([gone, stays], key=lambda i: i.instance_id))
        )
        # What the controllers do when a pod is deleted: the pod goes, and its slice entry with it. (The
        # custom resource would be garbage-collected through its ownerReference; no GC controller runs here.)
        await cluster.delete_pod(namespace, "worker-0")
        await cluster.delete_slice(namespace, "worker-0-slice")
        assert await next_event(events) == removed(gone)
    assert await watcher.list(everything()) == [stays]


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
    host = await workers.start(await workers.pod("worker-0"))
    watcher = workers.backend()
    with caplog.at_level(logging.WARNING, "dyndisc.kubernetes"):
        async with watcher.watch(everything()) as events:
            assert await next_event(events) == Resync(instances=())
            good = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
            assert await next_event(events) == Added(instance=good)
            # A good worker whose record turns bad is removed (as a list or a new watch would not show it).
            await cluster.call(
                "PATCH",
                f"{cluster.crs_path(namespace)}/worker-0",
                body={"spec": {"data": {"endpoints": "garbage"}}},
                content_type="application/merge-patch+json",
            )
            assert await next_event(events) == Removed(
                endpoint=good.endpoint_id, instance_id=good.instance_id
            )
            assert await watcher.list(everything()) == []
            later = await host.runtime.endpoint("dyn.c.f").register("tcp://h:2")  # re-applies: valid again
            assert {await next_event(events), await next_event(events)} == {
                Added(instance=good),
                Added(instance=later),
            }
    assert "spec.data.endpoints is not an object" in caplog.text
    assert "'bad-0'" in caplog.text
    assert "skipping malformed entry 'x' of DynamoWorkerMetadata 'bad-1'" in caplog.text
    assert sorted(await watcher.list(everything()), key=str) == sorted([good, later], key=str)


async def test_watch_relists_after_410_gone(
    workers: Workers,
    cluster: Cluster,
    namespace: str,
    tcp_proxy: TcpProxyFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = cluster.server
    proxy = tcp_proxy(server.host, server.port)
    host = await workers.start(await workers.pod("worker-0"))
    first = await host.runtime.endpoint("dyn.c.a").register("tcp://h:1")
    watcher = workers.backend(kubeconfig=kubeconfig(server, server.admin_token, proxy.url_for("https")))
    with caplog.at_level(logging.INFO, "dyndisc.kubernetes"):
        async with watcher.watch(everything()) as events:
            assert await next_event(events) == Resync(instances=(first,))
            # Force the next resume to ask for history the server no longer has: a 410 Gone.
            for reflector in watcher._reflectors:
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
    print(f"api server restarted in {restarted_in:.1f}s")


async def test_a_burst_of_changes_is_coalesced(workers: Workers, cluster: Cluster, namespace: str) -> None:
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
        uids = []
        for i in range(count):  # a rollout: 50 workers write their metadata ...
            name = f"worker-{i}"
            uids.append(await cluster.create_pod(namespace, name))
            iid = instance_id_for(name)
            entry = {"namespace": "dyn", "component": "c", "endpoint": "e", "instance_id": iid}
            await cluster.apply(
                f"{cluster.crs_path(namespace)}/{name}",
                {
                    "apiVersion": "nvidia.com/v1alpha1",
                    "kind": "DynamoWorkerMetadata",
                    "metadata": {"name": name},
                    "spec": {"data": {"endpoints": {f"dyn/c/e/{iid:x}": entry}}},
                },
            )
            # ... and become ready, a few at a time, in one slice.
            if (i + 1) % 10 == 0:
                ready = [SliceEndpoint(f"worker-{j}", uids[j]) for j in range(i + 1)]
                await cluster.set_slice(namespace, "rollout", ready)
        written = time.monotonic() - started
        with anyio.fail_after(PROMPT):
            await all_seen.wait()
        tg.cancel_scope.cancel()
    changes = 2 * count + 5  # pods are not watched; resources and slice updates are
    # At most one recomputation per debounce window (plus the one after the last write).
    assert watcher.recomputations <= written / 0.2 + 2
    assert watcher.recomputations < changes / 4
    print(f"{changes} writes in {written:.2f}s -> {watcher.recomputations} recomputations")


async def test_list_and_watch_are_namespace_local(workers: Workers, cluster: Cluster, namespace: str) -> None:
    host = await workers.start(await workers.pod("worker-0"))
    await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    elsewhere = KubernetesDiscovery(namespace=await cluster.create_namespace(), kubeconfig=workers.config)
    workers.backends.append(elsewhere)
    assert await elsewhere.list(InstanceQuery()) == []
    async with elsewhere.watch(InstanceQuery()) as events:
        assert await next_event(events) == Resync(instances=())


async def test_a_silent_partitioned_watch_is_noticed_and_resumed(
    workers: Workers, cluster: Cluster, tcp_proxy: TcpProxyFactory
) -> None:
    server = cluster.server
    proxy = tcp_proxy(server.host, server.port)
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
        assert await next_event(events, timeout=PROMPT * 2) == Added(instance=b)
    await until(lambda: watcher.stale_since is None or not watcher._reflectors, 1.0, "stale to clear")
    print(f"silence noticed after {noticed:.1f}s (watch_timeout 2s)")
