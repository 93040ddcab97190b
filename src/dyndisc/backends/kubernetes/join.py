"""The pure part of Kubernetes discovery: read EndpointSlices and DynamoWorkerMetadata objects, and join them.

An instance is live when its pod is an endpoint of some discovery EndpointSlice that is ready (or still
serving while terminating: then it is reported as draining) **and** the pod's DynamoWorkerMetadata exists
and parses. Everything here works on the JSON objects the API server sends, and never raises on garbage.

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
#: Labels the operator puts on a component's Service; the EndpointSlice controller copies them to slices.
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


@dataclass(frozen=True)
class PodState:
    """A pod as the EndpointSlices list it: its uid (when the slice names it) and whether it takes work."""

    name: str
    uid: str | None
    readiness: Readiness


@dataclass(frozen=True)
class WorkerRecord:
    """A parsed DynamoWorkerMetadata: the worker's registered endpoint instances."""

    name: str
    uid: str
    owner_uids: frozenset[str]
    instances: tuple[Instance, ...]
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
        ):
            continue
        found_conditions = endpoint.get("conditions")
        conditions: dict[str, Any] = found_conditions if isinstance(found_conditions, dict) else {}
        ready = conditions.get("ready")
        # The EndpointSlice API says a missing "ready" means ready. A pod that is terminating but still
        # passes its readiness probe has ready=false, serving=true: it finishes in-flight work (draining).
        if ready is None or ready is True:
            readiness = Readiness.READY
        elif conditions.get("serving") is True:
            readiness = Readiness.DRAINING
        else:
            continue
        uid = ref.get("uid")
        found.append(
            PodState(name=ref["name"], uid=uid if isinstance(uid, str) and uid else None, readiness=readiness)
        )
    return found


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
    """Read a DynamoWorkerMetadata object; warn and return ``None`` if it is not one a watcher can use.

    An individual endpoint entry that is unreadable is skipped (with a warning); the others stay.
    """
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        log.warning("skipping a DynamoWorkerMetadata without a name")
        return None
    assert isinstance(meta, dict)
    spec = obj.get("spec")
    data = spec.get("data") if isinstance(spec, dict) else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        log.warning(
            "skipping DynamoWorkerMetadata %r: spec.data is %s, not an object", name, type(data).__name__
        )
        return None
    expected_id = instance_id_for(name)
    instances: dict[str, Instance] = {}
    for field in ("endpoints", SIDE_ENDPOINTS):
        endpoints = data.get(field)
        if endpoints is None:  # server-side apply may turn an empty map into null
            endpoints = {}
        if not isinstance(endpoints, dict):
            log.warning("skipping DynamoWorkerMetadata %r: spec.data.%s is not an object", name, field)
            return None
        for key, entry in sorted(endpoints.items()):
            instance = _parse_entry(name, key, entry, expected_id)
            if instance is not None:
                instances.setdefault(key, instance)
    found_owners = meta.get("ownerReferences")
    owners: list[Any] = found_owners if isinstance(found_owners, list) else []
    owner_uids = frozenset(
        str(o["uid"]) for o in owners if isinstance(o, dict) and o.get("kind") == "Pod" and o.get("uid")
    )
    return WorkerRecord(
        name=name,
        uid=str(meta.get("uid", "")),
        owner_uids=owner_uids,
        instances=tuple(instances.values()),
        entries=tuple(parse_entries(name, data)),
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
    """The live instances matching ``query``: pods that take work and whose metadata exists and parses."""
    live: dict[tuple[EndpointId, int], Instance] = {}
    for name, pod in pods.items():
        worker = workers.get(name)
        if worker is None:
            continue
        if pod.uid is not None and worker.owner_uids and pod.uid not in worker.owner_uids:
            continue  # metadata left by an earlier pod of the same name, not yet garbage-collected
        for instance in worker.instances:
            if not query.matches(instance.endpoint_id):
                continue
            if pod.readiness is Readiness.DRAINING and instance.readiness is not Readiness.DRAINING:
                instance = instance.replace(readiness=Readiness.DRAINING)
            live[instance.key] = instance
    return live
