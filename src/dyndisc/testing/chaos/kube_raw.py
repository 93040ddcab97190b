"""The Kubernetes API's objects read as the history's records, by a parser of the chaos run's own (written
from ``docs/backends/kubernetes.md``, not from dyndisc's join):

* a pod takes work when an EndpointSlice with the discovery labels lists it with ``targetRef`` (a Pod, with
  its uid) and ``conditions.ready: true``; one listed ``ready: false``, ``serving: true`` finishes work
  (draining); a pod listed by several slices takes work if any says so;
* a worker's ``DynamoWorkerMetadata`` (named after its pod, owned by it) holds its endpoints in
  ``spec.data.endpoints`` and ``spec.data.dyndisc_endpoints`` (``ns/comp/ep/<id hex>`` to a record tagged
  ``"type": "Endpoint"``, whose id is the hash of the resource's name), and its lease-bound entries in
  ``model_cards``, ``event_channels``, ``event_sources`` and ``dyndisc_entries`` (bucket, then key);
* its instances and entries are live while its pod takes or finishes work (the pod's uid among the
  resource's owners), an instance of a draining pod being draining; the resource ``dyndisc-unbound-entries``
  holds the entries written with no lease, live until deleted;
* a resource, or a part of one, that is not what this says is unreadable (listed by the resource's path).

The leases the server holds are the workers whose resource exists and whose pod takes or finishes work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from dyndisc.testing.chaos.history import canonical_json, canonical_record
from dyndisc.testing.chaos.raw import RawTruth, read_fields

DISCOVERY_LABELS = {
    "nvidia.com/dynamo-discovery-backend": "kubernetes",
    "nvidia.com/dynamo-discovery-enabled": "true",
}
UNBOUND = "dyndisc-unbound-entries"
#: The maps of ``spec.data`` that hold entries, and their buckets (``dyndisc_entries`` names its own).
ENTRY_MAPS = {
    "model_cards": "v1/mdc",
    "event_channels": "v1/event_channels",
    "event_sources": "v1/event_sources",
}
ENDPOINT_MAPS = ("endpoints", "dyndisc_endpoints")


def pods_at_work(slices: Iterable[Any]) -> dict[str, tuple[str, str]]:
    """The pods the EndpointSlices list as taking work (``ready``) or finishing it (``draining``): name to
    ``(uid, readiness)``."""
    found: dict[str, tuple[str, str]] = {}
    for item in slices:
        labels = ((item or {}).get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in DISCOVERY_LABELS.items()):
            continue
        for endpoint in item.get("endpoints") or ():
            ref = endpoint.get("targetRef") or {}
            conditions = endpoint.get("conditions") or {}
            if ref.get("kind", "Pod") != "Pod" or not ref.get("name") or not ref.get("uid"):
                continue
            state = (
                "ready"
                if conditions.get("ready") is True
                else "draining"
                if conditions.get("serving")
                else ""
            )
            if state and found.get(ref["name"], ("", ""))[1] != "ready":
                found[ref["name"]] = (ref["uid"], state)
    return found


def parse_kubernetes(
    resources: Iterable[Any], slices: Iterable[Any], path: str, instance_id: Callable[[str], int]
) -> RawTruth:
    """The live instances, entries and leases of one namespace's objects (``path``: where its resources
    are, naming the unreadable ones); ``instance_id`` is the hash of a resource's name."""
    pods = pods_at_work(slices)
    found = RawTruth()
    for item in resources:
        meta = (item or {}).get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str):
            continue
        owners = {o.get("uid") for o in meta.get("ownerReferences") or () if o.get("kind") == "Pod"}
        pod = pods.get(name)
        live = name == UNBOUND or (pod is not None and (not owners or pod[0] in owners))
        data = ((item.get("spec") or {}).get("data")) or {}
        if not isinstance(data, dict) or not _read(
            found, data, live, pod[1] if pod else "ready", instance_id(name), name == UNBOUND
        ):
            found.unreadable.append(f"{path}/{name}")
        if live and name != UNBOUND:
            found.leases.add(instance_id(name))
    return found


def _read(
    found: RawTruth, data: dict[str, Any], live: bool, readiness: str, ident: int, unbound: bool
) -> bool:
    """Add what ``data`` holds to ``found`` if ``live``; whether all of it was readable."""
    readable = True
    maps = [] if unbound else list(ENDPOINT_MAPS)
    for field in maps:
        records = data.get(field) or {}
        if not isinstance(records, dict):
            readable = False
            continue
        for key, body in records.items():
            fields = (
                read_fields(body)
                if isinstance(body, dict) and body.get("type", "Endpoint") == "Endpoint"
                else None
            )
            names = f"{fields['namespace']}/{fields['component']}/{fields['endpoint']}" if fields else ""
            if fields is None or fields["instance_id"] != ident or key != f"{names}/{ident:x}":
                readable = False
                continue
            if readiness == "draining":
                fields["readiness"] = "draining"
            history_key = f"{names.replace('/', '.')}/{ident:x}"
            if history_key in found.instances:  # one instance in both maps: one copy too many
                readable = False
            elif live:
                found.instances[history_key] = canonical_record(fields)
    buckets = [(bucket, data.get(field) or {}) for field, bucket in ENTRY_MAPS.items()]
    others = data.get("dyndisc_entries") or {}
    if isinstance(others, dict):
        buckets += list(others.items())
    else:
        readable = False
    for bucket, entries in buckets:
        if not isinstance(entries, dict):
            readable = False
            continue
        for key, value in entries.items():
            if not isinstance(value, dict):
                readable = False
            elif live:
                found.entries[f"{bucket}/{key}"] = canonical_json(value)
    return readable
