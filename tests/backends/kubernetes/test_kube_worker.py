"""The worker side against a real kube-apiserver (with the real controllers): the DynamoWorkerMetadata it
writes, its lease, which it follows through the informer, and a second writer of its resource."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import anyio
import pytest
from kube_helpers import PROMPT, Workers, everything, next_event, settle, until

from dyndisc import (
    Added,
    ConfigurationError,
    DistributedRuntime,
    LeaseChange,
    LeaseLostError,
    Readiness,
    RegistrationConflictError,
    Resync,
)
from dyndisc.backends.kubernetes import FIELD_MANAGER, KubernetesDiscovery
from dyndisc.backends.kubernetes.errors import KubeStatusError
from dyndisc.testing import CrashableBackend, RuntimeHost
from dyndisc.testing.servers import KubeApiServer
from harnesses.kubernetes import Cluster


async def get_cr(cluster: Cluster, namespace: str, name: str) -> dict:  # type: ignore[type-arg]
    return await cluster.call("GET", f"{cluster.crs_path(namespace)}/{name}")


async def test_one_resource_per_worker_owned_by_its_pod(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    pod = await workers.pod("worker-0")
    host = await workers.start(pod)
    runtime = host.runtime
    assert runtime.instance_id == 0x43710F49C0CFF  # the pod-name hash, as the reference runtime computes it
    gen = await runtime.endpoint("dyn.backend.generate").register("tcp://10.0.0.5:9000", {"model": "m"})
    await runtime.endpoint("dyn.backend.health").register("tcp://10.0.0.5:9001")

    obj = await get_cr(cluster, namespace, "worker-0")
    assert obj["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "worker-0",
            "uid": pod.uid,
            "controller": False,
            "blockOwnerDeletion": False,
        }
    ]
    endpoints = obj["spec"]["data"]["endpoints"]
    assert sorted(endpoints) == ["dyn/backend/generate/43710f49c0cff", "dyn/backend/health/43710f49c0cff"]
    assert endpoints["dyn/backend/generate/43710f49c0cff"] == {
        "type": "Endpoint",
        "namespace": "dyn",
        "component": "backend",
        "endpoint": "generate",
        "instance_id": gen.instance_id,
        "transport": {"tcp": "10.0.0.5:9000"},
        "metadata": {"model": "m"},
        "registered_at": round(gen.registered_at or 0, 3),  # dyndisc's own field: the reference ignores it
    }
    managers = {(m["manager"], m["operation"]) for m in obj["metadata"]["managedFields"]}
    assert managers == {(FIELD_MANAGER, "Apply")}, "written by server-side apply only"

    # Unregistering drops the entry (server-side apply removes fields its manager no longer sets).
    await runtime.endpoint("dyn.backend.health").unregister()
    obj = await get_cr(cluster, namespace, "worker-0")
    assert sorted(obj["spec"]["data"]["endpoints"]) == ["dyn/backend/generate/43710f49c0cff"]

    # A clean exit deletes the resource at once.
    await host.stop()
    with pytest.raises(KubeStatusError) as caught:
        await get_cr(cluster, namespace, "worker-0")
    assert caught.value.status == 404


async def test_the_resource_of_the_same_pod_is_kept_and_its_stale_endpoints_dropped_at_start(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    pod = await workers.pod("worker-0")
    earlier = workers.backend(pod)  # an earlier run in this pod, which crashed without cleaning up
    host = await RuntimeHost.start(DistributedRuntime(CrashableBackend(earlier), lease_ttl=2.0))
    await host.runtime.endpoint("dyn.backend.old").register("tcp://10.0.0.5:1")
    await host.crash()
    assert (
        "dyn/backend/old/43710f49c0cff"
        in (await get_cr(cluster, namespace, "worker-0"))["spec"]["data"]["endpoints"]
    )
    before = (await get_cr(cluster, namespace, "worker-0"))["metadata"]["uid"]

    again = await workers.start(pod)
    obj = await get_cr(cluster, namespace, "worker-0")
    assert obj["metadata"]["uid"] == before, "the pod's own resource is kept: watchers never see it leave"
    assert not obj["spec"]["data"].get("endpoints"), "what the earlier run registered is gone"
    assert await again.runtime.list() == []


async def test_a_resource_left_by_an_earlier_pod_of_the_same_name_is_replaced(
    dyndisc_kube_apiserver: KubeApiServer,
) -> None:
    # On an API server without the garbage collector: the earlier pod's resource outlives the pod, as it
    # does until a busy collector gets to it. (With the collector running, the earlier resource, or the
    # new one owned by a made-up pod uid, may be collected first: this test was flaky that way.)
    async with Cluster.open(dyndisc_kube_apiserver) as cluster:
        namespace = await cluster.create_namespace()
        workers = Workers(cluster, namespace)
        try:
            earlier = await workers.start(await cluster.ready_pod(namespace, "worker-0"))
            await earlier.runtime.endpoint("dyn.backend.old").register("tcp://10.0.0.5:1")
            await earlier.crash()
            before = (await get_cr(cluster, namespace, "worker-0"))["metadata"]["uid"]
            # The pod is re-created under the same name (a StatefulSet does): a new uid.
            await cluster.delete_pod(namespace, "worker-0")
            newer_pod = await cluster.ready_pod(namespace, "worker-0")
            again = await workers.start(newer_pod)
            obj = await get_cr(cluster, namespace, "worker-0")
            assert obj["metadata"]["uid"] != before, "the earlier pod's resource was replaced by a fresh one"
            assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [newer_pod.uid]
            assert not obj["spec"]["data"].get("endpoints")
            assert await again.runtime.list() == []
        finally:
            await workers.close()


async def test_a_resource_of_that_name_owned_by_something_else_is_a_clear_error(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    pod = await workers.pod("worker-0")
    await cluster.apply(
        f"{cluster.crs_path(namespace)}/worker-0",
        {
            "apiVersion": "nvidia.com/v1alpha1",
            "kind": "DynamoWorkerMetadata",
            "metadata": {"name": "worker-0", "namespace": namespace},
            "spec": {"data": {}},
        },
    )
    with pytest.raises(RegistrationConflictError, match=f"kubectl delete dwm -n {namespace} worker-0"):
        await workers.start(pod)


async def test_registering_another_pods_instance_is_refused(workers: Workers) -> None:
    a = await workers.start(await workers.pod("worker-a"))
    b = await workers.start(await workers.pod("worker-b"))
    taken = await a.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    with pytest.raises(RegistrationConflictError, match=f"{a.runtime.instance_id:x}.*hash of its worker"):
        await b.runtime.backend.register(taken, b.runtime.lease)


async def test_a_deleted_resource_is_reapplied_at_once_with_the_same_id(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    changes: list[LeaseChange] = []
    # A keep-alive period of 30 s: only the informer's event can bring the worker back within a second.
    host = await workers.start(await workers.pod("worker-0"), on_lease_change=changes.append, lease_ttl=60)
    instance = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1", {"k": "v"})
    before = (await get_cr(cluster, namespace, "worker-0"))["metadata"]["uid"]
    started = time.monotonic()
    await cluster.call("DELETE", f"{cluster.crs_path(namespace)}/worker-0")
    await until(lambda: bool(changes), PROMPT, "the worker to notice and re-apply")
    took = time.monotonic() - started
    obj = await get_cr(cluster, namespace, "worker-0")
    assert obj["metadata"]["uid"] != before, "a new resource"
    assert list(obj["spec"]["data"]["endpoints"]) == ["dyn/c/e/43710f49c0cff"]
    assert changes == [LeaseChange(instance.instance_id, instance.instance_id, changes[0].reason)]
    assert "deleted behind this worker's back" in changes[0].reason
    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(instance,))
    print(f"re-applied {took:.3f}s after the deletion (keep-alive period 30s)")


async def test_a_resource_deleted_while_a_registration_is_in_flight_is_a_lost_lease_all_the_same(
    workers: Workers, cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by chaos seed 2 on Kubernetes: another client deleted the worker's resource (a revoke) while a
    # registration was in flight; the registration's server-side apply created the resource anew, so the
    # keep-alive found it there and the lease was never taken for lost (no replacement, no on_lease_change,
    # no shutdown under that policy), while every watcher had seen the worker leave.
    changes: list[LeaseChange] = []
    host = await workers.start(await workers.pod("worker-0"), on_lease_change=changes.append, lease_ttl=60)
    await host.runtime.endpoint("dyn.c.a").register("tcp://h:1")
    backend = host.runtime.backend
    assert isinstance(backend, CrashableBackend)
    resource = backend.inner._resource  # type: ignore[attr-defined]
    checked = anyio.Event()
    real_check = resource.check

    async def check_after_the_registration(holder: int) -> None:
        await checked.wait()  # the keep-alive looks only once the registration has written
        await real_check(holder)

    monkeypatch.setattr(resource, "check", check_after_the_registration)
    before = (await get_cr(cluster, namespace, "worker-0"))["metadata"]["uid"]
    await cluster.call("DELETE", f"{cluster.crs_path(namespace)}/worker-0")
    await host.runtime.endpoint("dyn.c.b").register("tcp://h:2")  # its apply creates the resource again
    assert (await get_cr(cluster, namespace, "worker-0"))["metadata"]["uid"] != before
    checked.set()
    await until(lambda: bool(changes), PROMPT, "the worker to take its lease for lost")
    assert "deleted behind" in changes[0].reason
    listed = await host.runtime.list()
    assert sorted(i.endpoint for i in listed) == ["a", "b"], "both registered again under the replacement"


class _Warnings(logging.Handler):
    """The warnings a logger gave, kept as text."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_unregistering_after_an_update_cancelled_in_flight_removes_the_endpoint(
    workers: Workers,
    cluster: Cluster,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by chaos seed 2010 on Kubernetes: an update (register again, new metadata) was cancelled while its
    # apply was in flight. The resource went back to the earlier record, while the runtime kept the update's
    # record as maybe written, and unregistered that one: the resource found no holder with that exact record,
    # wrote nothing, and kept the endpoint (every later apply of the resource wrote it again).
    host = await workers.start(await workers.pod("worker-0"), lease_ttl=60)
    endpoint = host.runtime.endpoint("dyn.c.e")
    await endpoint.register("tcp://h:1", {"v": 1})
    resource = workers.resource(host)
    real_call = resource._call
    in_flight = anyio.Event()

    async def answer_no_apply(method: str, path: str, what: str, **kwargs: object) -> object:
        if method != "PATCH":
            return await real_call(method, path, what, **kwargs)
        await real_call(method, path, what, **kwargs)  # it lands; its answer never comes
        in_flight.set()
        await anyio.sleep_forever()

    # The follower in step with the first write, and lagging behind the update for good (as a busy one
    # does for a moment): what the worker knew, and its follower's copy of it, no longer say what the server
    # holds once an apply was cut short (a check that trusted them let the update's content stand).
    await until(lambda: resource.synced, PROMPT, "the follower to catch up with the first write")
    assert resource.follower is not None
    lagging = SimpleNamespace(live=True, items=dict(resource.follower.items))
    monkeypatch.setattr(resource, "follower", lagging)
    monkeypatch.setattr(resource, "_call", answer_no_apply)
    warned = _Warnings()
    logging.getLogger("dyndisc.kubernetes").addHandler(warned)
    monkeypatch.setattr(logging.getLogger("dyndisc.kubernetes"), "level", logging.WARNING)
    with anyio.move_on_after(PROMPT) as scope:
        async with anyio.create_task_group() as tg:

            async def cancel_once_in_flight() -> None:
                await in_flight.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_once_in_flight)
            await endpoint.register("tcp://h:1", {"v": 2})
    assert not scope.cancelled_caught, "the update's apply was never sent"
    assert in_flight.is_set()
    monkeypatch.setattr(resource, "_call", real_call)
    # The resource differs from what the worker holds: its next check (or its keep-alive, woken by the
    # reflector's news of the change) reads it from the server, re-applies it, and blames nobody else.
    await resource.check(next(iter(resource._holders)))
    logging.getLogger("dyndisc.kubernetes").removeHandler(warned)
    assert any("(by a write of this worker's own cut short); re-applying it" in w for w in warned.lines)
    assert not any("someone else" in w for w in warned.lines)

    await endpoint.unregister()
    assert not (await get_cr(cluster, namespace, "worker-0"))["spec"]["data"].get("endpoints")
    await host.runtime.endpoint("dyn.c.other").register("tcp://h:2")  # a later apply does not bring it back
    endpoints = (await get_cr(cluster, namespace, "worker-0"))["spec"]["data"]["endpoints"]
    assert sorted(endpoints) == ["dyn/c/other/43710f49c0cff"]


