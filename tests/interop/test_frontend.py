"""End to end with the reference's OpenAI frontend (``python -m dynamo.frontend``, etcd discovery, TCP request
plane) and its mock engine (``python -m dynamo.mocker``), on loopback, with the tiny model folder that
``install.sh`` builds (nothing from a hub).

* A dyndisc worker registers an endpoint and a model card: the frontend lists the model at ``/v1/models``,
  and drops it when the worker dies (SIGKILL: when its lease expires) or leaves (at once).
* A reference mock worker registers a model: a dyndisc process lists its card and its instance.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

from refkit import (
    TIMINGS,
    Reference,
    dyndisc_argv,
    dyndisc_env,
    free_port,
    reference_env,
    spawn,
    wait_for_models,
)

from dyndisc import DistributedRuntime, EndpointId, InstanceQuery, KvDiscovery
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.backends.kubernetes import PodIdentity
from dyndisc.testing.servers import EtcdServer, KubeApiServer
from harnesses.kubernetes import Cluster

TTL = 3.0
START = 90.0


def pod_env(server: KubeApiServer, pod: PodIdentity) -> dict[str, str]:
    return {
        "KUBECONFIG": str(server.kubeconfig_path),
        "POD_NAME": pod.name,
        "POD_NAMESPACE": pod.namespace,
        "POD_UID": pod.uid,
    }


def frontend_argv(reference: Reference, port: int, backend: str) -> list[str]:
    """The reference's OpenAI frontend on loopback ``port``, discovering through ``backend``."""
    return [
        str(reference.python), "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port),
        "--discovery-backend", backend, "--request-plane", "tcp",
    ]  # fmt: skip


async def listed_then_dropped_on_exit(
    label: str,
    frontend: list[str],
    port: int,
    ref_env: dict[str, str],
    dd_env: dict[str, str],
    tmp_path: Path,
    *,
    gone_within: float,
) -> None:
    """Start the frontend and a dyndisc worker with a model: the frontend lists it, and drops it within
    ``gone_within`` seconds of the worker's SIGTERM."""
    url = f"http://127.0.0.1:{port}"
    model = f"dd-{uuid.uuid4().hex[:6]}"
    worker = dyndisc_argv("--endpoint", f"{model}.backend.generate", "--model", model)
    async with (
        spawn("frontend", frontend, ref_env, tmp_path),
        spawn("dd-worker", worker, dd_env, tmp_path) as dd,
    ):
        registered = await dd.lines.wait_for("model", timeout=30)
        _, listed = await wait_for_models(url, lambda ids: model in ids, START, model)
        TIMINGS.add(f"frontend ({label}): dyndisc model registered -> listed", listed - registered["t"])
        stopped = dd.signal(signal.SIGTERM)
        _, gone = await wait_for_models(url, lambda ids: model not in ids, gone_within, f"{model} gone")
        TIMINGS.add(f"frontend ({label}): dyndisc worker SIGTERM -> model dropped", gone - stopped)


