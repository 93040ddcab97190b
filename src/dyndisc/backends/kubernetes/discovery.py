"""Kubernetes discovery: a ``DynamoWorkerMetadata`` custom resource per worker, readiness from EndpointSlices.

Worker side: the worker's endpoints are written, by server-side apply, into ``spec.data`` of a
``DynamoWorkerMetadata`` named after its pod and owned by the pod (so it is garbage-collected with it).
Watcher side: one shared informer per namespace (:mod:`~dyndisc.backends.kubernetes.informer`) lists and
watches the discovery EndpointSlices (Pods, in container mode) and every DynamoWorkerMetadata once, however
many watches the backend serves; each watch joins them for its query: an instance is live when its pod is
ready and its metadata exists and parses.

Leases: Kubernetes has no TTL; liveness is the pod's readiness. The lease id is the instance id (the
reference runtime's 53-bit hash of the resource name, so it never changes for a pod); the lease is the
worker's resource (:mod:`dyndisc.backends.kubernetes.worker`), followed through the informer. See
``docs/backends/kubernetes.md``.
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from dyndisc._concurrency import Wake
from dyndisc._entries import (
    EntryAdded,
    EntryEvent,
    EntryRemoved,
    EntryResync,
    MetadataEntry,
    validate_entry_key,
)
from dyndisc._errors import (
    ConfigurationError,
    LeaseNotFoundError,
    MissingExtraError,
    RegistrationConflictError,
)
from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._models import Instance, InstanceQuery
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.diagnosis import BackendDoctor
from dyndisc.backends.kubernetes.entries import UnboundEntries, join_entries
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError
from dyndisc.backends.kubernetes.identity import PODINFO_DIR, DiscoveryMode, PodIdentity, namespace_from_env
from dyndisc.backends.kubernetes.informer import NamespaceInformer
from dyndisc.backends.kubernetes.join import (
    KIND,
    LABEL_SELECTOR,
    PodState,
    WorkerRecord,
    join,
    merge_pods,
    parse_worker,
    pod_containers,
    pod_states,
    resources_path,
)
from dyndisc.backends.kubernetes.scope import check_selector, combine, selector_from_env
from dyndisc.backends.kubernetes.siphash import instance_id_for
from dyndisc.backends.kubernetes.worker import WorkerResource, delete_resource

if TYPE_CHECKING:
    from dyndisc.backends.kubernetes.api import KubeApi
    from dyndisc.backends.kubernetes.reflector import Reflector

log = logging.getLogger("dyndisc.kubernetes")

#: Seconds to wait after a change before recomputing the instance set, so a burst becomes one update.
DEFAULT_DEBOUNCE = 0.2


class KubernetesDiscovery(DiscoveryBackend):
    """Discovery through the Kubernetes API (see the module docstring for the model).

    ``namespace`` is where workers and watches live (default: ``POD_NAMESPACE``, else the kubeconfig's
    namespace, else ``default``). ``identity`` is this worker's pod (default: read from ``/etc/podinfo/*`` or
    ``POD_NAME``, ``POD_NAMESPACE``, ``POD_UID`` when the runtime first grants a lease; a process that only
    lists and watches needs none). ``kubeconfig`` is a path or a parsed kubeconfig (default: ``$KUBECONFIG``,
    ``~/.kube/config``, or what a pod sees: ``KUBERNETES_SERVICE_HOST`` and the service account in
    ``service_account_dir``). ``mode`` is ``pod`` or ``container`` (default: ``DYN_KUBE_DISCOVERY_MODE``).
    ``label_selector`` scopes what its watches and lists read to the objects it selects, e.g.
    ``deployment_selector("my-graph")`` for one DynamoGraphDeployment (default: ``DYN_KUBE_LABEL_SELECTOR``;
    unset, the whole namespace).
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
        mode: DiscoveryMode | str | None = None,
        service_account_dir: Path | None = None,
        label_selector: str | None = None,
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
        if mode is None:
            mode = (
                DiscoveryMode.CONTAINER
                if identity is not None and identity.container is not None
                else DiscoveryMode.from_env()
            )
        self.mode = DiscoveryMode(mode)
        #: What watches and lists are scoped to (a label selector), or ``None``: the whole namespace.
        self.label_selector = (
            selector_from_env()
            if label_selector is None
            else check_selector(label_selector, "the label_selector of KubernetesDiscovery") or None
        )
        self._service_account_dir = service_account_dir
        self._api: KubeApi | None = None
        self._connect_lock = anyio.Lock()
        self._resource: WorkerResource | None = None
        self._informers: dict[tuple[str, str | None], NamespaceInformer] = {}
        #: How many times the watches of this backend recomputed their instance set (a diagnostic: a burst
        #: of changes within ``debounce`` seconds costs one recomputation per watch).
        self.recomputations = 0

    # -- connection ----------------------------------------------------------------------------------------
    async def api(self) -> KubeApi:
        """The API client, connected on first use."""
        async with self._connect_lock:
            if self._api is None:
                try:
                    from dyndisc.backends.kubernetes.api import SERVICE_ACCOUNT_DIR, connect
                except ImportError as exc:  # the client comes with the extra
                    raise MissingExtraError(
                        "the 'kubernetes' backend", exc.name or "?", "kubernetes"
                    ) from exc

                self._api = await connect(
                    self._kubeconfig, service_account_dir=self._service_account_dir or SERVICE_ACCOUNT_DIR
                )
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
            self.identity = PodIdentity.from_env(
                podinfo=self._podinfo_dir, default_namespace=namespace, mode=self.mode
            )
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

    async def informer(self, namespace: str | None = None) -> NamespaceInformer:
        """The shared informer of ``namespace`` (default: this backend's) in this backend's scope: one per
        backend, namespace and label selector."""
        namespace = namespace or await self.namespace()
        key = (namespace, self.label_selector)
        found = self._informers.get(key)
        if found is None:
            found = self._informers[key] = NamespaceInformer(
                await self.api(),
                namespace,
                mode=self.mode,
                watch_timeout=self.watch_timeout,
                label_selector=self.label_selector,
            )
        return found

    # -- worker side -----------------------------------------------------------------------------------
    async def _worker(self) -> WorkerResource:
        if self._resource is None:
            self._resource = WorkerResource(await self._identity(), self._call)
        return self._resource

    def _own_lease(self, lease: Lease) -> bool:
        return self.identity is not None and lease.id == self.identity.instance_id

    async def grant_lease(self, ttl: float) -> Lease:
        """Apply this worker's custom resource (replacing a stale one); the lease id is the hash of its name.
        Every grant is a holder of the one resource (runtimes sharing this backend share it)."""
        worker = await self._worker()
        holder = worker.hold()
        await worker.create(holder)
        return Lease(id=worker.pod.instance_id, ttl=ttl, holder=holder)

    async def keep_alive(self, lease: Lease) -> float:
        """Check that the custom resource is still as this worker left it (from the informer's copy when it is
        in step, else by asking), re-applying content someone else changed."""
        if not self._own_lease(lease) or self._resource is None:
            raise LeaseNotFoundError(f"lease {lease.id:x} is not this worker's")
        await self._resource.check(lease.holder)
        return lease.ttl

    @asynccontextmanager
    async def follow_leases(self, renew_now: Callable[[], None]) -> AsyncIterator[object]:
        """Follow this worker's resource through the informer's name-scoped reflector while the runtime holds
        its lease: a change wakes the keep-alive at once, and a keep-alive needs no request."""
        worker = await self._worker()
        source = (await self.informer(worker.pod.namespace)).own(worker.name)

        def changed(name: str | None) -> None:
            worker.observe(name)
            if name is None or name == worker.name:
                renew_now()

        worker.follower = source
        try:
            async with source.subscribe(changed, wait=False):
                yield source
        finally:
            if not source.subscribers:
                worker.follower = None
                worker.synced = False

    async def revoke_lease(self, lease: Lease) -> None:
        """Revoke ``lease``: this worker's own (its holder's endpoints leave; the resource is deleted with the
        last holder), or another worker's, whose resource is deleted (a no-op if none)."""
        if self._own_lease(lease):
            worker = await self._worker()
            await worker.release(lease.holder if worker.holds(lease.holder) else None)
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
                f"instance {instance.instance_id:x} of {instance.endpoint_id} is not {worker.name!r}'s (its "
                f"instance id is {pod.instance_id:x}): on Kubernetes an instance id is the hash of its "
                "worker's resource name (its pod's), so only that worker can register it"
            )
        await worker.register(lease.holder, instance)
        return instance

    async def unregister(self, instance: Instance) -> None:
        await (await self._worker()).unregister(instance)

    # -- watcher side ----------------------------------------------------------------------------------
    async def list(self, query: InstanceQuery) -> list[Instance]:
        pods, workers = await self._read_namespace()
        return _ordered(join(pods, workers, query).values())

    async def _read_namespace(self) -> tuple[dict[str, PodState], dict[str, WorkerRecord]]:
        """The readiness of every worker and every resource, read now (a list must see writes that a
        watch may not have delivered yet)."""
        namespace = await self.namespace()
        informer = await self.informer(namespace)
        ready = await self._call(
            "GET",
            informer.readiness.reflector.path,
            f"listing {informer.readiness.reflector.what}",
            query={"labelSelector": combine(LABEL_SELECTOR, self.label_selector)},
        )
        scoped = {"labelSelector": self.label_selector} if self.label_selector else None
        crs = await self._call(
            "GET", resources_path(namespace), f"listing {informer.workers.reflector.what}", query=scoped
        )
        workers = {}
        for obj in crs.get("items") or ():
            record = parse_worker(obj)
            if record is not None:
                workers[record.name] = record
        items = ready.get("items") or ()
        if self.mode is DiscoveryMode.CONTAINER:
            pods = {p.name: p for obj in items for p in pod_containers(obj)}
        else:
            pods = pod_states(items)
        return pods, workers

    @asynccontextmanager
    async def watch(self, query: InstanceQuery) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        informer = await self.informer()
        wake = Wake()
        async with informer.watch(wake.set):
            yield self._events(informer, query, wake)

    async def _events(
        self, informer: NamespaceInformer, query: InstanceQuery, wake: Wake
    ) -> AsyncIterator[DiscoveryEvent]:
        wake.clear()
        known = informer.matching(query)
        relists = informer.relists
        yield Resync(instances=tuple(_ordered(known.values())))
        while True:
            await wake.wait()
            await anyio.sleep(self.debounce)  # coalesce a burst (a rollout) into one recomputation
            wake.clear()
            fresh = informer.matching(query)
            self.recomputations += 1
            if informer.relists != relists:
                relists = informer.relists
                known = fresh
                yield Resync(instances=tuple(_ordered(known.values())))
                continue
            left = sorted(known.keys() - fresh.keys(), key=str)
            reasons = informer.removal_reasons(known[key] for key in left) if left else {}
            for key in left:
                gone = known[key]
                yield Removed(gone.endpoint_id, gone.instance_id, reasons[key])
            for key, instance in sorted(fresh.items(), key=lambda kv: str(kv[0])):
                if known.get(key) != instance:
                    yield Added(instance=instance)
            known = fresh

    # -- metadata entries (see dyndisc.backends.kubernetes.entries) --------------------------------------
    async def put_entry(self, entry: MetadataEntry, lease: Lease | None) -> None:
        # An entry lives in one place: bound, in this worker's resource; unbound, in the namespace's. Written
        # to one, it leaves the other, or a reader would see the old copy beside the new (seed 2 on
        # Kubernetes: an entry put again unbound kept its bound copy, which shadowed the new value).
        unbound = UnboundEntries(await self.namespace(), self._call)
        if lease is None:
            await unbound.put(entry)
            if self._resource is not None:
                await self._resource.delete_entry(entry.bucket, entry.key)
            return
        worker = await self._worker()
        if lease.id != worker.pod.instance_id:
            raise RegistrationConflictError(
                f"lease {lease.id:x} is not pod {worker.pod.name!r}'s: on Kubernetes an entry bound to a "
                "lease lives in that pod's DynamoWorkerMetadata"
            )
        await worker.put_entry(entry)
        await unbound.delete(entry.bucket, entry.key)

    async def delete_entry(self, bucket: str, key: str) -> None:
        if self._resource is not None and await self._resource.delete_entry(bucket, key):
            return
        await UnboundEntries(await self.namespace(), self._call).delete(bucket, key)

    async def list_entries(self, bucket: str, prefix: str = "") -> builtins.list[MetadataEntry]:
        pods, workers = await self._read_namespace()
        live = join_entries(pods, workers, bucket, _prefix(prefix))
        return [live[k] for k in sorted(live)]

    @asynccontextmanager
    async def watch_entries(self, bucket: str, prefix: str = "") -> AsyncIterator[AsyncIterator[EntryEvent]]:
        # The same shared informer as instances (entries are live while their worker is), joined on entries.
        informer = await self.informer()
        wake = Wake()
        async with informer.watch(wake.set):
            yield self._entry_events(informer, bucket, _prefix(prefix), wake)

    async def _entry_events(
        self, informer: NamespaceInformer, bucket: str, prefix: str, wake: Wake
    ) -> AsyncIterator[EntryEvent]:
        wake.clear()
        known = _entries_of(informer, bucket, prefix)
        relists = informer.relists
        yield EntryResync(entries=tuple(known[k] for k in sorted(known)))
        while True:
            await wake.wait()
            await anyio.sleep(self.debounce)  # coalesce a burst into one recomputation
            wake.clear()
            fresh = _entries_of(informer, bucket, prefix)
            if informer.relists != relists:
                relists = informer.relists
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
        try:
            from dyndisc.backends.kubernetes.doctor import KubeDoctor
        except ImportError as exc:  # it reads the shipped Role with pyyaml, from the extra
            raise MissingExtraError("the 'kubernetes' backend", exc.name or "yaml", "kubernetes") from exc

        return KubeDoctor(self)

    async def aclose(self) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            await api.aclose()

    @property
    def stale_since(self) -> float | None:
        stale = [i.stale_since for i in self._informers.values() if i.stale_since is not None]
        return min(stale) if stale else None

    @property
    def reflectors(self) -> tuple[Reflector[Any], ...]:
        """Every reflector in use now (a diagnostic: one per kind and namespace, however many watches)."""
        return tuple(s.reflector for i in self._informers.values() for s in i.sources())


def _prefix(prefix: str) -> str:
    """``prefix`` checked as the beginning of an entry key (or empty)."""
    if prefix:
        validate_entry_key(prefix.rstrip("/") or "x")
    return prefix


def _ordered(instances: Any) -> list[Instance]:
    return sorted(instances, key=lambda i: (i.namespace, i.component, i.endpoint, i.instance_id))


def _entries_of(informer: NamespaceInformer, bucket: str, prefix: str) -> dict[str, MetadataEntry]:
    """The live entries of ``bucket`` under ``prefix`` in the informer's namespace, by key."""
    return join_entries(merge_pods(informer.readiness.items.values()), informer.workers.items, bucket, prefix)