async def test_an_entry_put_again_unbound_leaves_no_bound_copy_and_back(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    # Found by chaos seed 2 on Kubernetes: an entry put bound, then again with lease=False, kept its bound
    # copy in the worker's resource, which shadowed the new value for every dyndisc reader.
    host = await workers.start(await workers.pod("worker-0"))
    bucket = host.runtime.bucket("v1/custom")
    await bucket.put("k", {"v": 1})
    await bucket.put("k", {"v": 2}, lease=False)
    found = await bucket.get("k")
    assert found is not None
    assert found.value == {"v": 2}
    assert not (await get_cr(cluster, namespace, "worker-0"))["spec"]["data"].get("dyndisc_entries")
    await bucket.put("k", {"v": 3})  # and bound again: the unbound copy goes
    found = await bucket.get("k")
    assert found is not None
    assert found.value == {"v": 3}
    await host.stop()
    async with workers.backend(await workers.pod("reader")) as reader:
        assert await reader.list_entries("v1/custom") == [], "nothing stale comes back with the lease gone"


async def test_shutdown_policy_ends_the_worker_when_its_resource_is_deleted(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    host = await workers.start(await workers.pod("worker-0"), lease_loss_policy="shutdown", lease_ttl=60)
    await cluster.call("DELETE", f"{cluster.crs_path(namespace)}/worker-0")
    with anyio.fail_after(PROMPT), pytest.raises(LeaseLostError, match="deleted behind"):
        await host.wait()


async def test_content_changed_by_someone_else_is_repaired_at_once(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    host = await workers.start(await workers.pod("worker-0"), lease_ttl=60)
    instance = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(instance,))
        await cluster.call(
            "PATCH",
            f"{cluster.crs_path(namespace)}/worker-0",
            body={"spec": {"data": {"endpoints": None}}},
            content_type="application/merge-patch+json",
        )
        # The worker hears of it through its informer and re-applies what it registered (no 30 s wait).
        with anyio.fail_after(PROMPT):
            while True:
                obj = await get_cr(cluster, namespace, "worker-0")
                if obj["spec"]["data"].get("endpoints"):
                    break
                await anyio.sleep(0.05)
        # Seen gone for a moment, or not at all (within the watcher's debounce): the view ends right.
        assert await settle(events, {instance}) == {instance}
    # A label someone adds is not worth a write: the worker keeps the resource as it is. The count is read
    # before the patch: the worker may look at the change before the PATCH call has returned here.
    resource = workers.resource(host)
    checks = resource.checks
    await cluster.call(
        "PATCH",
        f"{cluster.crs_path(namespace)}/worker-0",
        body={"metadata": {"labels": {"team": "a"}}},
        content_type="application/merge-patch+json",
    )
    await until(lambda: resource.checks > checks, PROMPT, "a keep-alive to look at it")
    obj = await get_cr(cluster, namespace, "worker-0")
    assert obj["metadata"]["labels"] == {"team": "a"}


async def test_keep_alives_send_no_request_while_nothing_changes(workers: Workers) -> None:
    host = await workers.start(await workers.pod("worker-0"), lease_ttl=0.2)  # a renewal every 0.1 s
    await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    api = await workers.backends[-1].api()
    resource = workers.resource(host)
    await until(lambda: resource.synced, PROMPT, "the informer to see the worker's own write")
    requests, checks = api.requests, resource.checks
    await anyio.sleep(2.0)
    renewed = resource.checks - checks
    assert renewed >= 10, renewed
    assert api.requests == requests, f"{api.requests - requests} requests for {renewed} keep-alives"
    assert host.runtime.health().state == "held"


async def test_a_second_writer_of_the_resource_is_reported_not_fought(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    pod = await workers.pod("worker-0")
    first = await workers.start(pod, lease_ttl=60)
    await first.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    first_writer = workers.resource(first).writer
    # A second process with the same pod identity (a second worker container in pod mode, or a copy of
    # the pod): it takes the resource over, saying so ...
    second = await workers.start(pod, lease_ttl=60)
    second_writer = workers.resource(second).writer
    assert f"taking over DynamoWorkerMetadata {pod.namespace}/worker-0 from the writer '{first_writer}'" in (
        caplog.text
    )
    mine = await second.runtime.endpoint("dyn.c.f").register("tcp://h:2")
    # ... and the first finds its write replaced and stops, naming both, instead of overwriting it back.
    with anyio.fail_after(PROMPT), pytest.raises(RegistrationConflictError) as stopped:
        await first.wait()
    message = str(stopped.value)
    assert first_writer in message
    assert second_writer in message
    assert "DYN_KUBE_DISCOVERY_MODE=container" in message
    await anyio.sleep(0.5)
    assert await second.runtime.list() == [mine]
    assert not second.done


async def test_runtimes_sharing_a_backend_share_its_resource(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    backend = workers.backend(await workers.pod("worker-0"))
    a = await RuntimeHost.start(DistributedRuntime(backend, lease_ttl=60))
    b = await RuntimeHost.start(DistributedRuntime(backend, lease_ttl=60))
    try:
        await a.runtime.endpoint("dyn.c.a").register("tcp://h:1")
        kept = await b.runtime.endpoint("dyn.c.b").register("tcp://h:2")
        endpoints = (await get_cr(cluster, namespace, "worker-0"))["spec"]["data"]["endpoints"]
        assert sorted(endpoints) == ["dyn/c/a/43710f49c0cff", "dyn/c/b/43710f49c0cff"]
        # One leaves: its endpoints go, the other's stay.
        await a.stop()
        endpoints = (await get_cr(cluster, namespace, "worker-0"))["spec"]["data"]["endpoints"]
        assert sorted(endpoints) == ["dyn/c/b/43710f49c0cff"]
        assert await b.runtime.list() == [kept]
    finally:
        await b.stop()
    # The last one leaves: the resource goes.
    with pytest.raises(KubeStatusError) as caught:
        await get_cr(cluster, namespace, "worker-0")
    assert caught.value.status == 404


async def test_missing_pod_uid_is_a_clear_error_at_start(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "worker-0")
    monkeypatch.setenv("POD_NAMESPACE", workers.namespace)
    monkeypatch.delenv("POD_UID", raising=False)
    backend = workers.backend()
    with pytest.raises(ConfigurationError, match=r"POD_UID is not set for pod 'worker-0'"):
        async with DistributedRuntime(backend):
            pass


async def test_from_env_reads_kubeconfig_and_pod(
    workers: Workers, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = await workers.pod("worker-0")
    monkeypatch.setenv("KUBECONFIG", str(cluster.server.kubeconfig_path))
    monkeypatch.setenv("POD_NAME", pod.name)
    monkeypatch.setenv("POD_NAMESPACE", pod.namespace)
    monkeypatch.setenv("POD_UID", pod.uid)
    async with DistributedRuntime("kubernetes", lease_ttl=2) as runtime:
        assert isinstance(runtime.backend, KubernetesDiscovery)
        registered = await runtime.endpoint("dyn.c.e").register("tcp://h:1")
        assert await runtime.list() == [registered]


async def test_records_dynamo_must_not_route_to_are_kept_where_only_dyndisc_reads(
    workers: Workers, cluster: Cluster, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    host = await workers.start(await workers.pod("worker-0"))
    runtime = host.runtime
    watcher = workers.backend()
    async with watcher.watch(everything()) as events:
        assert await next_event(events) == Resync(instances=())
        with caplog.at_level(logging.WARNING, "dyndisc.kubernetes"):
            web = await runtime.endpoint("dyn.backend.web").register("http://10.0.0.5:80")
        assert "not visible to Dynamo" in caplog.text
        assert "'http'" in caplog.text
        routed = await runtime.endpoint("dyn.backend.gen").register(
            "tcp://10.0.0.5:9000", device_type="cuda", request_plane_codec="msgpack"
        )
        drained = await runtime.endpoint("dyn.backend.drain").register(
            "tcp://h:1", readiness=Readiness.DRAINING
        )
        data = (await get_cr(cluster, namespace, "worker-0"))["spec"]["data"]
        assert list(data["endpoints"]) == ["dyn/backend/gen/43710f49c0cff"], (
            "only what Dynamo reads and routes to"
        )
        assert data["endpoints"]["dyn/backend/gen/43710f49c0cff"]["device_type"] == "cuda"
        assert sorted(data["dyndisc_endpoints"]) == [
            "dyn/backend/drain/43710f49c0cff",
            "dyn/backend/web/43710f49c0cff",
        ]
        seen: dict[str, object] = {}
        with anyio.fail_after(PROMPT):
            while len(seen) < 3:
                event = await next_event(events)
                if isinstance(event, Added):
                    seen[event.instance.endpoint] = event.instance
        assert seen == {"web": web, "gen": routed, "drain": drained}, "dyndisc reads them all, as written"
