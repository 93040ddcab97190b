"""The Kubernetes target of a chaos run: a real kube-apiserver with its controllers, and kubelet played here.

On Kubernetes the orchestrator also plays kubelet (there is none): it runs a pod for each agent process
before starting it (the agent reads its identity from ``POD_NAME`` / ``POD_NAMESPACE`` / ``POD_UID``), marks
a worker's pod ready once its runtime holds its lease (its readiness probe passes), not ready a second after
a SIGSTOP (the probe fails) and ready again on SIGCONT, and a killed worker's pod not ready, then deleted;
the real EndpointSlice controller and garbage collector do the rest.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from dyndisc._retry import Backoff
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.testing.chaos.kube_raw import parse_kubernetes
from dyndisc.testing.chaos.raw import RawLayout, RawTruth
from dyndisc.testing.chaos.target import SERVER_FAULTS, Target

log = logging.getLogger("dyndisc.chaos")

T = TypeVar("T")


class KubernetesTarget(Target):
    """A kube-apiserver with the real kube-controller-manager; the orchestrator plays kubelet."""

    name = backend = "kubernetes"
    faults = SERVER_FAULTS
    # One worker per pod: an agent's identity is its pod's.
    per_process = 1
    start_in_background = True
    prewarm = True
    #: Seconds from a SIGSTOP to the pod marked not ready (kubelet's failing readiness probe).
    probe_failure = 1.0
    #: A registration re-applies the worker's whole resource: a bulk of a few dozen is plenty here.
    bulk = (30, 80)

    def start(self) -> None:
        from dyndisc.backends.kubernetes.manifests import manifest
        from dyndisc.testing.kubelet import Kubelet
        from dyndisc.testing.servers import KubeCluster

        self.cluster = KubeCluster(crds=[manifest("crd.yaml")]).start()
        self.server = self.cluster.apiserver
        self.kubelet = Kubelet(self.server)
        self.kubelet.ensure_node()
        self.configs = Path(tempfile.mkdtemp(prefix="dyndisc-chaos-kube-"))
        self.direct_config = self.server.write_kubeconfig(self.server.admin_token, self.configs / "direct")
        #: Per agent: whether its runtime holds its lease, since when it is paused, whether it was killed.
        self._pods: dict[str, _Pod] = {}

    def close(self) -> None:
        super().close()
        self.cluster.close()
        shutil.rmtree(self.configs, ignore_errors=True)

    def env(self, agent: str) -> dict[str, str]:
        proxy = self.proxy(agent, self.server.host, self.server.port)
        config = self.configs / f"kubeconfig-{agent}"
        if not config.exists():
            self.server.write_kubeconfig(
                self.server.admin_token, config, agent, server_url=proxy.url_for("https")
            )
        return {**super().env(agent), "KUBECONFIG": str(config)}

    def discovery(self, namespace: str, layout: str = "dyndisc") -> DiscoveryBackend:
        from dyndisc.backends.kubernetes import KubernetesDiscovery

        backend = KubernetesDiscovery(namespace=namespace, kubeconfig=str(self.direct_config))
        self.backends.append(backend)
        return backend

    async def read_truth(self, namespace: str, layout: RawLayout, prefixes: list[str]) -> RawTruth:
        """The namespace's DynamoWorkerMetadata and EndpointSlices, read raw as the admin and parsed by the
        run's own parser (:mod:`~.kube_raw`); ``prefixes`` do not apply (the whole namespace is read)."""
        from dyndisc.backends.kubernetes.siphash import instance_id_for

        path = f"/apis/nvidia.com/v1alpha1/namespaces/{namespace}/dynamoworkermetadatas"
        read = []
        for where in (path, f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"):
            status, found = await anyio.to_thread.run_sync(self.server.request, "GET", where)
            if status != 200:
                raise RuntimeError(f"reading {where}: HTTP {status} {str(found)[:200]}")
            read.append((found or {}).get("items") or [])
        return parse_kubernetes(read[0], read[1], path, instance_id_for)

    async def _kubelet(self, what: str, call: Callable[..., T], *args: Any) -> T:
        """Do what kubelet would, retrying while the API server is away (as kubelet does)."""
        from dyndisc.testing.kubelet import KubeletError

        backoff = Backoff(0.1, 1.0)
        with anyio.fail_after(120):
            while True:
                try:
                    return await anyio.to_thread.run_sync(call, *args)
                except (OSError, KubeletError) as exc:
                    if isinstance(exc, KubeletError) and exc.status < 500 and exc.status != 429:
                        raise
                    log.info("kubelet: %s failed (%s); retrying", what, exc)
                    await backoff.sleep()

    async def prepare(self, namespace: str) -> None:
        kubelet = self.kubelet
        await self._kubelet("creating the namespace", kubelet.create_namespace, namespace)
        await self._kubelet("creating the Service", kubelet.create_service, namespace, "workers", "worker")
        # A pod with no worker (no metadata, so never an instance) whose readiness the nemesis flips to see
        # the controllers at work again after the API server came back.
        self.namespace = namespace
        self._canary = True
        await self._kubelet(
            "creating the canary", lambda: kubelet.create_pod(namespace, "canary", app="worker")
        )
        await self._kubelet("readying the canary", kubelet.set_ready, namespace, "canary", True)
        await self._controllers_caught_up()

    async def _controllers_caught_up(self) -> None:
        """Wait until the EndpointSlice controller lists the canary as it is now.

        After an API server restart the controller-manager's watches come back on client-go's backoff (up to
        30 s): until then pods change readiness and slices do not follow. The heal of an outage ends when
        they follow again, so the run's quiet point (and so every bound) starts after it.
        """
        path = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"

        def listed() -> bool | None:
            status, found = self.server.request("GET", path)
            for item in (found or {}).get("items") or () if status == 200 else ():
                for endpoint in item.get("endpoints") or ():
                    if (endpoint.get("targetRef") or {}).get("name") == "canary":
                        return bool((endpoint.get("conditions") or {}).get("ready"))
            return None

        with anyio.fail_after(120):
            # A condition on the server, not in this process: it is polled.
            while await self._kubelet("reading the slices", listed) is not self._canary:  # noqa: ASYNC110
                await anyio.sleep(0.1)

    async def _run_pod(self, agent: str, namespace: str, app: str) -> dict[str, str]:
        uid = await self._kubelet(
            f"creating pod {agent}", lambda: self.kubelet.create_pod(namespace, agent, app=app)
        )
        self._pods[agent] = _Pod(namespace)
        return {"POD_NAME": agent, "POD_NAMESPACE": namespace, "POD_UID": uid}

    async def environment(self, agent: str, namespace: str) -> dict[str, str]:
        env = await super().environment(agent, namespace)
        if agent.startswith("v"):  # a watcher's pod: not selected by the discovery Service
            env.update(await self._run_pod(agent, namespace, "watcher"))
        return env

    async def worker_env(self, agent: str, namespace: str) -> dict[str, str]:
        # A worker's pod is made when it starts (its agent may be waiting already).
        return await self._run_pod(agent, namespace, "worker")

    async def _sync(self, agent: str) -> None:
        """Bring the pod's status in line with what kubelet would report now (one write at a time per pod)."""
        pod = self._pods.get(agent)
        if pod is None:
            return
        async with pod.lock:
            if pod.deleted:
                return
            ready = pod.held and not pod.killed and not pod.probe_failed
            if ready != pod.ready:
                await self._kubelet(
                    f"reporting pod {agent} ready={ready}",
                    self.kubelet.set_ready,
                    pod.namespace,
                    agent,
                    ready,
                )
                pod.ready = ready
            if pod.killed:
                await self._kubelet(f"deleting pod {agent}", self.kubelet.delete_pod, pod.namespace, agent, 0)
                pod.deleted = True

    async def lease_held(self, agent: str, namespace: str) -> None:
        pod = self._pods.get(agent)
        if pod is not None:
            pod.held = True
            await self._sync(agent)

    async def agent_killed(self, agent: str, namespace: str) -> None:
        pod = self._pods.get(agent)
        if pod is not None:
            pod.killed = True
            await self._sync(agent)

    async def agent_exited(self, agent: str, namespace: str) -> None:
        # Its process would end with its runtime: its container stops, and kubelet takes the pod down as
        # for a kill (the resource it could not delete, an exit during an outage, goes with the pod).
        await self.agent_killed(agent, namespace)

    async def agent_paused(self, agent: str, namespace: str, paused: bool) -> None:
        pod = self._pods.get(agent)
        if pod is None:
            return
        pod.pauses += 1
        pause = pod.pauses
        pod.probe_failed = False
        if paused:
            await anyio.sleep(self.probe_failure)  # the readiness probe fails only after its period
            if pod.pauses != pause:
                return  # resumed meanwhile
            pod.probe_failed = True
        await self._sync(agent)

    async def fault(self, kind: str, args: dict[str, Any], heal: bool) -> dict[str, Any]:
        if kind == "server_kill":
            # The API server alone: etcd keeps the data, the controller-manager waits for it to come back.
            await anyio.to_thread.run_sync(self.server.start if heal else self.server.kill)
            if not heal:
                return {}
            started = anyio.current_time()
            self._canary = not self._canary
            ready = self._canary
            await self._kubelet(
                "flipping the canary", self.kubelet.set_ready, self.namespace, "canary", ready
            )
            await self._controllers_caught_up()
            return {"controllers_back_after_s": round(anyio.current_time() - started, 3)}
        return await super().fault(kind, args, heal)

    async def revoke(self, namespace: str, lease: int) -> None:
        """Delete the worker's DynamoWorkerMetadata (its lease, on Kubernetes) as another client."""
        await self.discovery(namespace).revoke_lease(Lease(id=lease, ttl=self.ttl))

    async def foreign_write(
        self, namespace: str, write: str, endpoint: str, rng: random.Random, layout: RawLayout
    ) -> tuple[str, str | None]:
        """Malformed custom resources (``spec.data`` must be an object, or the API server refuses them):
        ``garbage`` (endpoints not an object), ``shape`` (entries that are not records), ``noncanonical`` (a
        well-formed record in the resource of a pod that does not run: no watcher may show it),
        ``overwrite`` (a live worker's endpoints replaced by garbage: it drops out until its worker, which
        follows its resource, repairs it)."""
        from dyndisc._models import Instance
        from dyndisc.backends.kubernetes.join import endpoint_key, resources_path
        from dyndisc.backends.kubernetes.siphash import instance_id_for
        from dyndisc.testing.kubelet import KubeletError

        path = resources_path(namespace)
        name = f"foreign-{rng.getrandbits(32):x}"
        data: Any = {"endpoints": "garbage"}
        if write == "shape":
            data = {"endpoints": {"x": [1, 2, 3]}, "model_cards": "?"}
        elif write == "noncanonical":
            component, ep = endpoint.split(".")
            record = {
                "type": "Endpoint",
                "namespace": namespace,
                "component": component,
                "endpoint": ep,
                "instance_id": instance_id_for(name),
                "transport": {"tcp": "10.9.9.9:9"},
            }
            data = {"endpoints": {endpoint_key(Instance.from_dict(record)): record}}
        elif write == "overwrite":
            listed = await self._kubelet("listing resources", self.server.request, "GET", path)
            live = sorted(
                i["metadata"]["name"]
                for i in (listed[1] or {}).get("items") or ()
                if ((i.get("spec") or {}).get("data") or {}).get("endpoints")
            )
            if live:
                name = rng.choice(live)
                patch = {"spec": {"data": {"endpoints": "garbage"}}}
                status, answer = await self._kubelet(
                    f"overwriting {name}",
                    lambda: self.server.request(
                        "PATCH", f"{path}/{name}", _json(patch), content_type="application/merge-patch+json"
                    ),
                )
                if status >= 300 and status != 404:
                    raise KubeletError(f"overwriting {name}", status, answer)
                return f"{path}/{name}", None
        body = {
            "apiVersion": "nvidia.com/v1alpha1",
            "kind": "DynamoWorkerMetadata",
            "metadata": {"name": name},
            "spec": {"data": data},
        }
        status, answer = await self._kubelet(
            f"writing {name}", lambda: self.server.request("POST", path, _json(body))
        )
        if status >= 300:
            raise KubeletError(f"writing {name}", status, answer)
        return f"{path}/{name}", None


class _Pod:
    """What the kubelet stand-in knows of one agent's pod."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.lock = anyio.Lock()
        self.held = False
        self.killed = False
        self.deleted = False
        self.ready = False
        #: Whether its readiness probe fails (a second into a SIGSTOP); pauses and resumes so far.
        self.probe_failed = False
        self.pauses = 0


def _json(body: Any) -> bytes:
    return json.dumps(body).encode()
