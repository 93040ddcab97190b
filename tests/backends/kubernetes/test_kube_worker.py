"""The worker side against a real kube-apiserver: the DynamoWorkerMetadata it writes, and its lease."""

from __future__ import annotations

import dataclasses
import logging
import uuid

import anyio
import pytest
from kube_helpers import PROMPT, Workers, everything, next_event

from dyndisc import (
    Added,
    ConfigurationError,
    DistributedRuntime,
    LeaseChange,
    LeaseLostError,
    Readiness,
    RegistrationConflictError,
    Removed,
    Resync,
)
from dyndisc.backends.kubernetes import FIELD_MANAGER, KubernetesDiscovery
from dyndisc.backends.kubernetes.errors import KubeStatusError
from dyndisc.testing import CrashableBackend, RuntimeHost
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
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    earlier_pod = await workers.pod("worker-0")
    earlier = await workers.start(earlier_pod)
    await earlier.runtime.endpoint("dyn.backend.old").register("tcp://10.0.0.5:1")
    await earlier.crash()
    before = (await get_cr(cluster, namespace, "worker-0"))["metadata"]["uid"]
    # The pod is re-created under the same name (a StatefulSet does): a new uid.
    newer_pod = dataclasses.replace(earlier_pod, uid=str(uuid.uuid4()))
    again = await workers.start(newer_pod)
    obj = await get_cr(cluster, namespace, "worker-0")
    assert obj["metadata"]["uid"] != before, "the earlier pod's resource was deleted and a fresh one created"
    assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [newer_pod.uid]
    assert not obj["spec"]["data"].get("endpoints")
    assert await again.runtime.list() == []


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
    with pytest.raises(RegistrationConflictError, match=f"{a.runtime.instance_id:x}.*hash of its pod"):
        await b.runtime.backend.register(taken, b.runtime.lease)


async def test_a_deleted_resource_is_reapplied_with_the_same_id(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    changes: list[LeaseChange] = []
    host = await workers.start(await workers.pod("worker-0"), on_lease_change=changes.append)
    instance = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1", {"k": "v"})
    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(instance,))
        await cluster.call("DELETE", f"{cluster.crs_path(namespace)}/worker-0")
        assert await next_event(events) == Removed(
            endpoint=instance.endpoint_id, instance_id=instance.instance_id
        )
        # Lost within a keep-alive period (half the TTL), then re-applied under the reregister policy.
        assert await next_event(events, timeout=2.0 + PROMPT) == Added(instance=instance)
    assert changes == [LeaseChange(instance.instance_id, instance.instance_id, changes[0].reason)]
    assert "deleted behind this worker's back" in changes[0].reason


async def test_shutdown_policy_ends_the_worker_when_its_resource_is_deleted(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    host = await workers.start(await workers.pod("worker-0"), lease_loss_policy="shutdown")
    await cluster.call("DELETE", f"{cluster.crs_path(namespace)}/worker-0")
    with anyio.fail_after(2.0 + PROMPT), pytest.raises(LeaseLostError, match="deleted behind"):
        await host.wait()


async def test_keep_alive_repairs_content_changed_by_someone_else(
    workers: Workers, cluster: Cluster, namespace: str
) -> None:
    host = await workers.start(await workers.pod("worker-0"))
    instance = await host.runtime.endpoint("dyn.c.e").register("tcp://h:1")
    async with workers.backend().watch(everything()) as events:
        assert await next_event(events) == Resync(instances=(instance,))
        await cluster.call(
            "PATCH",
            f"{cluster.crs_path(namespace)}/worker-0",
            body={"spec": {"data": {"endpoints": None}}},
            content_type="application/merge-patch+json",
        )
        assert await next_event(events) == Removed(
            endpoint=instance.endpoint_id, instance_id=instance.instance_id
        )
        # The next keep-alive (within half the TTL) notices and re-applies what the worker registered.
        assert await next_event(events, timeout=2.0 + PROMPT) == Added(instance=instance)


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
