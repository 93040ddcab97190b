"""The data model: name validation, records, queries."""

from __future__ import annotations

import copy
import json

import pytest

from dyndisc import (
    MAX_METADATA_DEPTH,
    MAX_RECORD_BYTES,
    Added,
    DyndiscError,
    EndpointId,
    Instance,
    InstanceQuery,
    InvalidNameError,
    InvalidRecordError,
    Readiness,
    RecordTooLargeError,
    Removed,
    Resync,
    Transport,
)
from dyndisc._metadata import FrozenDict, FrozenList


def test_endpoint_path_parsing() -> None:
    assert EndpointId.parse("ns.comp.ep") == EndpointId(namespace="ns", component="comp", endpoint="ep")
    assert EndpointId.parse("dyn://ns.comp.ep").path == "ns/comp/ep"
    assert str(EndpointId.parse("a.b.c")) == "a.b.c"


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("namespace", "", "empty"),
        ("component", "a/b", "'/'"),
        ("endpoint", "a\tb", "control character '\\t'"),
        ("namespace", "a.b", "'.'"),
        ("component", "x" * 129, "129 characters"),
        ("endpoint", "a\x00b", "control character"),
        ("endpoint", "a\ud800", "lone surrogate"),
    ],
)
def test_invalid_names_name_the_bad_part(kind: str, value: str, reason: str) -> None:
    parts = {"namespace": "ns", "component": "comp", "endpoint": "ep", kind: value}
    with pytest.raises(InvalidNameError) as info:
        EndpointId(**parts)
    assert kind in str(info.value)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["ep:v2", "ns+1", "my ep", "n\u015f", "c\u00f6mp", "\u00e9p", "x" * 128])
def test_names_the_reference_runtime_accepts_are_accepted(name: str) -> None:
    instance = Instance(namespace=name, component=name, endpoint=name, instance_id=1, transport="tcp://h:1")
    assert EndpointId.parse(f"{name}.{name}.{name}") == instance.endpoint_id
    assert Instance.from_json(instance.to_json()) == instance


def test_record_round_trip_is_compact_and_tolerates_unknown_fields() -> None:
    instance = Instance(
        namespace="ns",
        component="c",
        endpoint="e",
        instance_id=0x694D98147D54BE25,
        transport="tcp://10.0.0.5:41555",
        metadata={"model": "m", "n": [1, 2]},
    )
    data = instance.to_json()
    assert b" " not in data
    assert json.loads(data)["transport"] == {"tcp": "10.0.0.5:41555"}
    assert Instance.from_json(data) == instance
    extended = json.loads(data) | {"future_field": {"x": 1}}
    assert Instance.from_json(json.dumps(extended)) == instance


def test_the_reference_optional_fields_are_first_class_and_round_trip() -> None:
    instance = Instance(
        "ns", "c", "e", 7, "tcp://h:1/7/ns/c/e", device_type="cuda", request_plane_codec="msgpack"
    )
    body = json.loads(instance.to_json())
    assert (body["device_type"], body["request_plane_codec"]) == ("cuda", "msgpack")
    assert "metadata" not in body, "top-level fields, as the reference writes them"
    assert Instance.from_json(instance.to_json()) == instance
    assert Instance.from_json(json.dumps({**body, "device_type": None})).device_type is None
    with pytest.raises(InvalidRecordError, match="device type"):
        Instance("ns", "c", "e", 7, device_type="")


def test_draining_state_round_trips() -> None:
    instance = Instance(
        namespace="n", component="c", endpoint="e", instance_id=1, readiness=Readiness.DRAINING
    )
    assert Instance.from_json(instance.to_json()).readiness is Readiness.DRAINING


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"{}",
        b'{"namespace":"a/b","component":"c","endpoint":"e","instance_id":1}',
        b'{"namespace":"n","component":"c","endpoint":"e","instance_id":-1}',
        b"\xff",
    ],
)
def test_malformed_records_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not an instance record"):
        Instance.from_json(data)


def test_oversized_records_are_refused() -> None:
    instance = Instance(
        namespace="n", component="c", endpoint="e", instance_id=1, metadata={"x": "y" * MAX_RECORD_BYTES}
    )
    with pytest.raises(RecordTooLargeError, match=str(MAX_RECORD_BYTES)):
        instance.to_json()


