"""The pure part of Kubernetes discovery: read EndpointSlices, Pods and DynamoWorkerMetadata, and join them.

An instance is live when its worker is ready **and** its DynamoWorkerMetadata exists and parses. Readiness
comes from EndpointSlices in pod mode (a pod listed ready, or still serving while terminating: then it is
reported as draining) and from Pods in container mode (a container whose status is ready). Everything here
works on the JSON objects the API server sends, and never raises on garbage.

Readings that follow the reference runtime (``lib/runtime/src/discovery/kube/utils.rs``, release 1.6.1), so a
dyndisc frontend and a Dynamo frontend watching one namespace see the same instances:

* an endpoint whose ``conditions.ready`` is missing is **not** ready (the reference reads
  ``ready.unwrap_or(false)``; the EndpointSlice API would read it as "unknown, treat as ready", but its
  controller always writes it, so only hand-written slices differ);
* an endpoint without ``targetRef.uid`` is skipped: joining by name alone could attach the metadata of an
  earlier pod of that name (a StatefulSet's) to the new pod;
* in container mode a worker's resource is named ``{pod}-{container}`` (``{pod}`` for the container named
  ``main``) and its instance id is the hash of that name.

``spec.data`` holds what the reference runtime reads (``endpoints``, ``model_cards``, ``event_channels``,
``event_sources``) and two maps only dyndisc reads (the reference ignores unknown keys of ``spec.data``):
``dyndisc_endpoints``, the endpoint records Dynamo must not route to or cannot read (draining ones, and
transports it does not know: one unreadable entry would make it skip the pod's whole resource), and
``dyndisc_entries``, the metadata entries of other buckets, by bucket then key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dyndisc._dynamo import EVENT_CHANNELS_BUCKET, EVENT_SOURCES_BUCKET, MODEL_CARDS_BUCKET, reference_skips
from dyndisc._entries import MetadataEntry
from dyndisc._models import EndpointId, Instance, InstanceQuery, Readiness
from dyndisc.backends.kubernetes.siphash import instance_id_for

log = logging.getLogger("dyndisc.kubernetes")

GROUP, VERSION, PLURAL, KIND = "nvidia.com", "v1alpha1", "dynamoworkermetadatas", "DynamoWorkerMetadata"


def resources_path(namespace: str) -> str:
    """The API path of the DynamoWorkerMetadata resources of ``namespace``."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


#: Labels the operator puts on a component's Service (and its pods); the EndpointSlice controller copies the
#: Service's labels to its slices.
DISCOVERY_LABELS = {
    "nvidia.com/dynamo-discovery-backend": "kubernetes",
    "nvidia.com/dynamo-discovery-enabled": "true",
}
LABEL_SELECTOR = ",".join(f"{k}={v}" for k, v in DISCOVERY_LABELS.items())
#: The maps of ``spec.data`` the reference reads entries from, by bucket.
BUCKET_MAPS = {
    MODEL_CARDS_BUCKET: "model_cards",
    EVENT_CHANNELS_BUCKET: "event_channels",
    EVENT_SOURCES_BUCKET: "event_sources",
}
#: Endpoint records only dyndisc reads (draining, or a transport Dynamo cannot read).
SIDE_ENDPOINTS = "dyndisc_endpoints"
#: Entries of the buckets the reference has no map for: ``{bucket: {key: value}}``.
OTHER_ENTRIES = "dyndisc_entries"
#: The container that keeps the pod's own identity in container mode (the reference's constant).
MAIN_CONTAINER = "main"
#: The annotation a worker marks its writes with (``host/pid/token``), so that a second process writing
#: the same resource is noticed instead of silently overwriting it.
WRITER_ANNOTATION = "dyndisc/writer"

#: Names already warned about, so that a slice written without uids says so once, not at every change.
_warned: set[str] = set()
_WARN_LIMIT = 1000


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key in _warned:
        return
    if len(_warned) < _WARN_LIMIT:
        _warned.add(key)
    log.warning(message, *args)


