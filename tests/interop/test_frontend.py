"""End to end with the reference's OpenAI frontend (``python -m dynamo.frontend``, etcd discovery, TCP request
plane) and its mock engine (``python -m dynamo.mocker``), on loopback, with the tiny model folder that
``install.sh`` builds (nothing from a hub).

* A dyndisc worker registers an endpoint and a model card: the frontend lists the model at ``/v1/models``,
  and drops it when the worker dies (SIGKILL: when its lease expires) or leaves (at once).
* A reference mock worker registers a model: a dyndisc process lists its card and its instance.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from refkit import (
    TIMINGS,
    Proc,
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
from dyndisc.backends.kubernetes.errors import KubeStatusError
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
    residue: Callable[[], Awaitable[str | None]] | None = None,
) -> None:
    """Start the frontend and a dyndisc worker with a model: the frontend lists it, and drops it within
    ``gone_within`` seconds of the worker's SIGTERM; the worker leaves cleanly and (``residue``: what the
    store still holds of it, ``None`` for nothing) leaves nothing behind. If the frontend keeps the model,
    the failure says which side kept it."""
    url = f"http://127.0.0.1:{port}"
    model = f"dd-{uuid.uuid4().hex[:6]}"
    worker = dyndisc_argv("--endpoint", f"{model}.backend.generate", "--model", model)
    async with (
        spawn("frontend", frontend, ref_env, tmp_path) as front,
        spawn("dd-worker", worker, dd_env, tmp_path) as dd,
    ):
        registered = await dd.lines.wait_for("model", timeout=30)
        _, listed = await wait_for_models(url, lambda ids: model in ids, START, model)
        TIMINGS.add(f"frontend ({label}): dyndisc model registered -> listed", listed - registered["t"])
        stopped = dd.signal(signal.SIGTERM)
        try:
            _, gone = await wait_for_models(url, lambda ids: model not in ids, gone_within, f"{model} gone")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {await _who_kept_it(dd, front, residue)}") from None
        TIMINGS.add(f"frontend ({label}): dyndisc worker SIGTERM -> model dropped", gone - stopped)
        await dd.lines.wait_for("stopped", timeout=10, what="after SIGTERM (the runtime left cleanly)")
        left = await residue() if residue is not None else None
        assert left is None, f"the worker left cleanly, but the store still holds {left}"


async def _who_kept_it(dd: Proc, front: Proc, residue: Callable[[], Awaitable[str | None]] | None) -> str:
    """What tells a worker that did not leave from a frontend that did not follow (the short summary line
    of a failure is all a CI log may keep, so it is said there)."""
    said_stopped = any(line.get("event") == "stopped" for line in dd.lines.items)
    left = "left cleanly" if said_stopped else "did not say stopped"
    worker = f"the worker {left} (exit {dd.process.returncode})"
    store = f"; the store holds {await residue() or 'nothing of it'}" if residue is not None else ""
    return (
        f"{worker}{store}; worker stderr: {_lines(dd)!r}; frontend warnings and removals: "
        f"{_lines(front, notable=True)!r}"
    )


def _lines(proc: Proc, *, notable: bool = False, count: int = 8) -> str:
    """The last lines of ``proc``'s stderr; with ``notable``, only warnings, errors and removals (the
    frontend's watch errors and discovery events, not its line per answered poll)."""
    lines = proc.log_tail(2000).splitlines()
    if notable:
        lines = [line for line in lines if re.search(r"WARN|ERROR|removed|Removed|stopped|ended", line)]
    return "\n".join(lines[-count:])


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
        worker_resource = f"{cluster.crs_path(namespace)}/{worker_pod.name}"

        async def residue() -> str | None:
            try:
                found = await cluster.call("GET", worker_resource)
            except KubeStatusError as exc:
                return None if exc.status == 404 else f"(GET {worker_resource} answered {exc.status})"
            meta = found.get("metadata") or {}
            return f"{worker_resource} (uid {meta.get('uid')}, deletion {meta.get('deletionTimestamp')})"

        # The worker deletes its resource as it stops; the frontend's watch follows at once (~50 ms). The
        # bound is wider: a frontend whose resource watch broke just then relists after kube-rs's backoff
        # (0.8 s doubling to 30 s), and that is the reference's to do, not dyndisc's.
        await listed_then_dropped_on_exit(
            "kubernetes", frontend, port, ref_env, dd_env, tmp_path, gone_within=60, residue=residue
        )
