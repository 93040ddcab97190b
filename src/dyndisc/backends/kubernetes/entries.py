"""Metadata entries on Kubernetes: where they live, and which of them are live.

An entry bound to a worker's lease lives in that worker's ``DynamoWorkerMetadata`` (model cards in
``spec.data.model_cards``, where the reference reads them, see :mod:`dyndisc.backends.kubernetes.join`) and is
live while its pod is (ready or draining in an EndpointSlice), as the worker's instances are. An entry written
with no lease lives in one resource per namespace, :data:`UNBOUND_RESOURCE`, that no pod owns: it stays until
deleted. Each write there is a JSON merge patch of one key, so writers never overwrite each other's entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dyndisc._entries import MetadataEntry
from dyndisc.backends.kubernetes.errors import KubeStatusError
from dyndisc.backends.kubernetes.join import (
    BUCKET_MAPS,
    GROUP,
    KIND,
    OTHER_ENTRIES,
    VERSION,
    PodState,
    WorkerRecord,
    resources_path,
    worker_data,
)
from dyndisc.backends.kubernetes.worker import Call

#: The resource of the entries written with no lease. No pod has this name in a namespace using dyndisc: it
#: is reserved (a pod of that name would only add its own entries to the shared ones).
UNBOUND_RESOURCE = "dyndisc-unbound-entries"


def join_entries(
    pods: Mapping[str, PodState], workers: Mapping[str, WorkerRecord], bucket: str, prefix: str
) -> dict[str, MetadataEntry]:
    """The live entries of ``bucket`` whose key starts with ``prefix``: those of workers whose pod takes or
    finishes work (the pod's uid matching the resource's owner), and every unbound entry."""
    live: dict[str, MetadataEntry] = {}
    for name in sorted(workers):
        worker = workers[name]
        if name != UNBOUND_RESOURCE:
            pod = pods.get(name)
            if pod is None or (
                pod.uid is not None and worker.owner_uids and pod.uid not in worker.owner_uids
            ):
                continue
        for entry in worker.entries:
            if entry.bucket == bucket and entry.key.startswith(prefix):
                live[entry.key] = entry
    return live


def _patch_body(bucket: str, key: str, value: Any) -> dict[str, Any]:
    found = BUCKET_MAPS.get(bucket)
    data = {found: {key: value}} if found is not None else {OTHER_ENTRIES: {bucket: {key: value}}}
    return {"spec": {"data": data}}


class UnboundEntries:
    """The entries of a namespace that no lease holds, in :data:`UNBOUND_RESOURCE`."""

    def __init__(self, namespace: str, call: Call) -> None:
        self.namespace = namespace
        self._call = call
        self.path = f"{resources_path(namespace)}/{UNBOUND_RESOURCE}"
        self.title = f"{KIND} {namespace}/{UNBOUND_RESOURCE}"

    async def put(self, entry: MetadataEntry) -> None:
        """Write one entry, creating the resource if it is not there yet."""
        for _ in range(5):
            try:
                await self._patch(_patch_body(entry.bucket, entry.key, entry.value))
                return
            except KubeStatusError as exc:
                if exc.status != 404:
                    raise
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "metadata": {"name": UNBOUND_RESOURCE, "namespace": self.namespace},
                "spec": {"data": worker_data((), (entry,))},
            }
            try:
                await self._call("POST", resources_path(self.namespace), f"creating {self.title}", body=body)
                return
            except KubeStatusError as exc:
                if exc.status != 409:  # created by another writer meanwhile: patch it
                    raise
        raise KubeStatusError(409, "Conflict", "it kept being deleted and created", f"writing {entry}")

    async def delete(self, bucket: str, key: str) -> None:
        """Delete one entry (a no-op if it or the resource is absent)."""
        try:
            await self._patch(_patch_body(bucket, key, None))  # null deletes the key in a merge patch
        except KubeStatusError as exc:
            if exc.status != 404:
                raise

    async def _patch(self, body: dict[str, Any]) -> None:
        await self._call(
            "PATCH",
            self.path,
            f"writing {self.title}",
            body=body,
            content_type="application/merge-patch+json",
        )
