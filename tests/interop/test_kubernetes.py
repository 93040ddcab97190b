"""dyndisc and the reference runtime (Dynamo 1.6.1) on one Kubernetes API server (the test kube-apiserver, no
kubelet: the test marks pods ready or not in their EndpointSlices, as the EndpointSlice controller would).

Both write a ``DynamoWorkerMetadata`` named after their pod; each side sees the other's endpoints with the
same instance id (the hash of the pod's name), transport and optional fields, and the reference's model
card; a draining dyndisc worker leaves Dynamo's routing. There is no TTL on Kubernetes: a crashed worker
leaves when its pod stops being ready.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from refkit import (
    TIMINGS,
    Reference,
    dyndisc_argv,
    dyndisc_env,
    first_entries,
    ref_argv,
    reference_env,
    spawn,
)

from dyndisc import (
    Added,
    DiscoveryEvent,
    EndpointId,
    InstanceQuery,
    ModelCard,
    Readiness,
    Removed,
    Resync,
)
from dyndisc.backends.kubernetes import KubernetesDiscovery, PodIdentity
from dyndisc.backends.kubernetes.siphash import instance_id_for
from dyndisc.testing.servers import KubeApiServer
from harnesses.kubernetes import Cluster, SliceEndpoint

#: A reference process starts in about a second; a loaded CI machine gets more.
START = 60.0
#: The reference's discovery daemon recomputes 500 ms after a change; dyndisc's here after 50 ms.
PROMPT = 5.0


async def next_event(events: AsyncIterator[DiscoveryEvent], timeout: float) -> DiscoveryEvent:
    with anyio.fail_after(timeout):
        return await anext(events)


def pod_env(server: KubeApiServer, pod: PodIdentity) -> dict[str, str]:
    return {
        "KUBECONFIG": str(server.kubeconfig_path),
        "POD_NAME": pod.name,
        "POD_NAMESPACE": pod.namespace,
        "POD_UID": pod.uid,
        "CUDA_VISIBLE_DEVICES": "",  # the reference then says "cpu"
    }


async def not_ready(cluster: Cluster, pod: PodIdentity) -> float:
    """What kubelet and the EndpointSlice controller do when a pod's container dies: it is not ready."""
    await cluster.set_slice(
        pod.namespace, f"{pod.name}-slice", [SliceEndpoint(pod.name, pod.uid, ready=False)]
    )
    return time.time()


