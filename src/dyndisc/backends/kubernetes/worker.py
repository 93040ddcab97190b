"""The worker side of Kubernetes discovery: this pod's ``DynamoWorkerMetadata``, written by server-side apply.

The resource is named after the pod (``{pod}-{container}`` in container mode) and owned by the pod, so it
is garbage-collected with it; ``spec.data`` holds every endpoint the worker registered, in the reference
runtime's layout. The "lease" of a Kubernetes worker is this resource: granting applies it, revoking
deletes it, and a keep-alive checks it is still there as the worker left it.

A keep-alive reads the resource from the informer's name-scoped reflector (no request) once that reflector
has seen the worker's own last write; until then, or while its watch is failing, it asks the server. Every
change the reflector hears of wakes the keep-alive at once, so a deleted resource is re-applied, and one
edited by someone else repaired, within the watch's latency rather than half a TTL.

Every write carries the annotation ``dyndisc/writer`` (host, pid and a random token of this process). A
resource last written by another writer means two processes use one resource name (two workers in one pod
in pod mode, or a copy of a pod); the one that finds its write replaced stops with a
:class:`~dyndisc.RegistrationConflictError` naming both, rather than fighting over the resource.

Several runtimes may share one backend (a router with many runtimes): each lease they are granted is a
*holder* of the one resource, which holds the endpoints of them all and is deleted when the last one
revokes.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from dyndisc._dynamo import READABLE, reference_skips
from dyndisc._entries import MetadataEntry
from dyndisc._errors import LeaseNotFoundError, RegistrationConflictError
from dyndisc._models import EndpointId, Instance
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError
from dyndisc.backends.kubernetes.identity import PodIdentity
from dyndisc.backends.kubernetes.informer import SharedReflector
from dyndisc.backends.kubernetes.join import (
    GROUP,
    KIND,
    SIDE_ENDPOINTS,
    VERSION,
    WRITER_ANNOTATION,
    WorkerRecord,
    parse_worker,
    resources_path,
    worker_data,
)
from dyndisc.backends.kubernetes.scope import DEPLOYMENT_LABEL

log = logging.getLogger("dyndisc.kubernetes")

#: The server-side-apply field manager of worker metadata (the reference runtime's, so either can take over).
FIELD_MANAGER = "dynamo-worker"

#: ``call(method, path, what, **request options)``: one API request, errors explained.
Call = Callable[..., Awaitable[JsonObject]]
K = TypeVar("K")
V = TypeVar("V")


def writer_id() -> str:
    """What this process marks its writes with: host, pid and a random token (unique across restarts)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class WorkerResource:
    """The ``DynamoWorkerMetadata`` of one worker, the endpoints its holders registered, and what it knows of
    the resource's state on the server."""

    def __init__(self, pod: PodIdentity, call: Call) -> None:
        self.pod = pod
        self.name = pod.resource_name
        self._call = call
        self._lock = anyio.Lock()  # one write (or check) at a time: each writes the whole set of endpoints
        self._holders: dict[int, dict[EndpointId, Instance]] = {}
        self._tokens = itertools.count(1)
        #: Metadata entries bound to this worker's leases, by bucket and key (kept until the last holder).
        self.entries: dict[tuple[str, str], MetadataEntry] = {}
        self.path = f"{resources_path(pod.namespace)}/{self.name}"
        self.title = f"{KIND} {pod.namespace}/{self.name}"
        #: This process's mark on its writes (the ``dyndisc/writer`` annotation).
        self.writer = writer_id()
        #: The resourceVersion this worker last wrote, or accepted as its own after checking it.
        self.known_rv: str | None = None
        #: The uid of the resource this worker last wrote: another uid in a write's answer means the
        #: resource was deleted and the write created it anew.
        self.known_uid: str | None = None
        #: Holders whose resource was deleted behind their back and created anew by a write of theirs (a
        #: server-side apply creates what is missing): their leases are lost all the same (every watcher saw
        #: this worker leave), and their next keep-alive check says so.
        self._recreated: set[int] = set()
        #: Whether :attr:`follower` has seen :attr:`known_rv` (or later): its copy can then be trusted.
        self.synced = False
        #: Whether the last apply was cut short with no answer: it may have landed, so a difference the
        #: next check finds may be this worker's own write rather than someone else's.
        self._cut_short = False
        #: The name-scoped reflector of this resource, while the runtime follows it.
        self.follower: SharedReflector[WorkerRecord] | None = None
        #: Keep-alive checks made, and requests they sent (a diagnostic: none while the follower is in step).
        self.checks = 0
        self.keep_alive_requests = 0

    # -- holders -----------------------------------------------------------------------------------------
    def hold(self) -> int:
        """A new holder (one granted lease); its token tells its endpoints apart."""
        token = next(self._tokens)
        self._holders[token] = {}
        return token

    def holds(self, holder: int) -> bool:
        """Whether ``holder`` is still a holder (not revoked, not lost)."""
        return holder in self._holders

    @property
    def endpoints(self) -> dict[EndpointId, Instance]:
        """Every endpoint of every holder (the resource's content)."""
        merged: dict[EndpointId, Instance] = {}
        for registered in self._holders.values():
            merged.update(registered)
        return merged

    # -- what the server holds ---------------------------------------------------------------------------
    def observe(self, name: str | None) -> None:
        """The follower heard of a change (of ``name``, or a relist): note whether it caught up with us."""
        if name is None or name == self.name:
            self._note_sync()

    def _note_sync(self) -> None:
        if self.synced or self.known_rv is None or self.follower is None:
            return
        cached = self.follower.items.get(self.name)
        if cached is not None and cached.resource_version == self.known_rv:
            self.synced = True

    def _wrote(self, obj: JsonObject) -> None:
        meta = obj.get("metadata") or {}
        rv, uid = meta.get("resourceVersion"), meta.get("uid")
        if isinstance(uid, str) and uid:
            if self.known_uid is not None and uid != self.known_uid:
                self._recreated.update(self._holders)
            self.known_uid = uid
        self.known_rv = rv if isinstance(rv, str) and rv else None
        self.synced = False
        self._note_sync()  # the watch may have delivered our write before its answer came

    async def _current(self) -> WorkerRecord | None:
        """The resource as it is now: the follower's copy when it is in step, else asked of the server."""
        follower = self.follower
        if follower is not None and follower.live and self.synced:
            return follower.items.get(self.name)
        self.keep_alive_requests += 1
        try:
            found = await self._call("GET", self.path, f"reading {self.title}")
        except KubeStatusError as exc:
            if exc.status == 404:
                return None
            raise
        return parse_worker(found)

    def _conflict(self, record: WorkerRecord) -> RegistrationConflictError:
        other = (
            f"'{record.writer}'"
            if record.writer
            else "a writer that does not mark its writes (the reference runtime, or an older dyndisc)"
        )
        return RegistrationConflictError(
            f"{self.title} was overwritten by another process: this one marks its writes '{self.writer}', "
            f"the last write came from {other}. Two workers use the resource name {self.name!r}: run one "
            "worker per pod, or set DYN_KUBE_DISCOVERY_MODE=container with a CONTAINER_NAME per container. "
            "This runtime stops rather than overwrite the other's endpoints"
        )

    def _foreign_writer(self, record: WorkerRecord | None) -> bool:
        return (
            record is not None
            and record.resource_version != self.known_rv
            and self.pod.uid in record.owner_uids
            and record.writer != self.writer
        )

    # -- writing -----------------------------------------------------------------------------------------
    def _body(self) -> JsonObject:
        owner = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": self.pod.name,
            "uid": self.pod.uid,
            "controller": False,
            "blockOwnerDeletion": False,
        }
        metadata: JsonObject = {
            "name": self.name,
            "namespace": self.pod.namespace,
            "ownerReferences": [owner],
            "annotations": {WRITER_ANNOTATION: self.writer},
        }
        if self.pod.deployment:
            # What a watcher scoped to the deployment selects (see scope.py).
            metadata["labels"] = {DEPLOYMENT_LABEL: self.pod.deployment}
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": metadata,
            "spec": {"data": worker_data(self.endpoints.values(), self.entries.values())},
        }

    async def _apply(self) -> None:
        """Server-side apply the resource with every endpoint registered."""
        follower = self.follower
        if follower is not None and follower.live and self.synced:
            cached = follower.items.get(self.name)
            if self._foreign_writer(cached):
                assert cached is not None
                raise self._conflict(cached)
        try:
            applied = await self._call(
                "PATCH",
                self.path,
                f"applying {self.title}",
                query={"fieldManager": FIELD_MANAGER, "force": "true"},
                body=self._body(),
                content_type="application/apply-patch+yaml",
            )
        except KubeStatusError:
            raise  # answered: it did not land
        except BaseException:
            # Cancelled, or no answer: it may have landed. Until a check reads the server, the version
            # this worker knew (and a follower's copy of it) no longer says what the server holds.
            self._cut_short, self.known_rv, self.synced = True, None, False
            raise
        self._cut_short = False
        self._wrote(applied)

    async def create(self, holder: int) -> None:
        """Apply the resource for ``holder``. One this very pod (same uid) already owns is kept and updated
        in place (an earlier runtime of this pod, or a lease replaced); one left by an earlier pod of the
        same name is replaced."""
        async with self._lock:
            try:
                await self._clear_stale()
                await self._apply()
            except BaseException:
                self._holders.pop(holder, None)
                raise
            finally:
                self._recreated.discard(holder)  # a new holder's resource is the one it just wrote

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
            # Ours already: applying updates it, and watchers never see this worker leave.
            writer = (meta.get("annotations") or {}).get(WRITER_ANNOTATION)
            if writer and writer != self.writer:
                log.warning(
                    "taking over %s from the writer '%s' (an earlier run in this pod, or another process "
                    "using the same name: if that one still runs, it will stop with an error)",
                    self.title,
                    writer,
                )
            return
        if not owners or any(o.get("kind") != "Pod" or o.get("name") != pod.name for o in owners):
            raise RegistrationConflictError(
                f"{self.title} exists and is not owned by pod {pod.name!r} "
                f"(owners: {[o.get('name') for o in owners]}); delete it if it is stale: "
                f"kubectl delete dwm -n {pod.namespace} {self.name}"
            )
        log.info("replacing stale %s left by an earlier pod named %s", self.title, pod.name)
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

    async def check(self, holder: int) -> None:
        """The keep-alive of ``holder``: the resource must still exist, owned by this pod and last written by
        this process; content someone else changed is re-applied.

        Raises :class:`~dyndisc.LeaseNotFoundError` when the resource is gone (or another pod's now),
        :class:`~dyndisc.RegistrationConflictError` when another process writes it too.
        """
        # Under the lock, so a write of ours in flight is not mistaken for someone else's.
        async with self._lock:
            self.checks += 1
            if holder not in self._holders:
                raise LeaseNotFoundError(f"{self.title}: this runtime's lease was revoked or lost")
            if holder in self._recreated:
                self._recreated.discard(holder)
                self._holders.pop(holder, None)
                raise LeaseNotFoundError(
                    f"{self.title} was deleted behind this worker's back (a registration of this worker "
                    "created it again)"
                )
            record = await self._current()
            if record is None:
                self._holders.pop(holder, None)
                raise LeaseNotFoundError(f"{self.title} was deleted behind this worker's back")
            if record.resource_version == self.known_rv:
                return  # as we left it
            if self.pod.uid not in record.owner_uids:
                self._holders.pop(holder, None)
                raise LeaseNotFoundError(
                    f"{self.title} now belongs to another pod than {self.pod.name!r} (uid {self.pod.uid})"
                )
            if record.writer != self.writer:
                raise self._conflict(record)
            if (
                not record.readable
                or set(record.instances) != set(self.endpoints.values())
                or set(record.entries) != set(self.entries.values())
            ):
                by = "a write of this worker's own cut short" if self._cut_short else "someone else"
                log.warning("%s was changed (by %s); re-applying it", self.title, by)
                await self._apply()
                return
            # Changed, but not in anything of ours (a label, an annotation): it is ours as it is.
            self.known_rv = record.resource_version
            self.synced = False
            self._note_sync()

    async def register(self, holder: int, instance: Instance) -> None:
        """Add or replace ``instance`` in the resource, for ``holder``."""
        async with self._lock:
            registered = self._holders.get(holder)
            if registered is None:
                raise LeaseNotFoundError(f"{self.title}: this runtime's lease was revoked or lost")
            before = self.endpoints
            previous = registered.get(instance.endpoint_id)
            registered[instance.endpoint_id] = instance
            if self.endpoints == before:
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
            try:
                await self._apply()
            except BaseException:
                _restore(registered, instance.endpoint_id, previous)
                raise

    async def unregister(self, instance: Instance) -> None:
        """Remove ``instance``'s endpoint from the resource (a no-op if it is not there): from the holders
        that registered this very record, else from every holder of a record of this instance (same endpoint
        and id). The caller may know only an update it tried: one cancelled in flight leaves the holder with
        the record before it, which stays written by every later apply unless removed (chaos seed 2010)."""
        endpoint = instance.endpoint_id
        async with self._lock:
            holding = {
                token: registered
                for token, registered in self._holders.items()
                if (held := registered.get(endpoint)) is not None and held.instance_id == instance.instance_id
            }
            exact = {token: r for token, r in holding.items() if r[endpoint] == instance}
            removed = {token: registered.pop(endpoint) for token, registered in (exact or holding).items()}
            if not removed:
                return
            try:
                await self._apply()
            except BaseException:
                for token, previous in removed.items():
                    if token in self._holders:
                        self._holders[token][instance.endpoint_id] = previous
                raise

    async def release(self, holder: int | None) -> None:
        """Revoke ``holder``'s lease: its endpoints leave; the resource is deleted with the last holder (or at
        once when ``holder`` is ``None``: the pod's lease revoked as a whole)."""
        async with self._lock:
            if holder is not None:
                self._holders.pop(holder, None)
            if holder is not None and self._holders:
                await self._apply()
                return
            self._holders.clear()
            self._recreated.clear()
            self.entries.clear()
            self.known_rv, self.known_uid, self.synced = None, None, False
            await delete_resource(self._call, self.pod.namespace, self.name)

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


__all__ = ["FIELD_MANAGER", "WorkerResource", "delete_resource", "writer_id"]