@pytest.mark.parametrize("value", ["tcp://h:1", {"tcp": "h:1"}, Transport(kind="tcp", address="h:1")])
def test_transport_shapes(value: object) -> None:
    assert Transport.coerce(value) == Transport(kind="tcp", address="h:1")  # type: ignore[arg-type]


def test_transport_without_scheme_is_an_error() -> None:
    with pytest.raises(ValueError, match="kind://address"):
        Transport.coerce("10.0.0.1:80")


def test_queries() -> None:
    endpoint = EndpointId.parse("ns.c.e")
    assert InstanceQuery().matches(endpoint)
    assert InstanceQuery(namespace="ns", component="c").matches(endpoint)
    assert not InstanceQuery(namespace="ns", component="d").matches(endpoint)
    assert InstanceQuery.for_endpoint(endpoint).parts == ("ns", "c", "e")
    with pytest.raises(InvalidNameError, match="component"):
        InstanceQuery(namespace="ns", endpoint="e")


def _instance(**changes: object) -> Instance:
    fields: dict[str, object] = {
        "namespace": "ns",
        "component": "c",
        "endpoint": "e",
        "instance_id": 1,
        "transport": "tcp://h:1",
        "metadata": {"model": "m", "tags": ["a", {"b": [1, 2.5, None, True]}]},
    }
    return Instance(**{**fields, **changes})  # type: ignore[arg-type]


VALUES = [
    EndpointId.parse("ns.c.e"),
    InstanceQuery.parse("ns.c"),
    Transport(kind="tcp", address="h:1"),
    _instance(),
    Resync(instances=(_instance(),)),
    Added(instance=_instance()),
    Removed(endpoint=EndpointId.parse("ns.c.e"), instance_id=1),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_every_model_is_hashable_and_immutable(value: object) -> None:
    assert hash(value) == hash(copy.deepcopy(value))
    assert {value: 1}[copy.deepcopy(value)] == 1, "usable as a dict key"
    field = next(iter(vars(type(value)).get("__dataclass_fields__", {})))
    with pytest.raises(AttributeError):
        setattr(value, field, None)


def test_instances_hash_by_identity_and_compare_by_content() -> None:
    a, b = _instance(), _instance(metadata={"model": "other"})
    assert hash(a) == hash(b)
    assert a.key == b.key
    assert a != b, "two records of one instance differ when a field does"
    assert len({a, b}) == 2


def test_metadata_is_read_only_all_the_way_down_and_still_json() -> None:
    instance = _instance()
    with pytest.raises(TypeError, match="read-only"):
        instance.metadata["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        instance.metadata["tags"].append("c")
    with pytest.raises(TypeError, match="read-only"):
        instance.metadata["tags"][1]["b"].pop()
    with pytest.raises(TypeError, match="read-only"):
        instance.metadata.update(x=1)
    assert instance.metadata == {"model": "m", "tags": ["a", {"b": [1, 2.5, None, True]}]}
    assert json.loads(instance.to_json())["metadata"] == instance.metadata
    assert Instance.from_json(instance.to_json()).metadata == instance.metadata
    copied = copy.deepcopy(instance.metadata)
    assert copied == instance.metadata


def test_the_metadata_given_is_copied_so_changing_it_later_changes_nothing() -> None:
    given = {"model": "m", "tags": ["a"]}
    instance = _instance(metadata=given)
    given["model"] = "changed"
    given["tags"].append("b")  # type: ignore[attr-defined]
    assert instance.metadata == {"model": "m", "tags": ["a"]}


def test_replace_makes_a_checked_copy_with_a_fresh_key() -> None:
    instance = _instance()
    moved = instance.replace(instance_id=7)
    assert moved.key == (instance.endpoint_id, 7), "the key follows the new id (it is not carried over)"
    assert moved.metadata == instance.metadata
    assert instance.instance_id == 1
    with pytest.raises(InvalidNameError):
        instance.replace(endpoint="a/b")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transport": "10.0.0.1:80"}, "kind://address"),
        ({"transport": {"tcp": 1}}, "cannot read a transport"),
        ({"metadata": {"n": float("nan")}}, "NaN"),
        ({"metadata": {1: "x"}}, "JSON keys are strings"),
        ({"metadata": {"t": (1, 2)}}, "use a list"),
        ({"metadata": {"s": {1}}}, "set"),
        ({"metadata": {"o": object()}}, "object"),
        ({"metadata": "not a mapping"}, "must be a mapping"),
        ({"readiness": "sleeping"}, "readiness"),
        ({"instance_id": -1}, "unsigned 64-bit"),
        ({"instance_id": 2**64}, "unsigned 64-bit"),
        ({"instance_id": "1"}, "must be an integer"),
    ],
)
def test_every_invalid_field_is_a_dyndisc_error(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRecordError, match=message) as info:
        _instance(**changes)
    assert isinstance(info.value, DyndiscError)


