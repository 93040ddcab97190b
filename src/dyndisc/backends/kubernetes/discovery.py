"""Kubernetes discovery: a ``DynamoWorkerMetadata`` custom resource per worker, readiness from EndpointSlices.

Worker side: the worker's endpoints are written, by server-side apply, into ``spec.data`` of a
``DynamoWorkerMetadata`` named after its pod and owned by the pod (so it is garbage-collected with it).
Watcher side: two watches in the namespace, discovery EndpointSlices and every DynamoWorkerMetadata, joined:
an instance is live when its pod is ready in some slice and its metadata exists and parses.

Leases: Kubernetes has no TTL; liveness is the pod's readiness. The lease id is the instance id (the
reference runtime's 53-bit hash of the pod name, so it never changes for a pod); the lease is the worker's
resource (:mod:`dyndisc.backends.kubernetes.worker`). See ``docs/backends/kubernetes.md``.
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from dyndisc._concurrency import Wake, background_tasks
from dyndisc._diagnosis import BackendDoctor
from dyndisc._entries import (
    EntryAdded,
    EntryEvent,
    EntryRemoved,
    EntryResync,
    MetadataEntry,
    validate_entry_key,
)
from dyndisc._errors import ConfigurationError, RegistrationConflictError
from dyndisc._models import Added, DiscoveryEvent, EndpointId, Instance, InstanceQuery, Removed, Resync
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.kubernetes.entries import UnboundEntries, join_entries
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError
from dyndisc.backends.kubernetes.identity import PODINFO_DIR, PodIdentity, namespace_from_env
from dyndisc.backends.kubernetes.join import (
    KIND,
    LABEL_SELECTOR,
    PodState,
    WorkerRecord,
    join,
    merge_pods,
    parse_worker,
    pod_states,
    slice_pods,
)
from dyndisc.backends.kubernetes.reflector import Reflector
from dyndisc.backends.kubernetes.siphash import instance_id_for
from dyndisc.backends.kubernetes.worker import WorkerResource, delete_resource, resources_path

if TYPE_CHECKING:
    from dyndisc.backends.kubernetes.api import KubeApi

log = logging.getLogger("dyndisc.kubernetes")

#: What the EndpointSlice reflector keeps per slice: the pods it lists.
_Pods = list[PodState]
#: Seconds to wait after a change before recomputing the instance set, so a burst becomes one update.
DEFAULT_DEBOUNCE = 0.2


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
        self._resource: WorkerResource | None = None
        self._reflectors: set[Reflector[Any]] = set()
        #: How many times the watches of this backend recomputed their instance set (a diagnostic: a burst
        #: of changes within ``debounce`` seconds costs one recomputation).
        self.recomputations = 0

    # -- connection ----------------------------------------------------------------------------------------
    async def api(self) -> KubeApi:
        """The API client, connected on first use."""
        async with self._connect_lock:
            if self._api is None:
                from dyndisc.backends.kubernetes.api import connect  # the client comes with the extra

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
    async def _worker(self) -> WorkerResource:
        if self._resource is None:
            self._resource = WorkerResource(await self._identity(), self._call)
        return self._resource

    def _own_lease(self, lease: Lease) -> bool:
        return self.identity is not None and lease.id == self.identity.instance_id

    async def grant_lease(self, ttl: float) -> Lease:
        """Apply this worker's custom resource (replacing a stale one); the lease id is the pod-name hash."""
        worker = await self._worker()
        await worker.create()
        return Lease(id=worker.pod.instance_id, ttl=ttl)

    async def keep_alive(self, lease: Lease) -> float:
        """Check that the custom resource still exists (and re-apply it if its content was changed)."""
        await (await self._worker()).check()
        return lease.ttl

    async def revoke_lease(self, lease: Lease) -> None:
        """Delete the custom resource of the worker whose instance id is ``lease.id`` (a no-op if none)."""
        if self._own_lease(lease):
            await (await self._worker()).delete()
            return
        namespace = await self.namespace()
        listed = await self._call("GET", resources_path(namespace), f"listing {KIND} in {namespace}")
        names = [(i.get("metadata") or {}).get("name") for i in listed.get("items") or ()]
        matches = [n for n in names if isinstance(n, str) and instance_id_for(n) == lease.id]
        if matches:
            await delete_resource(self._call, namespace, matches[0])

    async def register(self, instance: Instance, lease: Lease) -> Instance:
        worker = await self._worker()
        pod = worker.pod
        if lease.id != pod.instance_id or instance.instance_id != pod.instance_id:
            raise RegistrationConflictError(
                f"instance {instance.instance_id:x} of {instance.endpoint_id} is not pod {pod.name!r}'s (its "
                f"instance id is {pod.instance_id:x}): on Kubernetes an instance id is the hash of its pod's "
                "name, so only that pod can register it"
            )
        await worker.register(instance)
        return instance

    async def unregister(self, instance: Instance) -> None:
        await (await self._worker()).unregister(instance)

    # -- watcher side ----------------------------------------------------------------------------------
    async def list(self, query: InstanceQuery) -> list[Instance]:
        namespace = await self.namespace()
        slices = await self._call(
            "GET",
            self._slices_path(namespace),
            f"listing EndpointSlices in {namespace}",
            query={"labelSelector": LABEL_SELECTOR},
        )
        crs = await self._call("GET", resources_path(namespace), f"listing {KIND} in {namespace}")
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
        wake = Wake()
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
            resources_path(namespace),
            what=f"{KIND} in {namespace}",
            # An unreadable resource drops what it held: a list, a new watch and this one agree.
            transform=lambda obj, _previous: parse_worker(obj),
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
        wake: Wake,
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

    # -- metadata entries (see dyndisc.backends.kubernetes.entries) --------------------------------------
    async def put_entry(self, entry: MetadataEntry, lease: Lease | None) -> None:
        if lease is None:
            await UnboundEntries(await self.namespace(), self._call).put(entry)
            return
        worker = await self._worker()
        if lease.id != worker.pod.instance_id:
            raise RegistrationConflictError(
                f"lease {lease.id:x} is not pod {worker.pod.name!r}'s: on Kubernetes an entry bound to a "
                "lease lives in that pod's DynamoWorkerMetadata"
            )
        await worker.put_entry(entry)

    async def delete_entry(self, bucket: str, key: str) -> None:
        if self._resource is not None and await self._resource.delete_entry(bucket, key):
            return
        await UnboundEntries(await self.namespace(), self._call).delete(bucket, key)

    async def list_entries(self, bucket: str, prefix: str = "") -> builtins.list[MetadataEntry]:
        namespace = await self.namespace()
        slices = await self._call(
            "GET",
            self._slices_path(namespace),
            f"listing EndpointSlices in {namespace}",
            query={"labelSelector": LABEL_SELECTOR},
        )
        crs = await self._call("GET", resources_path(namespace), f"listing {KIND} in {namespace}")
        workers = {r.name: r for r in map(parse_worker, crs.get("items") or ()) if r is not None}
        live = join_entries(pod_states(slices.get("items") or ()), workers, bucket, _prefix(prefix))
        return [live[k] for k in sorted(live)]

    @asynccontextmanager
    async def watch_entries(self, bucket: str, prefix: str = "") -> AsyncIterator[AsyncIterator[EntryEvent]]:
        # The same two watches as instances (entries are live while their pod is), joined on entries.
        namespace = await self.namespace()
        api = await self.api()
        wake = Wake()
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
            resources_path(namespace),
            what=f"{KIND} in {namespace}",
            transform=lambda obj, _previous: parse_worker(obj),
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
                yield self._entry_events(bucket, _prefix(prefix), slices, workers, wake)
        finally:
            self._reflectors.difference_update((slices, workers))

    async def _entry_events(
        self,
        bucket: str,
        prefix: str,
        slices: Reflector[_Pods],
        workers: Reflector[WorkerRecord],
        wake: Wake,
    ) -> AsyncIterator[EntryEvent]:
        def current() -> dict[str, MetadataEntry]:
            return join_entries(merge_pods(slices.items.values()), workers.items, bucket, prefix)

        wake.clear()
        known = current()
        relists = (slices.relists, workers.relists)
        yield EntryResync(entries=tuple(known[k] for k in sorted(known)))
        while True:
            await wake.wait()
            await anyio.sleep(self.debounce)  # coalesce a burst into one recomputation
            wake.clear()
            fresh = current()
            if (slices.relists, workers.relists) != relists:
                relists = (slices.relists, workers.relists)
                known = fresh
                yield EntryResync(entries=tuple(known[k] for k in sorted(known)))
                continue
            for key in sorted(known.keys() - fresh.keys()):
                yield EntryRemoved(bucket=bucket, key=key)
            for key in sorted(fresh):
                if known.get(key) != fresh[key]:
                    yield EntryAdded(entry=fresh[key])
            known = fresh

    def doctor(self) -> BackendDoctor:
        from dyndisc.backends.kubernetes.doctor import KubeDoctor  # needs pyyaml, from the extra

        return KubeDoctor(self)

    async def aclose(self) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            await api.aclose()

    @property
    def stale_since(self) -> float | None:
        stale = [r.stale_since for r in self._reflectors if r.stale_since is not None]
        return min(stale) if stale else None


def _prefix(prefix: str) -> str:
    """``prefix`` checked as the beginning of an entry key (or empty)."""
    if prefix:
        validate_entry_key(prefix.rstrip("/") or "x")
    return prefix


def _ordered(instances: Any) -> list[Instance]:
    return sorted(instances, key=lambda i: (i.namespace, i.component, i.endpoint, i.instance_id))
