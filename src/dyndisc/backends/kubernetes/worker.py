"""The worker side of Kubernetes discovery: this pod's ``DynamoWorkerMetadata``, written by server-side apply.

The resource is named after the pod and owned by it (garbage-collected with it); ``spec.data`` holds every
endpoint the worker registered, in the reference runtime's layout. The "lease" of a Kubernetes worker is
this resource: granting applies it, a keep-alive checks it still exists (re-applying it if someone else
changed it), and revoking deletes it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from dyndisc._dynamo import READABLE, reference_skips
from dyndisc._entries import MetadataEntry
from dyndisc._errors import LeaseNotFoundError, RegistrationConflictError
from dyndisc._models import EndpointId, Instance
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError
from dyndisc.backends.kubernetes.identity import PodIdentity
from dyndisc.backends.kubernetes.join import GROUP, KIND, PLURAL, SIDE_ENDPOINTS, VERSION, worker_data

log = logging.getLogger("dyndisc.kubernetes")

#: The server-side-apply field manager of worker metadata (the reference runtime's, so either can take over).
FIELD_MANAGER = "dynamo-worker"

#: ``call(method, path, what, **request options)``: one API request, errors explained.
Call = Callable[..., Awaitable[JsonObject]]
K = TypeVar("K")
V = TypeVar("V")


def resources_path(namespace: str) -> str:
    """The API path of the DynamoWorkerMetadata resources of ``namespace``."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