async def test_reference_and_dyndisc_workers_see_each_other_on_kubernetes(
    reference: Reference, dyndisc_kube_apiserver: KubeApiServer, tmp_path: Path
) -> None:
    async with Cluster.open(dyndisc_kube_apiserver) as cluster:
        namespace = await cluster.create_namespace("interop")
        ns = f"k{uuid.uuid4().hex[:6]}"
        path = f"{ns}.comp.ep"
        endpoint = EndpointId.parse(path)
        ref_pod, dd_pod = (
            await cluster.ready_pod(namespace, "ref-0"),
            await cluster.ready_pod(namespace, "dd-0"),
        )
        client_pod = PodIdentity("client-0", namespace, await cluster.create_pod(namespace, "client-0"))
        backend = KubernetesDiscovery(
            namespace=namespace, kubeconfig=str(dyndisc_kube_apiserver.kubeconfig_path), debounce=0.05
        )
        ref_worker = ref_argv(
            reference, "ref_worker.py", "--backend", "kubernetes", "--endpoint", path,
            "--model-name", f"{ns}-model", "--minimal-card",
        )  # fmt: skip
        ref_client = ref_argv(reference, "ref_client.py", "--backend", "kubernetes", "--endpoint", path)
        dd_worker = dyndisc_argv(
            "--endpoint", path, "--tcp", "127.0.0.1:9", "--device-type", "cpu", "--codec", "json"
        )
        dd_env = dyndisc_env(
            {"DYN_DISCOVERY_BACKEND": "kubernetes", **pod_env(dyndisc_kube_apiserver, dd_pod)}
        )
        worker_env = reference_env(pod_env(dyndisc_kube_apiserver, ref_pod), tmp_path)
        client_env = reference_env(pod_env(dyndisc_kube_apiserver, client_pod), tmp_path)
        async with (
            backend,
            backend.watch(InstanceQuery.parse(path)) as events,
            backend.watch_entries("v1/mdc", f"{ns}/") as card_events,
        ):
            assert await next_event(events, PROMPT) == Resync(instances=())
            async with (
                spawn("ref-worker", ref_worker, worker_env, tmp_path) as worker,
                spawn("ref-client", ref_client, client_env, tmp_path) as client,
                spawn("dd-worker", dd_worker, dd_env, tmp_path) as dd,
            ):  # fmt: skip
                # The reference worker, seen by dyndisc: the pod-name id, its transport, its fields, its card.
                started = await worker.lines.wait_for("started", timeout=START)
                theirs = started["connection_id"]
                assert theirs == instance_id_for("ref-0")
                found = {}
                with anyio.fail_after(START):
                    while set(found) != {theirs, instance_id_for("dd-0")}:
                        event = await anext(events)
                        if isinstance(event, Added):
                            found[event.instance.instance_id] = event.instance
                ref_instance = found[theirs]
                assert ref_instance.transport is not None
                assert re.fullmatch(
                    rf"127\.0\.0\.1:\d+/{theirs:x}/{ns}/comp/ep", ref_instance.transport.address
                )
                assert (ref_instance.device_type, ref_instance.request_plane_codec) == ("cpu", "msgpack")
                (entry,) = await first_entries(card_events, START)
                card = ModelCard.from_entry(entry)
                assert (card.display_name, card.instance_id) == (f"{ns}-model", theirs)

                # The dyndisc worker, seen by the reference client: same id, transport and device type.
                registered = await dd.lines.wait_for("registered", timeout=30)
                mine = registered["instance_id"]
                assert mine == instance_id_for("dd-0")
                assert found[mine].request_plane_codec == "json"
                seen = await client.lines.wait_for("instances", lambda i: mine in i["ids"], timeout=START)
                (view,) = [i for i in seen["instances"] if i["instance_id"] == mine]
                assert view["transport"] == {"kind": "tcp", "address": f"127.0.0.1:9/{mine:x}/{ns}/comp/ep"}
                assert view["device_type"] == "cpu"
                assert theirs in seen["ids"]

                # Draining: the reference stops listing it, dyndisc sees it draining.
                mark = len(client.lines.items)
                drained = dd.signal(signal.SIGUSR1)
                gone = await client.lines.wait_for(
                    "instances", lambda i: mine not in i["ids"], after=mark, timeout=PROMPT
                )
                TIMINGS.add(
                    "kubernetes: dyndisc drain -> reference client stops listing it", gone["t"] - drained
                )
                with anyio.fail_after(PROMPT):
                    while (event := await anext(events)) != Added(
                        instance=found[mine].replace(readiness=Readiness.DRAINING)
                    ):
                        pass
                mark = len(client.lines.items)
                dd.signal(signal.SIGUSR2)
                await client.lines.wait_for(
                    "instances", lambda i: mine in i["ids"], after=mark, timeout=PROMPT
                )

                # A clean exit of each: the dyndisc worker deletes its resource, the reference empties it.
                mark = len(client.lines.items)
                stopped = dd.signal(signal.SIGTERM)
                dropped = await client.lines.wait_for(
                    "instances", lambda i: mine not in i["ids"], after=mark, timeout=PROMPT
                )
                TIMINGS.add(
                    "kubernetes: dyndisc SIGTERM -> reference client drops it", dropped["t"] - stopped
                )
                sent = worker.signal(signal.SIGTERM)
                with anyio.fail_after(PROMPT):
                    while (event := await anext(events)) != Removed(endpoint=endpoint, instance_id=theirs):
                        pass
                TIMINGS.add("kubernetes: reference SIGTERM -> dyndisc Removed", time.time() - sent)

            # A crash of each: the process is killed and its pod stops being ready.
            await cluster.set_slice(namespace, "dd-0-slice", [SliceEndpoint("dd-0", dd_pod.uid)])
            async with (
                spawn("ref-worker-2", ref_worker, worker_env, tmp_path) as worker,
                spawn("ref-client-2", ref_client, client_env, tmp_path) as client,
                spawn("dd-worker-2", dd_worker, dd_env, tmp_path) as dd,
            ):  # fmt: skip
                await worker.lines.wait_for("serving", timeout=START)
                await dd.lines.wait_for("registered", timeout=30)
                await client.lines.wait_for("instances", lambda i: mine in i["ids"], timeout=START)
                with anyio.fail_after(START):
                    while (
                        not isinstance(event := await anext(events), Added)
                        or event.instance.instance_id != theirs
                    ):
                        pass
                worker.kill()
                dd.kill()
                mark = len(client.lines.items)
                unready = await not_ready(cluster, dd_pod)
                dropped = await client.lines.wait_for(
                    "instances", lambda i: mine not in i["ids"], after=mark, timeout=PROMPT
                )
                TIMINGS.add(
                    "kubernetes: dyndisc pod not ready -> reference client drops it", dropped["t"] - unready
                )
                unready = await not_ready(cluster, ref_pod)
                with anyio.fail_after(PROMPT):
                    while (event := await anext(events)) != Removed(endpoint=endpoint, instance_id=theirs):
                        pass
                TIMINGS.add("kubernetes: reference pod not ready -> dyndisc Removed", time.time() - unready)
