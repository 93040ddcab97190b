"""The data model: name validation, records, queries."""

from __future__ import annotations

import json

import pytest

from dyndisc import (
    MAX_RECORD_BYTES,
    EndpointId,
    Instance,
    InstanceQuery,
    InvalidNameError,
    Readiness,
    RecordTooLargeError,
    Transport,
)


def test_endpoint_path_parsing() -> None:
    assert EndpointId.parse("ns.comp.ep") == EndpointId(namespace="ns", component="comp", endpoint="ep")
    assert EndpointId.parse("dyn://ns.comp.ep").path == "ns/comp/ep"
    assert str(EndpointId.parse("a.b.c")) == "a.b.c"


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("namespace", "", "empty"),
        ("component", "a/b", "'/'"),
        ("endpoint", "a b", "whitespace"),
        ("namespace", "a.b", "'.'"),
        ("component", "x" * 129, "129 characters"),
        ("endpoint", "caf\u00e9", "'\u00e9'"),
    ],
)
def test_invalid_names_name_the_bad_part(kind: str, value: str, reason: str) -> None:
    parts = {"namespace": "ns", "component": "comp", "endpoint": "ep", kind: value}
    with pytest.raises(InvalidNameError) as info:
        EndpointId(**parts)
    assert kind in str(info.value)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)


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
    extended = json.loads(data) | {"device_type": "cuda", "future_field": {"x": 1}}
    assert Instance.from_json(json.dumps(extended)) == instance


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
        b'{"namespace":"a b","component":"c","endpoint":"e","instance_id":1}',
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


def test_records_share_their_fields_set_and_copies_leave_it_alone() -> None:
    # Memory: instances with the same fields set share one model_fields_set (see _Frozen.model_post_init).
    a = Instance(namespace="ns", component="c", endpoint="e", instance_id=1, transport="tcp://h:1")
    b = Instance.from_json(Instance(namespace="ns", component="c", endpoint="e", instance_id=2).to_json())
    c = Instance(namespace="ns", component="c", endpoint="e", instance_id=3, transport="tcp://h:2")
    assert a.model_fields_set is c.model_fields_set
    before = set(a.model_fields_set)
    changed = a.model_copy(update={"metadata": {"x": 1}})
    assert "metadata" in changed.model_fields_set
    assert a.model_fields_set == before == c.model_fields_set
    assert "transport" not in b.model_fields_set