def test_metadata_deeper_than_the_shared_limit_is_refused_before_writing_and_skipped_on_read() -> None:
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(MAX_METADATA_DEPTH - 1):
        inner["x"] = {}
        inner = inner["x"]  # type: ignore[assignment]
    instance = _instance(metadata=deep)  # exactly at the limit: accepted and read back the same
    assert Instance.from_json(instance.to_json()).metadata == deep
    inner["x"] = {}
    with pytest.raises(InvalidRecordError, match=f"deeper than {MAX_METADATA_DEPTH}"):
        _instance(metadata=deep)
    record = json.dumps(
        {"namespace": "ns", "component": "c", "endpoint": "e", "instance_id": 1, "metadata": deep}
    )
    with pytest.raises(InvalidRecordError, match="deeper"):
        Instance.from_json(record)


RECORD = {"namespace": "ns", "component": "c", "endpoint": "e", "instance_id": 1}


def _both_readers(body: dict[str, object]) -> list[Instance]:
    """The record read from JSON (pydantic-core alone) and from a mapping json.loads made (from_dict)."""
    return [Instance.from_json(json.dumps(body)), Instance.from_dict(json.loads(json.dumps(body)))]


@pytest.mark.parametrize(
    "transport",
    [
        {"tcp": "10.0.0.5:9000/1/ns/c/e"},
        {"nats_tcp": "nats://h:4222"},
        {"http": "h:80"},
        {"grpc": "h\u00e9:1"},
        None,
    ],
)
def test_a_stored_transport_is_read_into_a_transport_by_both_readers(
    transport: dict[str, str] | None,
) -> None:
    expected = Transport.coerce(transport)
    for found in _both_readers(RECORD | {"transport": transport}):
        assert found.transport == expected
        assert type(found.transport) is type(expected)


@pytest.mark.parametrize(
    "transport",
    [{"tcp": 1}, {}, {"tcp": "h:1", "http": "h:2"}, {"tcp": "h:1", "kind": "tcp"}, "tcp://h:1", []],
)
def test_a_bad_stored_transport_is_named_in_the_error(transport: object) -> None:
    with pytest.raises(InvalidRecordError, match=r"^not an instance record: transport\b"):
        Instance.from_json(json.dumps(RECORD | {"transport": transport}))
    with pytest.raises(InvalidRecordError, match=r"^not an instance record: transport\b"):
        Instance.from_dict(RECORD | {"transport": transport})


def test_stored_metadata_keeps_every_json_type_and_is_frozen_all_the_way_down() -> None:
    metadata = {
        "s": "x",
        "i": 1,
        "big": 2**70,
        "f": 1.0,
        "b": True,
        "n": None,
        "l": [1, [2.5, {"k": False}]],
        "d": {"e": {}},
    }
    types = [str, int, int, float, bool, type(None), FrozenList, FrozenDict]
    for found in _both_readers(RECORD | {"metadata": metadata}):
        assert found.metadata == metadata
        assert [type(v) for v in found.metadata.values()] == types
        assert type(found.metadata["l"][1]) is FrozenList
        assert type(found.metadata["l"][1][1]) is FrozenDict
        assert type(found.metadata["d"]["e"]) is FrozenDict


def test_stored_lists_deeper_than_the_shared_limit_are_refused_by_both_readers() -> None:
    deep: list[object] = []
    for _ in range(MAX_METADATA_DEPTH - 2):
        deep = [deep]
    assert [i.metadata["x"] for i in _both_readers(RECORD | {"metadata": {"x": deep}})] == [deep, deep]
    with pytest.raises(
        InvalidRecordError, match=f"^not an instance record: metadata.x: .*deeper than {MAX_METADATA_DEPTH}"
    ):
        Instance.from_json(json.dumps(RECORD | {"metadata": {"x": [deep]}}))
    with pytest.raises(InvalidRecordError, match=f"deeper than {MAX_METADATA_DEPTH}"):
        Instance.from_dict(RECORD | {"metadata": {"x": [deep]}})
