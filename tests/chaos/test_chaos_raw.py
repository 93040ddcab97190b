"""The chaos run's own readers of the raw stores: they read what dyndisc writes as dyndisc means it, and what
the contract refuses as unreadable, without dyndisc's decoder."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import nats.js.errors
import nats.js.kv
import pytest

from dyndisc import DynamoTcp, EndpointId, Instance, Readiness
from dyndisc.backends.file.layout import encode_segment as file_segment
from dyndisc.backends.kubernetes.join import worker_data
from dyndisc.backends.kubernetes.siphash import instance_id_for
from dyndisc.backends.kv.layouts import make_layout
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.backends.nats.keys import encode_key as nats_key
from dyndisc.testing.chaos.history import record_of
from dyndisc.testing.chaos.kube_raw import DISCOVERY_LABELS, parse_kubernetes
from dyndisc.testing.chaos.raw import RAW_LAYOUTS, parse_instance, parse_items
from dyndisc.testing.chaos.raw_readers import _nats_key, _unescape, read_files, read_nats
from dyndisc.testing.servers import NatsServer

GENERATE = EndpointId("ns", "backend", "generate")
INSTANCES = [
    Instance("ns", "backend", "generate", 0x1F, "tcp://10.0.0.5:9000", {"model": "m", "n": [1, 2]}),
    Instance(
        "ns", "backend", "generate", 0x2A, DynamoTcp("h", 1).render(GENERATE, 0x2A), readiness="draining"
    ),
    Instance(
        "ns", "c", "ep:v2 x", 2**64 - 1, {"nats_tcp": "a"}, device_type="cuda", request_plane_codec="json"
    ),
]


@pytest.mark.parametrize("layout", ["dyndisc", "dynamo-v1"])
@pytest.mark.parametrize("instance", INSTANCES, ids=lambda i: f"{i.instance_id:x}")
def test_what_dyndisc_writes_reads_back_as_dyndisc_means_it(layout: str, instance: Instance) -> None:
    written = make_layout(layout)
    key = written.side_key_for(instance) if written.is_side(instance) else written.key_for(instance)
    assert parse_instance(RAW_LAYOUTS[layout], key, written.encode(instance)) == record_of(instance)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("/services/ns/c/e/1f", b"\xff\x00garbage"),
        ("/services/ns/c/e/1f", b'{"unexpected": [1, 2, 3]}'),
        ("/services/ns/c/e/01f", b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31}'),
        ("/services/ns/c/e/1F", b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31}'),
        ("/services/ns/c/x/1f", b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31}'),
        ("/services/ns/c/e/1f", b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31.0}'),
        ("/services/ns/c/e/1f", b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":true}'),
        (
            "/services/ns/c/e/1f",
            b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31,"x":NaN}',
        ),
        (
            "/services/ns/c/e/1f",
            b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31,"metadata":[]}',
        ),
        (
            "/services/ns/c/e/1f",
            b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31,"readiness":"x"}',
        ),
        (
            "/services/ns/c/e/1f",
            b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31,"transport":{}}',
        ),
        (
            "/services/ns/c/e/1f",
            b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":31,"transport":{"a":1}}',
        ),
        ("/services/n.s/c/e/1f", b'{"namespace":"n.s","component":"c","endpoint":"e","instance_id":31}'),
        (
            "/services/ns/c/e/10000000000000000",
            b'{"namespace":"ns","component":"c","endpoint":"e","instance_id":18446744073709551616}',
        ),
    ],
)
def test_what_the_contract_refuses_is_unreadable(key: str, value: bytes) -> None:
    found = parse_items(RAW_LAYOUTS["dyndisc"], "ns", {key: value})
    assert found.instances == {}
    assert found.unreadable == [key]


def test_a_dynamo_record_must_say_it_is_an_endpoint() -> None:
    body = {"namespace": "ns", "component": "c", "endpoint": "e", "instance_id": 31}
    dynamo = RAW_LAYOUTS["dynamo-v1"]
    assert parse_instance(dynamo, "v1/instances/ns/c/e/1f", json.dumps(body).encode()) is None
    tagged = json.dumps({"type": "Endpoint", **body}).encode()
    assert parse_instance(dynamo, "v1/instances/ns/c/e/1f", tagged) == (
        "ns.c.e/1f",
        json.dumps(body, sort_keys=True, separators=(",", ":")),
    )


def test_one_instance_under_both_dynamo_roots_reads_as_its_side_copy_and_the_other_is_kept_apart() -> None:
    # A draining record moves to the side root: two copies are a move half done (chaos seeds 44, 226).
    layout = make_layout("dynamo-v1")
    ready, draining = INSTANCES[1].replace(readiness=Readiness.READY), INSTANCES[1]
    items = {
        layout.key_for(ready): layout.encode(ready),
        layout.side_key_for(draining): layout.encode(draining),
    }
    found = parse_items(RAW_LAYOUTS["dynamo-v1"], "ns", items)
    assert found.instances == dict([record_of(draining)])
    assert found.doubled == dict([record_of(ready)])
    assert found.unreadable == []


def test_entries_are_json_objects_in_their_buckets() -> None:
    items = {
        "/v1/chaos/ns/w0/k0": b'{"n": 1}',
        "/v1/mdc/ns/c/e/1f": b"[1]",
        "/services/ns/c/e/1f": b"garbage",
    }
    found = parse_items(RAW_LAYOUTS["dyndisc"], "ns", items)
    assert found.entries == {"v1/chaos/ns/w0/k0": '{"n":1}'}
    assert sorted(found.unreadable) == ["/services/ns/c/e/1f", "/v1/mdc/ns/c/e/1f"]


@pytest.mark.parametrize(
    "key", ["/services/ns/c/e/1f", "/v1/chaos/ns/w0/k0", "/x/a b/ü.ß/=%", "/services//x"]
)
def test_keys_decode_as_the_stores_encode_them(key: str) -> None:
    assert _nats_key(nats_key(key)) == key
    assert "/" + "/".join(_unescape(file_segment(s), "%") or "" for s in key[1:].split("/")) == key


def test_spellings_no_encoder_makes_do_not_decode() -> None:
    assert _unescape("a%2f", "%") is None  # lower-case hex
    assert _unescape("a.b", "%") is None
    assert _nats_key("_dyndisc/lease.1f") is None  # the NATS store's own lease keys


async def test_the_file_reader_joins_records_to_live_leases(tmp_path: Path) -> None:
    (tmp_path / "leases").mkdir()
    (tmp_path / "leases" / f"{0x1F:016x}.lease").write_text('{"ttl": 3600}')
    expired = tmp_path / "leases" / f"{0x2A:016x}.lease"
    expired.write_text('{"ttl": 60}')
    os.utime(expired, (time.time() - 3600, time.time() - 3600))  # renewed an hour ago: expired
    records = tmp_path / "kv" / "services" / "ns" / "c" / "e"
    records.mkdir(parents=True)
    (records / "1f.rec").write_bytes(b"dyndisc-record/1 lease=1f\n{}")
    (records / "2a.rec").write_bytes(b"dyndisc-record/1 lease=2a\n{}")
    (records / "0.rec").write_bytes(b"dyndisc-record/1 lease=0\n{}")
    (records / ".tmp-x").write_bytes(b"half written")
    items, leases = await read_files(tmp_path, ["/services/ns/"])
    assert leases == {0x1F}
    assert items == {"/services/ns/c/e/1f": b"{}", "/services/ns/c/e/0": b"{}"}


async def test_the_nats_reader_lists_the_keys_without_a_watchers_end_marker(
    dyndisc_nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py's ``kv.keys()`` can end before its first key (its watcher's end marker comes when the consumer
    reports nothing pending while the keys it sent are still in flight: nats-io/nats.py#842). On a cluster
    after a failover the chaos run's truth so came out empty (nats-cluster seed 18) while every watcher and
    ``list()`` held the records. The reader lists the stream's subjects instead, so such an end changes
    nothing."""
    bucket = f"raw_{uuid.uuid4().hex[:8]}"
    store = NatsStore(NatsSettings.load(server=dyndisc_nats_server.url, kv_bucket=bucket, timeout=3))
    try:
        lease = (await store.grant(60)).id
        await store.put("/services/ns/c/e/1f", b"{}", lease)
        await store.put("/services/ns/c/e/2a", b"{}", 0)
        await store.put("/services/ns/c/e/3b", b"{}", 0)
        await store.delete("/services/ns/c/e/3b")
        await store.put("/other/ns/x", b"{}", 0)
    finally:
        await store.aclose()
    expected = {"/services/ns/c/e/1f": b"{}", "/services/ns/c/e/2a": b"{}"}
    assert await read_nats(dyndisc_nats_server.url, bucket, ["/services/ns/"]) == (expected, {lease})

    async def premature_end(self: nats.js.kv.KeyValue, *args: object, **kwargs: object) -> list[str]:
        raise nats.js.errors.NoKeysError

    monkeypatch.setattr(nats.js.kv.KeyValue, "keys", premature_end)
    assert await read_nats([dyndisc_nats_server.url], bucket, ["/services/ns/"]) == (expected, {lease})


