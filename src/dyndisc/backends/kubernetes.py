"""Kubernetes discovery: a ``DynamoWorkerMetadata`` custom resource per worker, readiness from EndpointSlices.

Worker side: the worker's endpoints are written, by server-side apply, into ``spec.data`` of a
``DynamoWorkerMetadata`` named after its pod and owned by the pod (so it is garbage-collected with it).
Watcher side: two watches in the namespace, discovery EndpointSlices and every DynamoWorkerMetadata, joined:
an instance is live when its pod is ready in some slice and its metadata exists and parses.

Leases: Kubernetes has no TTL; liveness is the pod's readiness. The lease id is the instance id (the
reference runtime's 53-bit hash of the pod name, so it never changes for a pod); granting applies the custom
resource, keep-alive checks that it still exists (re-applying it if its content was changed), a lease is
*lost* when the resource was deleted behind the worker's back, and revoking deletes it.
See ``docs/backends/kubernetes.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

from dyndisc._concurrency import background_tasks
from dyndisc._errors import ConfigurationError, LeaseNotFoundError, RegistrationConflictError
from dyndisc._models import (
    Added,
    DiscoveryEvent,
    EndpointId,
    Instance,
    InstanceQuery,
    Removed,
    Resync,
)
from dyndisc.backends._kube_api import JsonObject, KubeApi, KubeStatusError, connect
from dyndisc.backends._kube_identity import PODINFO_DIR, PodIdentity, namespace_from_env
from dyndisc.backends._kube_join import (
    GROUP,
    KIND,
    LABEL_SELECTOR,
    PLURAL,
    VERSION,
    PodState,
    WorkerRecord,
    join,
    merge_pods,
    parse_worker,
    pod_states,
    slice_pods,
    worker_data,
)
from dyndisc.backends._kube_siphash import instance_id_for
from dyndisc.backends._kube_watch import Reflector
from dyndisc.backends.base import DiscoveryBackend, Lease

__all__ = ["FIELD_MANAGER", "KubernetesDiscovery", "PodIdentity", "from_env", "instance_id_for", "manifest"]

log = logging.getLogger("dyndisc.kubernetes")

#: The server-side-apply field manager of worker metadata (the reference runtime's, so either can take over).
FIELD_MANAGER = "dynamo-worker"
#: What the EndpointSlice reflector keeps per slice: the pods it lists.
_Pods = list[PodState]
#: Seconds to wait after a change before recomputing the instance set, so a burst becomes one update.
DEFAULT_DEBOUNCE = 0.2


def manifest(name: str, namespace: str | None = None) -> str:
    """The text of a manifest shipped with dyndisc: ``crd.yaml`` or ``rbac.yaml``.

    ``rbac.yaml`` names its namespace ``NAMESPACE``; pass ``namespace`` to fill it in.
    """
    text = resources.files("dyndisc.backends").joinpath("manifests", name).read_text()
    if namespace is not None:
        text = text.replace("namespace: NAMESPACE", f"namespace: {namespace}")
    return text


class _Wake:
    """A level-triggered flag a task can wait on."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class KubernetesDiscovery(DiscoveryBackend):
    """Discovery through the Kubernetes API (see the module docstring for the model).

    ``namespace`` is where workers and watches live (default: ``POD_NAMESPACE``, else the kubeconfig's
    namespace, else ``default``). ``identity`` is this worker's pod (default: read from ``POD_NAME``,
    ``POD_NAMESPACE``, ``POD_UID`` or ``/etc/podinfo/*`` when the runtime first grants a lease; a process
    that only lists and watches needs none). ``kubeconfig`` is a path or a parsed kubeconfig (default:
    ``$KUBECONFIG``, ``~/.kube/config``, or the in-cluster service account).
    """

    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str | None = None,
        identity: PodIdentity | None = None,
        kubeconfig: str | os.PathLike[str] | JsonObject | None = None,
        debounce: float = DEFAULT_DEBOUNCE,
        watch_timeout: float = 60.0,
        podinfo_dir: Path = PODINFO_DIR,
    ) -> None:
        if identity is not None and namespace is not None and identity.namespace != namespace:
            raise ConfigurationError(
                f"pod {identity.name!r} is in namespace {identity.namespace!r}, not {namespace!r}"
            )
        self.identity = identity
        self._namespace = namespace or (identity.namespace if identity else None)
        self._kubeconfig = kubeconfig
        self.debounce = debounce
        self.watch_timeout = watch_timeout
        self._podinfo_dir = podinfo_dir
        self._api: KubeApi | None = None
        self._connect_lock = anyio.Lock()
        self._apply_lock = anyio.Lock()
        self._endpoints: dict[EndpointId, Instance] = {}
        self._reflectors: set[Reflector[Any]] = set()
        #: How many times the watches of this backend recomputed their instance set (a diagnostic: a burst
        #: of changes within ``debounce`` seconds costs one recomputation).
        self.recomputations = 0

    # -- connection ----------------------------------------------------------------------------------------
    async def api(self) -> KubeApi:
        """The API client, connected on first use."""
        async with self._connect_lock:
            if self._api is None:
                self._api = await connect(self._kubeconfig)
            return self._api

    async def namespace(self) -> str:
        """The namespace this backend works in."""
        if self._namespace is None:
            api = await self.api()
            found = namespace_from_env(podinfo=self._podinfo_dir) or api.namespace
            if found is None:
                log.warning("no namespace given (POD_NAMESPACE or the kubeconfig context); using 'default'")
            self._namespace = found or "default"
        return self._namespace

    async def _identity(self) -> PodIdentity:
        if self.identity is None:
            namespace = await self.namespace()
            self.identity = PodIdentity.from_env(podinfo=self._podinfo_dir, default_namespace=namespace)
            if self.identity.namespace != namespace:
                raise ConfigurationError(
                    f"POD_NAMESPACE={self.identity.namespace!r} but this backend works in {namespace!r}"
                )
        return self.identity

    def _crs_path(self, namespace: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"

    @staticmethod
    def _slices_path(namespace: str) -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> JsonObject:
        api = await self.api()
        try:
            return await api.request(method, path, what=what, **kwargs)
        except KubeStatusError as exc:
            raise api.explain(exc) from None

    # -- worker side -----------------------------------------------------------------------------------
    def _cr_body(self, pod: PodIdentity) -> JsonObject:
        owner = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.name,
            "uid": pod.uid,
            "controller": False,
            "blockOwnerDeletion": False,
        }
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": pod.name, "namespace": pod.namespace, "ownerReferences": [owner]},
            "spec": {"data": worker_data(self._endpoints.values())},
        }

    async def _apply(self, pod: PodIdentity) -> JsonObject:
        """Server-side apply this worker's custom resource with every endpoint it has registered."""
        return await self._call(
            "PATCH",
            f"{self._crs_path(pod.namespace)}/{pod.name}",
            f"applying {KIND} {pod.namespace}/{pod.name}",
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=self._cr_body(pod),
            content_type="application/apply-patch+yaml",
        )

    async def _clear_stale(self, pod: PodIdentity) -> None:
        """Delete a leftover resource of this pod's name (an earlier run in this pod, or an earlier pod)."""
        path = f"{self._crs_path(pod.namespace)}/{pod.name}"
        what = f"reading {KIND} {pod.namespace}/{pod.name}"
        try:
            existing = await self._call("GET", path, what)
        except KubeStatusError as exc:
            if exc.status == 404:
                return
            raise
        meta = existing.get("metadata") or {}
        owners = [o for o in meta.get("ownerReferences") or () if isinstance(o, dict)]
        if not owners or any(o.get("kind") != "Pod" or o.get("name") != pod.name for o in owners):
            raise RegistrationConflictError(
                f"{KIND} {pod.namespace}/{pod.name} exists and is not owned by pod {pod.name!r} "
                f"(owners: {[o.get('name') for o in owners]}); delete it if it is stale: "
                f"kubectl delete dwm -n {pod.namespace} {pod.name}"
            )
        log.info("replacing stale %s %s/%s left by an earlier run of this pod", KIND, pod.namespace, pod.name)
        preconditions = {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
        try:
            await self._call(
                "DELETE",
                path,
                f"deleting stale {KIND} {pod.namespace}/{pod.name}",
                body={"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions},
            )
        except KubeStatusError as exc:
            if exc.status not in (404, 409):  # gone already, or changed: the apply below settles it
                raise

    def _own_lease(self, lease: Lease) -> bool:
        return self.identity is not None and lease.id == self.identity.instance_id

    async def grant_lease(self, ttl: float) -> Lease:
        """Apply this worker's custom resource (replacing a stale one); the lease id is the pod-name hash."""
        pod = await self._identity()
        async with self._apply_lock:
            await self._clear_stale(pod)
            await self._apply(pod)
        return Lease(id=pod.instance_id, ttl=ttl)

    async def keep_alive(self, lease: Lease) -> float:
        """Check that the custom resource still exists (and re-apply it if its content was changed)."""
        pod = await self._identity()
        path = f"{self._crs_path(pod.namespace)}/{pod.name}"
        # Under the apply lock, so a registration applied meanwhile is not mistaken for a foreign change.
        async with self._apply_lock:
            try:
                found = await self._call("GET", path, f"reading {KIND} {pod.namespace}/{pod.name}")
            except KubeStatusError as exc:
                if exc.status == 404:
                    raise LeaseNotFoundError(
                        f"{KIND} {pod.namespace}/{pod.name} was deleted behind this worker's back"
                    ) from None
                raise
            spec = found.get("spec")
            data = spec.get("data") if isinstance(spec, dict) else None
            endpoints = data.get("endpoints") if isinstance(data, dict) else None
            wanted = worker_data(self._endpoints.values())["endpoints"]
            if (endpoints or {}) != wanted:
                log.warning(
                    "%s %s/%s was changed by someone else; re-applying it", KIND, pod.namespace, pod.name
                )
                await self._apply(pod)
        return lease.ttl

    async def revoke_lease(self, lease: Lease) -> None:
        """Delete the custom resource of the worker whose instance id is ``lease.id`` (a no-op if none)."""
        namespace = await self.namespace()
        if self._own_lease(lease):
            assert self.identity is not None
            name = self.identity.name
            self._endpoints.clear()
        else:
            listed = await self._call("GET", self._crs_path(namespace), f"listing {KIND} in {namespace}")
            names = [(i.get("metadata") or {}).get("name") for i in listed.get("items") or ()]
            matches = [n for n in names if isinstance(n, str) and instance_id_for(n) == lease.id]
            if not matches:
                return
            name = matches[0]
        try:
            await self._call(
                "DELETE", f"{self._crs_path(namespace)}/{name}", f"deleting {KIND} {namespace}/{name}"
            )
        except KubeStatusError as exc:
            if exc.status != 404:
                raise

    async def register(self, instance: Instance, lease: Lease) -> Instance:
        pod = await self._identity()
        if lease.id != pod.instance_id or instance.instance_id != pod.instance_id:
            raise RegistrationConflictError(
                f"instance {instance.instance_id:x} of {instance.endpoint_id} is not pod {pod.name!r}'s (its "
                f"instance id is {pod.instance_id:x}): on Kubernetes an instance id is the hash of its pod's "
                "name, so only that pod can register it"
            )
        async with self._apply_lock:
            previous = self._endpoints.get(instance.endpoint_id)
            if previous == instance:
                return instance
            self._endpoints[instance.endpoint_id] = instance
            try:
                await self._apply(pod)
            except BaseException:
                _restore(self._endpoints, instance.endpoint_id, previous)
                raise
        return instance

    async def unregister(self, instance: Instance) -> None:
        pod = await self._identity()
        async with self._apply_lock:
            previous = self._endpoints.pop(instance.endpoint_id, None)
            if previous is None:
                return
            try:
                await self._apply(pod)
            except BaseException:
                self._endpoints[instance.endpoint_id] = previous
                raise

    # -- watcher side ----------------------------------------------------------------------------------
    async def list(self, query: InstanceQuery) -> list[Instance]:
        namespace = await self.namespace()
        slices = await self._call(
            "GET",
            self._slices_path(namespace),
            f"listing EndpointSlices in {namespace}",
            query={"labelSelector": LABEL_SELECTOR},
        )
        crs = await self._call("GET", self._crs_path(namespace), f"listing {KIND} in {namespace}")
        workers = {}
        for obj in crs.get("items") or ():
            record = parse_worker(obj)
            if record is not None:
                workers[record.name] = record
        live = join(pod_states(slices.get("items") or ()), workers, query)
        return _ordered(live.values())

    @asynccontextmanager
    async def watch(self, query: InstanceQuery) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        namespace = await self.namespace()
        api = await self.api()
        wake = _Wake()
        slices: Reflector[_Pods] = Reflector(
            api,
            self._slices_path(namespace),
            what=f"EndpointSlices in {namespace}",
            label_selector=LABEL_SELECTOR,
            transform=lambda obj, _previous: slice_pods(obj),
            on_change=wake.set,
            watch_timeout=self.watch_timeout,
        )
        workers: Reflector[WorkerRecord] = Reflector(
            api,
            self._crs_path(namespace),
            what=f"{KIND} in {namespace}",
            transform=_keep_last_good,
            on_change=wake.set,
            watch_timeout=self.watch_timeout,
        )
        await slices.relist()
        await workers.relist()
        self._reflectors.update((slices, workers))
        try:
            async with background_tasks() as tg:
                tg.start_soon(slices.run)
                tg.start_soon(workers.run)
                yield self._events(query, slices, workers, wake)
        finally:
            self._reflectors.difference_update((slices, workers))

    async def _events(
        self,
        query: InstanceQuery,
        slices: Reflector[_Pods],
        workers: Reflector[WorkerRecord],
        wake: _Wake,
    ) -> AsyncIterator[DiscoveryEvent]:
        def current() -> dict[tuple[EndpointId, int], Instance]:
            return join(merge_pods(slices.items.values()), workers.items, query)

        wake.clear()
        known = current()
        relists = (slices.relists, workers.relists)
        yield Resync(instances=tuple(_ordered(known.values())))
        while True:
            await wake.wait()
            await anyio.sleep(self.debounce)  # coalesce a burst (a rollout) into one recomputation
            wake.clear()
            fresh = current()
            self.recomputations += 1
            if (slices.relists, workers.relists) != relists:
                relists = (slices.relists, workers.relists)
                known = fresh
                yield Resync(instances=tuple(_ordered(known.values())))
                continue
            for key in sorted(known.keys() - fresh.keys(), key=str):
                gone = known[key]
                yield Removed(endpoint=gone.endpoint_id, instance_id=gone.instance_id)
            for key, instance in sorted(fresh.items(), key=lambda kv: str(kv[0])):
                if known.get(key) != instance:
                    yield Added(instance=instance)
            known = fresh

    async def aclose(self) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            await api.aclose()

    @property
    def stale_since(self) -> float | None:
        stale = [r.stale_since for r in self._reflectors if r.stale_since is not None]
        return min(stale) if stale else None


def _keep_last_good(obj: JsonObject, previous: WorkerRecord | None) -> WorkerRecord | None:
    record = parse_worker(obj)
    if (
        record is None
        and previous is not None
        and previous.uid == str((obj.get("metadata") or {}).get("uid"))
    ):
        return previous  # a transiently unreadable update of the same resource keeps its last good content
    return record


def _ordered(instances: Any) -> list[Instance]:
    return sorted(instances, key=lambda i: (i.namespace, i.component, i.endpoint, i.instance_id))


def _restore(mapping: dict[EndpointId, Instance], key: EndpointId, previous: Instance | None) -> None:
    if previous is None:
        mapping.pop(key, None)
    else:
        mapping[key] = previous


def from_env() -> DiscoveryBackend:
    """The backend for ``DYN_DISCOVERY_BACKEND=kubernetes``: credentials from ``KUBECONFIG`` or in-cluster,
    pod identity from ``POD_NAME`` / ``POD_NAMESPACE`` / ``POD_UID`` (or ``/etc/podinfo``)."""
    return KubernetesDiscovery()


def _main(argv: list[str] | None = None) -> int:
    """``python -m dyndisc.backends.kubernetes manifests --namespace NS | kubectl apply -f -``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dyndisc.backends.kubernetes")
    sub = parser.add_subparsers(dest="command", required=True)
    printer = sub.add_parser(
        "manifests", help="print the CRD and the RBAC (ServiceAccount, Role, RoleBinding)"
    )
    printer.add_argument("--namespace", required=True, help="the namespace the workers run in")
    printer.add_argument("--only", choices=["crd", "rbac"], help="print only one of the two")
    args = parser.parse_args(argv)
    parts = [] if args.only == "rbac" else [manifest("crd.yaml")]
    if args.only != "crd":
        parts.append(manifest("rbac.yaml", args.namespace))
    print("---\n".join(parts), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