async def test_a_reference_frontend_serves_dyndisc_models_and_dyndisc_reads_the_mockers(
    reference: Reference, dyndisc_etcd_server: EtcdServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ref_env = reference_env(
        {"ETCD_ENDPOINTS": dyndisc_etcd_server.client_url, "CUDA_VISIBLE_DEVICES": ""}, tmp_path
    )
    dd_env = dyndisc_env(
        {
            "DYN_DISCOVERY_BACKEND": "etcd",
            "DYN_KV_LAYOUT": "dynamo-v1",
            "ETCD_ENDPOINTS": dyndisc_etcd_server.client_url,
        }
    )
    frontend = frontend_argv(reference, port, "etcd")
    model = f"dd-{uuid.uuid4().hex[:6]}"
    worker = dyndisc_argv(
        "--endpoint", f"{model}.backend.generate", "--model", model, "--lease-ttl", str(TTL)
    )
    async with spawn("frontend", frontend, ref_env, tmp_path):
        started = time.time()
        await wait_for_models(url, lambda ids: True, START, "anything (it did not answer)")
        TIMINGS.add("frontend: start -> /v1/models answers", time.time() - started)

        # A dyndisc worker's model: listed while the worker lives, dropped when it is killed.
        async with spawn("dd-worker", worker, dd_env, tmp_path) as dd:
            registered = await dd.lines.wait_for("model", timeout=30)
            _, listed = await wait_for_models(url, lambda ids: model in ids, 30, model)
            TIMINGS.add("frontend: dyndisc model registered -> listed", listed - registered["t"])
            killed = dd.kill()
            _, gone = await wait_for_models(url, lambda ids: model not in ids, TTL + 2.0, f"{model} gone")
            TIMINGS.add(f"frontend: dyndisc worker SIGKILL -> model dropped (TTL {TTL:g}s)", gone - killed)

        # ... and dropped at once when it leaves cleanly.
        async with spawn("dd-worker-2", worker, dd_env, tmp_path) as dd:
            await dd.lines.wait_for("model", timeout=30)
            await wait_for_models(url, lambda ids: model in ids, 30, model)
            stopped = dd.signal(signal.SIGTERM)
            _, gone = await wait_for_models(url, lambda ids: model not in ids, 5, f"{model} gone")
            TIMINGS.add("frontend: dyndisc worker SIGTERM -> model dropped", gone - stopped)

        # The reference's mock engine: its card and instance, read by dyndisc.
        mocked = f"mock-{uuid.uuid4().hex[:6]}"
        mocker = [
            str(reference.python), "-m", "dynamo.mocker", "--model-path", str(reference.model),
            "--model-name", mocked, "--discovery-backend", "etcd", "--request-plane", "tcp",
        ]  # fmt: skip
        store = EtcdStore(EtcdSettings.load(endpoints=dyndisc_etcd_server.client_url))
        async with (
            DistributedRuntime(KvDiscovery(store, layout="dynamo-v1"), lease_ttl=TTL) as runtime,
            spawn("mocker", mocker, ref_env, tmp_path),
        ):
            started = time.time()
            await wait_for_models(url, lambda ids: mocked in ids, START, mocked)
            TIMINGS.add("frontend: mocker start -> model listed", time.time() - started)
            cards = [c for c in await runtime.models() if c.display_name == mocked]
            assert len(cards) == 1, await runtime.models()
            (card,) = cards
            assert card.card["model_input"] == "Tokens"
            assert card.card["model_info"]["hf_config_json"]["path"] == str(reference.model / "config.json")
            served = await runtime.list(InstanceQuery.for_endpoint(card.endpoint_id))
            assert card.instance_id in [i.instance_id for i in served], "the card names a live instance"
            assert card.endpoint_id == EndpointId("dynamo", "backend", "generate")


async def test_a_reference_frontend_on_files_serves_a_dyndisc_model(
    reference: Reference, tmp_path: Path
) -> None:
    root = tmp_path / "kv"
    port = free_port()
    ref_env = reference_env({"DYN_FILE_KV": str(root)}, tmp_path)
    dd_env = dyndisc_env(
        {"DYN_DISCOVERY_BACKEND": "file", "DYN_KV_LAYOUT": "dynamo-v1", "DYN_FILE_KV": str(root)}
    )
    frontend = frontend_argv(reference, port, "file")
    await listed_then_dropped_on_exit("files", frontend, port, ref_env, dd_env, tmp_path, gone_within=5)


async def test_a_reference_frontend_on_kubernetes_serves_a_dyndisc_model(
    reference: Reference, dyndisc_kube_apiserver: KubeApiServer, tmp_path: Path
) -> None:
    async with Cluster.open(dyndisc_kube_apiserver) as cluster:
        namespace = await cluster.create_namespace("front")
        worker_pod = await cluster.ready_pod(namespace, "dd-0")
        front_pod = PodIdentity("frontend-0", namespace, await cluster.create_pod(namespace, "frontend-0"))
        port = free_port()
        ref_env = reference_env(pod_env(dyndisc_kube_apiserver, front_pod), tmp_path)
        dd_env = dyndisc_env(
            {"DYN_DISCOVERY_BACKEND": "kubernetes", **pod_env(dyndisc_kube_apiserver, worker_pod)}
        )
        frontend = frontend_argv(reference, port, "kubernetes")
        # The worker deletes its resource as it stops; the frontend's watch follows.
        await listed_then_dropped_on_exit(
            "kubernetes", frontend, port, ref_env, dd_env, tmp_path, gone_within=15
        )