def test_kubernetes_instances_are_live_while_their_pod_takes_or_finishes_work() -> None:
    path = "/apis/nvidia.com/v1alpha1/namespaces/ns/dynamoworkermetadatas"
    ident = instance_id_for("w0")
    instance = Instance("ns", "c", "e", ident, "tcp://10.0.0.1:1")
    resource = {
        "metadata": {"name": "w0", "ownerReferences": [{"kind": "Pod", "uid": "u0"}]},
        "spec": {"data": worker_data([instance])},
    }

    def slice_of(conditions: dict[str, bool], uid: str = "u0") -> dict[str, object]:
        ref = {"kind": "Pod", "name": "w0", "uid": uid}
        return {
            "metadata": {"labels": DISCOVERY_LABELS},
            "endpoints": [{"targetRef": ref, "conditions": conditions}],
        }

    ready = parse_kubernetes([resource], [slice_of({"ready": True})], path, instance_id_for)
    assert ready.instances == dict([record_of(instance)])
    assert ready.leases == {ident}
    draining = parse_kubernetes(
        [resource], [slice_of({"ready": False, "serving": True})], path, instance_id_for
    )
    assert draining.instances == dict([record_of(instance.replace(readiness=Readiness.DRAINING))])
    for gone in ([slice_of({"ready": False})], [slice_of({"ready": True}, uid="another pod")], []):
        assert parse_kubernetes([resource], gone, path, instance_id_for).instances == {}
    garbage = {"metadata": {"name": "x"}, "spec": {"data": {"endpoints": "garbage"}}}
    assert parse_kubernetes([garbage], [], path, instance_id_for).unreadable == [f"{path}/x"]
