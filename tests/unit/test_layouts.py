"""Key layouts of the key-value backends: the default and Dynamo's ``dynamo-v1``."""

from __future__ import annotations

import json
import logging

import pytest

from dyndisc import ConfigurationError, DistributedRuntime, Instance, InstanceQuery, KvDiscovery, MemoryStore
from dyndisc.backends.file import FileStore
from dyndisc.backends.kv.layouts import DynamoV1Layout, DyndiscLayout, make_layout

WORKER = Instance(
    namespace="dynamo",
    component="backend",
    endpoint="generate",
    instance_id=0x694D98147D54BE25,
    transport={"tcp": "10.0.0.5:41555/694d98147d54be25/generate"},
)
#: The reference runtime's record of WORKER, byte for byte (dynamo-reference.md section 1.3).
REFERENCE = (
    b'{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",'
    b'"instance_id":%d,"transport":{"tcp":"10.0.0.5:41555/694d98147d54be25/generate"}}' % 0x694D98147D54BE25
)


def test_dynamo_v1_keys_and_records_are_the_reference_ones() -> None:
    layout = DynamoV1Layout()
    assert layout.key_for(WORKER) == "v1/instances/dynamo/backend/generate/694d98147d54be25"
    assert layout.prefix_for(InstanceQuery()) == "v1/instances/"
    assert layout.prefix_for(InstanceQuery.parse("dynamo.backend")) == "v1/instances/dynamo/backend/"
    assert layout.encode(WORKER) == REFERENCE
    assert layout.parse(layout.key_for(WORKER), REFERENCE) == WORKER


def test_dynamo_v1_keeps_the_references_optional_fields_as_metadata() -> None:
    body = json.loads(REFERENCE)
    body.update(device_type="Cuda", request_plane_codec="msgpack")
    found = DynamoV1Layout().parse(DynamoV1Layout().key_for(WORKER), json.dumps(body).encode())
    assert found is not None
    assert found.metadata == {"device_type": "Cuda", "request_plane_codec": "msgpack"}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b'{"type":"Model","namespace":"dynamo"}', "type 'Model'"),
        (b"not json", "not JSON"),
        (b"[1]", "expected a JSON object"),
        (REFERENCE.replace(b"%d" % 0x694D98147D54BE25, b"1"), "belongs at"),
    ],
)
def test_dynamo_v1_skips_what_it_cannot_read(
    value: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    layout = DynamoV1Layout()
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        assert layout.parse(layout.key_for(WORKER), value) is None
    assert why in caplog.text


def test_the_default_layout_is_unchanged() -> None:
    layout = make_layout(None)
    assert isinstance(layout, DyndiscLayout)
    assert layout.key_for(WORKER) == "/services/dynamo/backend/generate/694d98147d54be25"
    assert layout.encode(WORKER) == WORKER.to_json()


def test_bad_layout_choices_say_what_to_do(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown key layout 'dynamo-v2'.*valid: dyndisc, dynamo-v1"
    ):
        make_layout("dynamo-v2")
    monkeypatch.setenv("DYN_KV_LAYOUT", "nope")
    with pytest.raises(ConfigurationError, match=r"unknown key layout 'nope' \(DYN_KV_LAYOUT\)"):
        KvDiscovery(MemoryStore())
    with pytest.raises(ConfigurationError, match="always uses the key root 'v1/instances'"):
        make_layout("dynamo-v1", root="/svc")
    with pytest.raises(ConfigurationError, match="cannot hold the dynamo-v1 key layout"):
        KvDiscovery(FileStore(str(tmp_path)), layout="dynamo-v1")


async def test_a_runtime_on_the_dynamo_layout_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_KV_LAYOUT", "dynamo-v1")
    store = MemoryStore()
    async with DistributedRuntime(store, lease_ttl=2) as runtime:  # TTL 2 s
        client = await runtime.endpoint("dynamo.backend.generate").client()
        registered = await runtime.endpoint("dynamo.backend.generate").register("tcp://10.0.0.5:41555")
        assert await client.wait_for_instances(timeout=5) == [registered]
        keys = list(await store.get_prefix("v1/instances/"))
        assert keys == [f"v1/instances/dynamo/backend/generate/{runtime.instance_id:x}"]