def resource_name(pod: str, container: str | None) -> str:
    """The DynamoWorkerMetadata name of a worker: its pod's, or ``{pod}-{container}`` in container mode
    (the container named ``main`` keeps the pod's name, so pod-mode and container-mode watchers agree)."""
    if container is None or container == MAIN_CONTAINER:
        return pod
    return f"{pod}-{container}"


@dataclass(frozen=True, slots=True)
class PodState:
    """A worker as the readiness source lists it: the name of its resource (the pod's, or
    ``{pod}-{container}``), its pod's uid, and whether it takes work."""

    name: str
    uid: str
    readiness: Readiness


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A DynamoWorkerMetadata as watchers keep it: the worker's registered endpoint instances, and what the
    worker itself checks (who owns it, who wrote it last, its resourceVersion).

    A resource that cannot be read keeps a record with no instances (``readable`` false): it holds nothing
    for watchers, but it exists, which is what its worker needs to know.
    """

    name: str
    uid: str
    #: The uids of the pods that own it (a tuple: one, usually; a frozenset costs 200 bytes more each).
    owner_uids: tuple[str, ...]
    instances: tuple[Instance, ...]
    resource_version: str = ""
    writer: str | None = None
    readable: bool = True
    entries: tuple[MetadataEntry, ...] = ()


def slice_pods(endpoint_slice: Any) -> list[PodState]:
    """The pods of one EndpointSlice that take work (ready) or finish it (serving while terminating)."""
    if not isinstance(endpoint_slice, dict):
        return []
    found = []
    for endpoint in endpoint_slice.get("endpoints") or ():
        if not isinstance(endpoint, dict):
            continue
        ref = endpoint.get("targetRef")
        if (
            not isinstance(ref, dict)
            or ref.get("kind", "Pod") != "Pod"
            or not isinstance(ref.get("name"), str)
            or not ref["name"]
        ):
            continue
        found_conditions = endpoint.get("conditions")
        conditions: dict[str, Any] = found_conditions if isinstance(found_conditions, dict) else {}
        # Ready only when it says so (the reference's reading: a missing "ready" is not ready). A pod that
        # is terminating but still passes its readiness probe has ready=false, serving=true: it finishes
        # in-flight work (draining).
        if conditions.get("ready") is True:
            readiness = Readiness.READY
        elif conditions.get("serving") is True:
            readiness = Readiness.DRAINING
        else:
            continue
        uid = ref.get("uid")
        if not isinstance(uid, str) or not uid:
            slice_name = _name_of(endpoint_slice) or "?"
            _warn_once(
                f"slice-uid/{slice_name}/{ref['name']}",
                "skipping pod %r of EndpointSlice %r: its targetRef has no uid, and joining by name alone "
                "could attach an earlier pod's metadata to it (the EndpointSlice controller always writes "
                "the uid; fix whatever wrote this slice)",
                ref["name"],
                slice_name,
            )
            continue
        found.append(PodState(name=ref["name"], uid=uid, readiness=readiness))
    return found


def pod_containers(pod: Any) -> list[PodState]:
    """Container mode: the workers of one Pod, one per container whose status is ready (``main`` under the
    pod's own name); a ready container of a pod being deleted is draining."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return []
    assert isinstance(meta, dict)
    uid = meta.get("uid")
    if not isinstance(uid, str) or not uid:
        _warn_once(f"pod-uid/{name}", "skipping pod %r: it has no metadata.uid", name)
        return []
    status = pod.get("status")
    statuses = status.get("containerStatuses") if isinstance(status, dict) else None
    readiness = Readiness.DRAINING if meta.get("deletionTimestamp") else Readiness.READY
    found = []
    for container in statuses if isinstance(statuses, list) else ():
        if not isinstance(container, dict) or container.get("ready") is not True:
            continue
        container_name = container.get("name")
        if isinstance(container_name, str) and container_name:
            found.append(PodState(resource_name(name, container_name), uid, readiness))
    return found


def _name_of(obj: Any) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


def merge_pods(groups: Iterable[Iterable[PodState]]) -> dict[str, PodState]:
    """Pods listed by several slices, deduplicated: a pod ready in any slice is ready."""
    pods: dict[str, PodState] = {}
    for group in groups:
        for pod in group:
            seen = pods.get(pod.name)
            if seen is None or (seen.readiness is Readiness.DRAINING and pod.readiness is Readiness.READY):
                pods[pod.name] = pod
    return pods


def pod_states(slices: Iterable[Any]) -> dict[str, PodState]:
    """Every pod listed by the EndpointSlice objects ``slices`` (see :func:`merge_pods`)."""
    return merge_pods(slice_pods(s) for s in slices)


def endpoint_key(instance: Instance) -> str:
    """The key of an instance in ``spec.data.endpoints``: ``ns/comp/ep/{id:x}`` (the reference layout)."""
    return f"{instance.endpoint_id.path}/{instance.instance_id:x}"


def endpoint_entry(instance: Instance) -> dict[str, Any]:
    """The JSON of one instance in ``spec.data.endpoints``: the reference's tagged shape plus our fields."""
    body: dict[str, Any] = json.loads(instance.to_json())
    return {"type": "Endpoint", **body}


def hidden_from_reference(instance: Instance) -> bool:
    """Whether ``instance`` goes to :data:`SIDE_ENDPOINTS`: draining, or a record the reference skips."""
    return instance.readiness is Readiness.DRAINING or reference_skips(instance) is not None


def worker_data(instances: Iterable[Instance], entries: Iterable[MetadataEntry] = ()) -> dict[str, Any]:
    """``spec.data`` of a worker: every registered endpoint and entry, in the reference runtime's layout."""
    data: dict[str, Any] = {"endpoints": {}, **{name: {} for name in BUCKET_MAPS.values()}}
    for instance in instances:
        target = SIDE_ENDPOINTS if hidden_from_reference(instance) else "endpoints"
        data.setdefault(target, {})[endpoint_key(instance)] = endpoint_entry(instance)
    for entry in entries:
        found = BUCKET_MAPS.get(entry.bucket)
        if found is not None:
            data[found][entry.key] = entry.value
        else:
            data.setdefault(OTHER_ENTRIES, {}).setdefault(entry.bucket, {})[entry.key] = entry.value
    return data


def parse_entries(name: str, data: dict[str, Any]) -> list[MetadataEntry]:
    """The metadata entries of a resource's ``spec.data``; unreadable ones are skipped with a warning."""
    maps: list[tuple[str, Any]] = [(bucket, data.get(found)) for bucket, found in BUCKET_MAPS.items()]
    others = data.get(OTHER_ENTRIES)
    if isinstance(others, dict):
        maps += sorted(others.items())
    found_entries = []
    for bucket, entries in maps:
        if not isinstance(entries, dict):  # absent, or null after server-side apply
            continue
        for key, value in sorted(entries.items()):
            try:
                found_entries.append(MetadataEntry.from_value(bucket, key, value))
            except ValueError as exc:
                log.warning("skipping entry %r of DynamoWorkerMetadata %r: %s", key, name, exc)
    return found_entries


def parse_worker(obj: Any) -> WorkerRecord | None:
    """Read a DynamoWorkerMetadata object; ``None`` only for an object without a name.

    One whose data cannot be read is kept with no instances (``readable`` false), with a warning that names
    it and what is wrong; an individual endpoint entry that is unreadable is skipped (with a warning) and the
    others stay.
    """
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        log.warning("skipping a DynamoWorkerMetadata without a name")
        return None
    assert isinstance(meta, dict)
    found_owners = meta.get("ownerReferences")
    owners: list[Any] = found_owners if isinstance(found_owners, list) else []
    owner_uids = tuple(
        str(o["uid"]) for o in owners if isinstance(o, dict) and o.get("kind") == "Pod" and o.get("uid")
    )
    annotations = meta.get("annotations")
    writer = annotations.get(WRITER_ANNOTATION) if isinstance(annotations, dict) else None
    rv = meta.get("resourceVersion")
    record = WorkerRecord(
        name=name,
        uid=str(meta.get("uid", "")),
        owner_uids=owner_uids,
        instances=(),
        resource_version=rv if isinstance(rv, str) else "",
        writer=writer if isinstance(writer, str) else None,
    )
    spec = obj.get("spec")
    data = spec.get("data") if isinstance(spec, dict) else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        log.warning(
            "skipping DynamoWorkerMetadata %r: spec.data is %s, not an object", name, type(data).__name__
        )
        return _unreadable(record)
    expected_id = instance_id_for(name)
    instances: dict[str, Instance] = {}
    for field in ("endpoints", SIDE_ENDPOINTS):
        endpoints = data.get(field)
        if endpoints is None:  # server-side apply may turn an empty map into null
            endpoints = {}
        if not isinstance(endpoints, dict):
            log.warning("skipping DynamoWorkerMetadata %r: spec.data.%s is not an object", name, field)
            return _unreadable(record)
        for key, entry in sorted(endpoints.items()):
            instance = _parse_entry(name, key, entry, expected_id)
            if instance is not None:
                instances.setdefault(key, instance)
    return WorkerRecord(
        name=name,
        uid=record.uid,
        owner_uids=owner_uids,
        instances=tuple(instances.values()),
        resource_version=record.resource_version,
        writer=record.writer,
        entries=tuple(parse_entries(name, data)),
    )


def _unreadable(record: WorkerRecord) -> WorkerRecord:
    return WorkerRecord(
        name=record.name,
        uid=record.uid,
        owner_uids=record.owner_uids,
        instances=(),
        resource_version=record.resource_version,
        writer=record.writer,
        readable=False,
    )


def _parse_entry(name: str, key: str, entry: Any, expected_id: int) -> Instance | None:
    if not isinstance(entry, dict) or entry.get("type", "Endpoint") != "Endpoint":
        log.warning("skipping entry %r of DynamoWorkerMetadata %r: not an endpoint record", key, name)
        return None
    try:
        instance = Instance.from_dict(entry)
    except ValueError as exc:
        log.warning("skipping malformed entry %r of DynamoWorkerMetadata %r: %s", key, name, exc)
        return None
    if instance.instance_id != expected_id:
        log.warning(
            "skipping entry %r of DynamoWorkerMetadata %r: instance id %x is not the hash of the name (%x)",
            key,
            name,
            instance.instance_id,
            expected_id,
        )
        return None
    if key != endpoint_key(instance):
        log.warning("skipping entry %r of DynamoWorkerMetadata %r: its content names %s", key, name, instance)
        return None
    return instance


def join(
    pods: Mapping[str, PodState], workers: Mapping[str, WorkerRecord], query: InstanceQuery
) -> dict[tuple[EndpointId, int], Instance]:
    """The live instances matching ``query``: workers that take work and whose metadata exists and parses."""
    live: dict[tuple[EndpointId, int], Instance] = {}
    for name, pod in pods.items():
        worker = workers.get(name)
        if worker is None or not worker.instances:
            continue
        if worker.owner_uids and pod.uid not in worker.owner_uids:
            continue  # metadata left by an earlier pod of the same name, not yet garbage-collected
        for instance in worker.instances:
            if not query.matches(instance.endpoint_id):
                continue
            if pod.readiness is Readiness.DRAINING and instance.readiness is not Readiness.DRAINING:
                instance = instance.replace(readiness=Readiness.DRAINING)
            live[instance.key] = instance
    return live


def by_endpoint(live: Iterable[Instance]) -> dict[EndpointId, dict[int, Instance]]:
    """Live instances grouped by endpoint, so that a query of one endpoint reads only its own."""
    grouped: dict[EndpointId, dict[int, Instance]] = {}
    for instance in live:
        grouped.setdefault(instance.endpoint_id, {})[instance.instance_id] = instance
    return grouped


def select(
    grouped: Mapping[EndpointId, Mapping[int, Instance]], query: InstanceQuery
) -> dict[tuple[EndpointId, int], Instance]:
    """The instances of ``grouped`` (see :func:`by_endpoint`) that ``query`` covers."""
    if query.endpoint is not None:
        assert query.namespace is not None
        assert query.component is not None
        one = grouped.get(EndpointId(query.namespace, query.component, query.endpoint))
        return {i.key: i for i in one.values()} if one else {}
    return {
        i.key: i for endpoint, found in grouped.items() if query.matches(endpoint) for i in found.values()
    }
