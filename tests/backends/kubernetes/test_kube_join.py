"""The pure join of EndpointSlices (or Pods) and DynamoWorkerMetadata objects (no server needed).

Input the EndpointSlice controller cannot produce (endpoints without a uid or a ready condition, garbage) is
tested here; what it does produce is tested against the real controller in test_kube_controllers.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dyndisc import Instance, InstanceQuery, MetadataEntry, ModelCard, Readiness, model_card
from dyndisc.backends.kubernetes.entries import UNBOUND_RESOURCE, join_entries
from dyndisc.backends.kubernetes.join import (
    OTHER_ENTRIES,
    SIDE_ENDPOINTS,
    WRITER_ANNOTATION,
    by_endpoint,
    endpoint_key,
    join,
    parse_worker,
    pod_containers,
    pod_states,
    select,
    slice_pods,
    worker_data,
)
from dyndisc.backends.kubernetes.siphash import instance_id_for


def endpoint(pod: str, uid: str | None = "pod-uid", **conditions: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "Pod", "name": pod}
    if uid:
        ref["uid"] = uid
    conditions.setdefault("ready", True)
    return {"addresses": ["10.0.0.1"], "conditions": conditions, "targetRef": ref}


def slice_of(*endpoints: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "s"}, "endpoints": list(endpoints)}


def instance(pod: str, ep: str = "gen", ns: str = "dyn", **kw: Any) -> Instance:
    return Instance(namespace=ns, component="backend", endpoint=ep, instance_id=instance_id_for(pod), **kw)


def cr(pod: str, *instances: Instance, uid: str = "cr-uid", owner: str | None = "pod-uid") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": pod, "uid": uid}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": owner}]
    return {"metadata": meta, "spec": {"data": worker_data(instances)}}


def test_conditions_map_to_readiness(caplog: pytest.LogCaptureFixture) -> None:
    unset = endpoint("unset")
    del unset["conditions"]["ready"]
    pods = slice_pods(
        slice_of(
            endpoint("ready", ready=True),
            unset,  # read as the reference runtime reads it (ready.unwrap_or(false)): not ready
            {**endpoint("noconditions"), "conditions": None},
            endpoint("draining", ready=False, serving=True, terminating=True),
            endpoint("gone", ready=False, serving=False, terminating=True),
            endpoint("notready", ready=False),
            {"addresses": ["10.0.0.9"], "conditions": {"ready": True}},  # no targetRef: not a pod
            {"targetRef": {"kind": "Node", "name": "n"}},
            "garbage",
        )
    )
    assert {p.name: p.readiness for p in pods} == {
        "ready": Readiness.READY,
        "draining": Readiness.DRAINING,
    }
    assert not caplog.text  # nothing there is worth a warning


def test_endpoints_without_a_uid_are_skipped_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    # Joining by name alone could attach an earlier pod's metadata (a StatefulSet's) to its successor.
    unnamed = slice_of(endpoint("a", uid=None), endpoint("b", uid=""), endpoint("c"))
    with caplog.at_level(logging.WARNING, "dyndisc.kubernetes"):
        for _ in range(3):
            assert [p.name for p in slice_pods(unnamed)] == ["c"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once per pod, however often the slice is read
    assert "skipping pod 'a' of EndpointSlice 's': its targetRef has no uid" in warnings[0]


def test_a_pod_in_several_slices_is_counted_once_and_ready_wins() -> None:
    states = pod_states(
        [
            slice_of(endpoint("a", ready=False, serving=True), endpoint("b", ready=True)),
            slice_of(endpoint("a", ready=True), endpoint("b", ready=True)),
            {"endpoints": None},
            None,
        ]
    )
    assert {n: s.readiness for n, s in states.items()} == {"a": Readiness.READY, "b": Readiness.READY}


def test_live_means_ready_and_metadata_present() -> None:
    a, b, c = instance("a"), instance("b"), instance("c")
    workers = {r.name: r for r in map(parse_worker, [cr("a", a), cr("b", b)]) if r}
    pods = pod_states([slice_of(endpoint("a"), endpoint("c"))])  # b not ready, c has no metadata
    assert list(join(pods, workers, InstanceQuery()).values()) == [a]
    assert c.instance_id not in {i.instance_id for i in join(pods, workers, InstanceQuery()).values()}


def test_draining_pods_are_reported_draining() -> None:
    a = instance("a", transport="tcp://10.0.0.1:1")
    workers = {"a": parse_worker(cr("a", a))}
    pods = pod_states([slice_of(endpoint("a", ready=False, serving=True, terminating=True))])
    (found,) = join(pods, workers, InstanceQuery()).values()  # type: ignore[arg-type]
    assert found.readiness is Readiness.DRAINING
    assert found.replace(readiness=Readiness.READY) == a


def test_container_mode_reads_ready_containers_of_pods(caplog: pytest.LogCaptureFixture) -> None:
    def pod(name: str, uid: str | None, *ready: tuple[str, bool], deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if uid:
            meta["uid"] = uid
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        statuses = [{"name": c, "ready": r} for c, r in ready]
        return {"metadata": meta, "status": {"containerStatuses": statuses}}

    found = [
        *pod_containers(pod("w0", "u0", ("main", True), ("engine-1", True), ("sidecar", False))),
        *pod_containers(pod("w1", "u1", ("engine-0", True), deleting=True)),
        *pod_containers(pod("w2", None, ("main", True))),  # no uid: never joined by name alone
        *pod_containers({"metadata": {"name": "w3", "uid": "u3"}}),  # no status yet
        *pod_containers("garbage"),
    ]
    assert [(p.name, p.uid, p.readiness) for p in found] == [
        ("w0", "u0", Readiness.READY),  # "main" keeps the pod's name
        ("w0-engine-1", "u0", Readiness.READY),
        ("w1-engine-0", "u1", Readiness.DRAINING),  # ready, but its pod is being deleted
    ]
    assert "skipping pod 'w2': it has no metadata.uid" in caplog.text


def test_metadata_of_an_earlier_pod_with_the_same_name_is_ignored() -> None:
    a = instance("a")
    workers = {"a": parse_worker(cr("a", a, owner="old-uid"))}
    assert join(pod_states([slice_of(endpoint("a", uid="new-uid"))]), workers, InstanceQuery()) == {}  # type: ignore[arg-type]
    assert len(join(pod_states([slice_of(endpoint("a", uid="old-uid"))]), workers, InstanceQuery())) == 1  # type: ignore[arg-type]


def test_select_reads_one_endpoint_or_a_prefix() -> None:
    insts = [instance("a", "x"), instance("b", "x"), instance("a", "y"), instance("a", "x", ns="other")]
    grouped = by_endpoint(insts)
    assert set(select(grouped, InstanceQuery("dyn", "backend", "x")).values()) == set(insts[:2])
    assert set(select(grouped, InstanceQuery("dyn")).values()) == set(insts[:3])
    assert set(select(grouped, InstanceQuery()).values()) == set(insts)
    assert select(grouped, InstanceQuery("dyn", "backend", "none")) == {}


def test_query_filters() -> None:
    insts = [instance("a", "x"), instance("a", "y"), instance("a", "x", ns="other")]
    workers = {"a": parse_worker(cr("a", *insts))}
    pods = pod_states([slice_of(endpoint("a"))])
    got = join(pods, workers, InstanceQuery(namespace="dyn", component="backend", endpoint="x"))  # type: ignore[arg-type]
    assert list(got.values()) == [insts[0]]
    assert len(join(pods, workers, InstanceQuery(namespace="dyn"))) == 2  # type: ignore[arg-type]


def test_reference_shaped_records_parse() -> None:
    # What a Dynamo worker writes: tagged endpoint records, no dyndisc fields, null maps after SSA.
    iid = instance_id_for("worker-0")
    obj = {
        "metadata": {"name": "worker-0", "uid": "u"},
        "spec": {
            "data": {
                "endpoints": {
                    f"dynamo/backend/generate/{iid:x}": {
                        "type": "Endpoint",
                        "namespace": "dynamo",
                        "component": "backend",
                        "endpoint": "generate",
                        "instance_id": iid,
                        "transport": {"tcp": f"10.0.0.5:41555/{iid:x}/generate"},
                        "device_type": "Cuda",
                        "request_plane_codec": "msgpack",
                    }
                },
                "model_cards": None,
                "event_channels": None,
            }
        },
    }
    record = parse_worker(obj)
    assert record is not None
    (found,) = record.instances
    assert (found.endpoint, found.instance_id, str(found.transport)) == (
        "generate",
        iid,
        f"tcp://10.0.0.5:41555/{iid:x}/generate",
    )
    assert endpoint_key(found) == f"dynamo/backend/generate/{iid:x}"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"data": "not an object"}, "spec.data is str"),
        ({"data": {"endpoints": [1, 2]}}, "spec.data.endpoints is not an object"),
    ],
)
def test_a_malformed_worker_holds_nothing_and_is_said(
    spec: Any, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "dyndisc.kubernetes"):
        record = parse_worker({"metadata": {"name": "w", "resourceVersion": "7"}, "spec": spec})
    # Kept (its worker needs to know that it exists), with nothing a watcher could use.
    assert record is not None
    assert (record.readable, record.instances, record.resource_version) == (False, (), "7")
    assert message in caplog.text
    assert "'w'" in caplog.text


def test_the_writer_and_version_are_read() -> None:
    obj = cr("w", instance("w"))
    obj["metadata"].update(resourceVersion="42", annotations={WRITER_ANNOTATION: "host/1/ab"})
    record = parse_worker(obj)
    assert record is not None
    assert (record.writer, record.resource_version, record.readable) == ("host/1/ab", "42", True)


def test_bad_entries_are_skipped_and_good_ones_kept(caplog: pytest.LogCaptureFixture) -> None:
    good = instance("w")
    data = worker_data([good])
    iid = instance_id_for("w")
    data["endpoints"].update(
        {
            "dyn/backend/bad/1": "not an object",
            f"dyn/backend/worse/{iid:x}": {"namespace": "dyn", "component": "backend"},  # incomplete
            "dyn/backend/alien/7": {**good.to_dict(), "endpoint": "alien", "instance_id": 7},
            "dyn/backend/wrongkey/0": {**good.to_dict(), "transport": None},
            "x/y/z/1": {"type": "Model", "card_json": {}},
        }
    )
    with caplog.at_level(logging.WARNING, "dyndisc.kubernetes"):
        record = parse_worker({"metadata": {"name": "w", "uid": "u"}, "spec": {"data": data}})
    assert record is not None
    assert record.instances == (good,)
    assert caplog.text.count("skipping") == 5
    assert "not the hash of the name" in caplog.text


def test_a_nameless_object_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "dyndisc.kubernetes"):
        assert parse_worker({"spec": {}}) is None
        assert parse_worker("garbage") is None
    assert "without a name" in caplog.text


def test_the_reference_reads_what_it_can_route_to_and_dyndisc_reads_everything() -> None:
    iid = instance_id_for("w")
    routed = instance("w", "gen", transport=f"tcp://10.0.0.1:9/{iid:x}/dyn/backend/gen", device_type="cuda")
    draining = instance("w", "drain", transport="tcp://10.0.0.1:9", readiness=Readiness.DRAINING)
    http = instance("w", "web", transport="http://10.0.0.1:80", request_plane_codec="json")
    card = ModelCard("dyn", "backend", "gen", iid, model_card("tiny")).to_entry()
    other = MetadataEntry("v1/custom", "a/b", {"x": 1})
    data = worker_data([routed, draining, http], [card, other])
    # What the reference reads: only the record it can route to, with its optional fields at the top level.
    assert data["endpoints"] == {endpoint_key(routed): {"type": "Endpoint", **routed.to_dict()}}
    assert data["endpoints"][endpoint_key(routed)]["device_type"] == "cuda"
    assert data["model_cards"] == {card.key: card.value}
    assert (data["event_channels"], data["event_sources"]) == ({}, {})
    # What only dyndisc reads (the reference ignores unknown keys of spec.data).
    assert set(data[SIDE_ENDPOINTS]) == {endpoint_key(draining), endpoint_key(http)}
    assert data[OTHER_ENTRIES] == {"v1/custom": {"a/b": {"x": 1}}}
    record = parse_worker({"metadata": {"name": "w", "uid": "u"}, "spec": {"data": data}})
    assert record is not None
    assert sorted(record.instances, key=str) == sorted([routed, draining, http], key=str), (
        "exactly as written"
    )
    assert set(record.entries) == {card, other}


def test_entries_are_live_with_their_pod_and_unbound_ones_always() -> None:
    card = MetadataEntry("v1/mdc", "dyn/backend/gen/1", {"type": "Model"})
    shared = MetadataEntry("v1/mdc", "dyn/backend/gen/2", {"type": "Model"})
    workers = {
        r.name: r
        for r in (
            parse_worker({"metadata": {"name": n, "uid": "u"}, "spec": {"data": worker_data([], entries)}})
            for n, entries in (("w", [card]), (UNBOUND_RESOURCE, [shared]))
        )
        if r is not None
    }
    ready = pod_states([slice_of(endpoint("w", ready=True))])
    assert join_entries(ready, workers, "v1/mdc", "dyn/") == {card.key: card, shared.key: shared}
    assert join_entries({}, workers, "v1/mdc", "") == {shared.key: shared}, "a pod that is not ready: gone"
    assert join_entries(ready, workers, "v1/mdc", "other/") == {}