class WorkerResource:
    """The ``DynamoWorkerMetadata`` of one pod and the endpoints it registered."""

    def __init__(self, pod: PodIdentity, call: Call) -> None:
        self.pod = pod
        self._call = call
        self._lock = anyio.Lock()  # one apply at a time: each writes the whole set of endpoints
        self.endpoints: dict[EndpointId, Instance] = {}
        #: Metadata entries bound to this worker's lease, by bucket and key.
        self.entries: dict[tuple[str, str], MetadataEntry] = {}
        self.path = f"{resources_path(pod.namespace)}/{pod.name}"
        self.title = f"{KIND} {pod.namespace}/{pod.name}"

    def _body(self) -> JsonObject:
        owner = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": self.pod.name,
            "uid": self.pod.uid,
            "controller": False,
            "blockOwnerDeletion": False,
        }
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": self.pod.name, "namespace": self.pod.namespace, "ownerReferences": [owner]},
            "spec": {"data": worker_data(self.endpoints.values(), self.entries.values())},
        }

    async def _apply(self) -> JsonObject:
        """Server-side apply the resource with every endpoint registered."""
        return await self._call(
            "PATCH",
            self.path,
            f"applying {self.title}",
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=self._body(),
            content_type="application/apply-patch+yaml",
        )

    async def create(self) -> None:
        """Apply the resource. One this very pod (same uid) already owns is kept and updated in place (an
        earlier runtime of this pod, or a lease replaced); one left by an earlier pod of the same name is
        replaced."""
        async with self._lock:
            await self._clear_stale()
            await self._apply()

    async def _clear_stale(self) -> None:
        try:
            existing = await self._call("GET", self.path, f"reading {self.title}")
        except KubeStatusError as exc:
            if exc.status == 404:
                return
            raise
        meta = existing.get("metadata") or {}
        owners = [o for o in meta.get("ownerReferences") or () if isinstance(o, dict)]
        pod = self.pod
        if any(o.get("kind") == "Pod" and o.get("uid") == pod.uid for o in owners):
            return  # ours already: applying updates it, and watchers never see this worker leave
        if not owners or any(o.get("kind") != "Pod" or o.get("name") != pod.name for o in owners):
            raise RegistrationConflictError(
                f"{self.title} exists and is not owned by pod {pod.name!r} "
                f"(owners: {[o.get('name') for o in owners]}); delete it if it is stale: "
                f"kubectl delete dwm -n {pod.namespace} {pod.name}"
            )
        log.info("replacing stale %s left by an earlier run of this pod", self.title)
        preconditions = {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
        try:
            await self._call(
                "DELETE",
                self.path,
                f"deleting stale {self.title}",
                body={"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions},
            )
        except KubeStatusError as exc:
            if exc.status not in (404, 409):  # gone already, or changed: the apply below settles it
                raise

    async def check(self) -> None:
        """Check the resource still exists, re-applying it if someone else changed its endpoints."""
        # Under the lock, so a registration applied meanwhile is not mistaken for a foreign change.
        async with self._lock:
            try:
                found = await self._call("GET", self.path, f"reading {self.title}")
            except KubeStatusError as exc:
                if exc.status == 404:
                    raise LeaseNotFoundError(f"{self.title} was deleted behind this worker's back") from None
                raise
            meta = found.get("metadata") or {}
            owners = [o for o in meta.get("ownerReferences") or () if isinstance(o, dict)]
            if not any(o.get("kind") == "Pod" and o.get("uid") == self.pod.uid for o in owners):
                raise LeaseNotFoundError(
                    f"{self.title} now belongs to another pod than {self.pod.name!r} (uid {self.pod.uid})"
                )
            spec = found.get("spec")
            data = spec.get("data") if isinstance(spec, dict) else None
            wanted = worker_data(self.endpoints.values(), self.entries.values())
            if _filled(data) != _filled(wanted):
                log.warning("%s was changed by someone else; re-applying it", self.title)
                await self._apply()

    async def register(self, instance: Instance) -> None:
        """Add or replace ``instance`` in the resource."""
        async with self._lock:
            previous = self.endpoints.get(instance.endpoint_id)
            if previous == instance:
                return
            why = reference_skips(instance)
            if why is not None and (previous is None or reference_skips(previous) is None):
                log.warning(
                    "%s is not visible to Dynamo: the reference runtime skips its record because %s (it "
                    "reads %s); it is written to spec.data.%s, which only dyndisc reads, so that Dynamo "
                    "still sees this pod's other endpoints",
                    instance.endpoint_id,
                    why,
                    READABLE,
                    SIDE_ENDPOINTS,
                )
            self.endpoints[instance.endpoint_id] = instance
            try:
                await self._apply()
            except BaseException:
                _restore(self.endpoints, instance.endpoint_id, previous)
                raise

    async def unregister(self, instance: Instance) -> None:
        """Remove ``instance``'s endpoint from the resource (a no-op if it is not there)."""
        async with self._lock:
            previous = self.endpoints.pop(instance.endpoint_id, None)
            if previous is None:
                return
            try:
                await self._apply()
            except BaseException:
                self.endpoints[instance.endpoint_id] = previous
                raise

    async def put_entry(self, entry: MetadataEntry) -> None:
        """Add or replace a lease-bound metadata entry in the resource."""
        async with self._lock:
            ident = (entry.bucket, entry.key)
            previous = self.entries.get(ident)
            if previous == entry:
                return
            self.entries[ident] = entry
            try:
                await self._apply()
            except BaseException:
                _restore(self.entries, ident, previous)
                raise

    async def delete_entry(self, bucket: str, key: str) -> bool:
        """Remove a metadata entry from the resource; ``False`` if it does not hold it."""
        async with self._lock:
            previous = self.entries.pop((bucket, key), None)
            if previous is None:
                return False
            try:
                await self._apply()
            except BaseException:
                self.entries[(bucket, key)] = previous
                raise
            return True

    async def delete(self) -> None:
        """Delete the resource (every endpoint of this worker leaves at once)."""
        self.endpoints.clear()
        self.entries.clear()
        await delete_resource(self._call, self.pod.namespace, self.pod.name)


async def delete_resource(call: Call, namespace: str, name: str) -> None:
    """Delete the DynamoWorkerMetadata ``namespace/name``; a no-op if it is gone."""
    try:
        await call("DELETE", f"{resources_path(namespace)}/{name}", f"deleting {KIND} {namespace}/{name}")
    except KubeStatusError as exc:
        if exc.status != 404:
            raise


def _restore(mapping: dict[K, V], key: K, previous: V | None) -> None:
    if previous is None:
        mapping.pop(key, None)
    else:
        mapping[key] = previous


def _filled(data: object) -> dict[str, object]:
    """The non-empty maps of ``spec.data`` (server-side apply may turn an empty map into null)."""
    return {k: v for k, v in data.items() if v} if isinstance(data, dict) else {}


__all__ = ["FIELD_MANAGER", "WorkerResource", "delete_resource", "resources_path"]
