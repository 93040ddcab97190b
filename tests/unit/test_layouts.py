"""Key layouts of the key-value backends: the default and Dynamo's ``dynamo-v1``."""

from __future__ import annotations

import json
import logging
from functools import partial

import anyio
import pytest

from dyndisc import (
    Added,
    ConfigurationError,
    DistributedRuntime,
    DynamoTcp,
    EndpointId,
    Instance,
    InstanceQuery,
    InvalidNameError,
    InvalidRecordError,
    KvDiscovery,
    MemoryStore,
    Readiness,
    RegistrationConflictError,
    Removed,
    Resync,
    dynamo_tcp,
)
from dyndisc.backends.base import Lease
from dyndisc.backends.file import FileStore
from dyndisc.backends.kv.layouts import DynamoV1Layout, DyndiscLayout, make_layout, shared_prefix
from dyndisc.testing.faults import FaultyStore

GENERATE = EndpointId("dynamo", "backend", "generate")
WORKER_ID = 0x694D98147D54BE25
WORKER = Instance(
    namespace="dynamo",
    component="backend",
    endpoint="generate",
    instance_id=WORKER_ID,
    transport=dynamo_tcp("10.0.0.5", 41555, GENERATE, WORKER_ID),
    device_type="cuda",
    request_plane_codec="msgpack",
)
#: The reference runtime's record of WORKER, byte for byte (as ai-dynamo-runtime 1.6.1 writes it, measured in
#: tools/dynamo-reference/FINDINGS.md section 3).
REFERENCE = (
    b'{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",'
    b'"instance_id":%d,"transport":{"tcp":"10.0.0.5:41555/694d98147d54be25/dynamo/backend/generate"},'
    b'"device_type":"cuda","request_plane_codec":"msgpack"}' % WORKER_ID
)


def test_dynamo_tcp_builds_the_path_the_reference_server_routes_by() -> None:
    assert WORKER.transport is not None
    assert WORKER.transport.address == "10.0.0.5:41555/694d98147d54be25/dynamo/backend/generate"
    names = EndpointId("n\u015f", "comp", "ep:v2")
    assert dynamo_tcp("::1", 9, names, 0x1F).address == "[::1]:9/1f/n\u015f/comp/ep:v2"
    with pytest.raises(InvalidRecordError, match="port"):
        DynamoTcp("h", 0)
    with pytest.raises(InvalidRecordError, match="host"):
        DynamoTcp("h/x", 1)


def test_dynamo_v1_keys_and_records_are_the_reference_ones() -> None:
    layout = DynamoV1Layout()
    assert layout.key_for(WORKER) == "v1/instances/dynamo/backend/generate/694d98147d54be25"
    assert layout.prefix_for(InstanceQuery()) == "v1/instances/"
    assert layout.prefix_for(InstanceQuery.parse("dynamo.backend")) == "v1/instances/dynamo/backend/"
    assert layout.encode(WORKER) == REFERENCE
    assert layout.parse(layout.key_for(WORKER), REFERENCE) == WORKER


def test_dynamo_v1_reads_the_optional_fields_and_writes_them_back_unchanged() -> None:
    layout = DynamoV1Layout()
    body = json.loads(REFERENCE) | {"a_field_of_a_later_version": {"x": 1}}
    found = layout.parse(layout.key_for(WORKER), json.dumps(body).encode())
    assert found is not None
    assert (found.device_type, found.request_plane_codec) == ("cuda", "msgpack")
    assert found.metadata == {}, "the reference's fields are not folded into metadata"
    assert layout.encode(found) == REFERENCE, "read then write gives the reference's record back"
    own = found.replace(metadata={"model": "m"}, readiness=Readiness.DRAINING)
    assert layout.parse(layout.side_key_for(own), layout.encode(own)) == own


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"transport": "http://10.0.0.5:8080"}, "transport kind is 'http'"),
        ({"transport": None}, "has no transport"),
        ({"transport": {"grpc": "h:1"}}, "transport kind is 'grpc'"),
        ({"device_type": "tpu"}, "device type is 'tpu'"),
        ({"request_plane_codec": "cbor"}, "codec is 'cbor'"),
    ],
)
def test_dynamo_v1_refuses_records_the_reference_would_skip(changes: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidRecordError, match=why) as refused:
        DynamoV1Layout().encode(WORKER.replace(**changes))
    assert "invisible to Dynamo" in str(refused.value)
    assert "DynamoTcp" in str(refused.value), "the message says what to do"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b'{"type":"Model","namespace":"dynamo"}', "type 'Model'"),
        (b"not json", "not JSON"),
        (b"[1]", "expected a JSON object"),
        (REFERENCE.replace(b"%d" % WORKER_ID, b"1"), "belongs at"),
    ],
)
def test_dynamo_v1_skips_what_it_cannot_read(
    value: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    layout = DynamoV1Layout()
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        assert layout.parse(layout.key_for(WORKER), value) is None
    assert why in caplog.text


def test_a_snapshot_in_the_default_layout_reads_its_records_and_warns_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layout = DyndiscLayout()
    key = layout.key_for(WORKER)
    items = {
        key: WORKER.to_json(),
        key.replace("/694d", "/0694d"): WORKER.to_json(),  # another spelling of its id
        "/services/dynamo/backend/other/1": b"not json",
    }
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        assert layout.parse_all(items) == [WORKER]
    assert "/0694d" in caplog.text
    assert "belongs at" in caplog.text
    assert "not a record" in caplog.text
    caplog.clear()
    # A record at a key with an empty segment is told where it belongs, like any record at the wrong key.
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        assert layout.parse("/services//backend/generate/694d98147d54be25", WORKER.to_json()) is None
    assert f"the record belongs at {key!r}" in caplog.text


def test_a_snapshot_in_the_dynamo_layout_reads_its_records_and_skips_the_rest() -> None:
    layout = DynamoV1Layout()
    key = layout.key_for(WORKER)
    items = {key: REFERENCE, "v1/instances/dynamo/backend/other/1": b"not json"}
    assert layout.parse_all(items) == [WORKER]


def test_entries_live_in_their_bucket_and_never_where_instances_do() -> None:
    assert DynamoV1Layout().entry_prefix("v1/mdc") == "v1/mdc/"
    assert DyndiscLayout().entry_prefix("models") == "/models/"
    for bucket in ("v1/instances", "v1/dyndisc_endpoints"):
        with pytest.raises(InvalidNameError, match="keeps endpoint instances"):
            DynamoV1Layout().entry_prefix(bucket)
    with pytest.raises(InvalidNameError, match="keeps endpoint instances"):
        DyndiscLayout().entry_prefix("services")
    with pytest.raises(InvalidNameError, match="two segments"):
        DynamoV1Layout().entry_prefix("models")
    with pytest.raises(InvalidNameError, match="bucket"):
        DyndiscLayout().entry_prefix("../x")


def test_the_shared_prefix_of_key_prefixes_is_made_of_whole_segments() -> None:
    assert DynamoV1Layout().watch_prefix(InstanceQuery("dynamo")) == "v1/"
    assert shared_prefix("v1/instances/ns/", "v1/dyndisc_endpoints/ns/") == "v1/"
    assert shared_prefix("/a/bc/", "/a/bd/") == "/a/"
    # One prefix inside another: the outer one covers both.
    assert shared_prefix("/a/", "/a/b/c/") == "/a/"
    assert shared_prefix("/a/b/c/", "/a/") == "/a/"
    assert shared_prefix("x/", "y/") == ""
    assert shared_prefix("/a/b/") == "/a/b/"


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
    with pytest.raises(ConfigurationError, match=r"cannot hold the dynamo-v1 key layout.*DynamoFileStore"):
        KvDiscovery(FileStore(str(tmp_path)), layout="dynamo-v1")


async def test_a_runtime_on_the_dynamo_layout_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_KV_LAYOUT", "dynamo-v1")
    store = MemoryStore()
    async with DistributedRuntime(store, lease_ttl=2) as runtime:  # TTL 2 s
        client = await runtime.endpoint("dynamo.backend.generate").client()
        registered = await runtime.endpoint("dynamo.backend.generate").register(DynamoTcp("10.0.0.5", 41555))
        assert await client.wait_for_instances(timeout=5) == [registered]
        keys = list(await store.get_prefix("v1/instances/"))
        assert keys == [f"v1/instances/dynamo/backend/generate/{runtime.instance_id:x}"]
        with pytest.raises(InvalidRecordError, match="invisible to Dynamo"):
            await runtime.endpoint("dynamo.backend.other").register("http://10.0.0.5:80")
        assert [i.endpoint for i in runtime.registrations] == ["generate"], "nothing else was written"


async def test_a_draining_instance_leaves_the_bucket_dynamo_reads_and_stays_for_dyndisc() -> None:
    store = MemoryStore()
    async with (
        DistributedRuntime(KvDiscovery(store, layout="dynamo-v1"), lease_ttl=5) as worker,
        DistributedRuntime(KvDiscovery(store, layout="dynamo-v1"), lease_ttl=5) as router,
    ):
        endpoint = worker.endpoint("dynamo.backend.generate")
        iid = worker.instance_id
        async with router.endpoint("dynamo.backend.generate").watch() as events:
            assert await anext(events) == Resync(instances=())
            ready = await endpoint.register(DynamoTcp("h", 1))
            assert await anext(events) == Added(instance=ready)
            draining = await endpoint.register(DynamoTcp("h", 1), readiness=Readiness.DRAINING)
            assert await anext(events) == Added(instance=draining)
            assert list(await store.get_prefix("v1/")) == [
                f"v1/dyndisc_endpoints/dynamo/backend/generate/{iid:x}"
            ]
            assert await router.endpoint("dynamo.backend.generate").list() == [draining]
            again = await endpoint.register(DynamoTcp("h", 1))
            assert await anext(events) == Added(instance=again), "back to ready: one upsert, no removal"
            assert list(await store.get_prefix("v1/")) == [f"v1/instances/dynamo/backend/generate/{iid:x}"]
            await endpoint.register(DynamoTcp("h", 1), readiness=Readiness.DRAINING)
            assert (await anext(events)).instance.readiness is Readiness.DRAINING  # type: ignore[union-attr]
            await endpoint.unregister()
            assert await anext(events) == Removed(endpoint=GENERATE, instance_id=iid)
            assert await store.get_prefix("v1/") == {}


async def test_a_draining_registration_cancelled_after_it_landed_is_removed_by_the_next_call() -> None:
    # Chaos seed 44: the side copy landed, the caller gave up before hearing so, and nothing removed it: every
    # dyndisc reader then showed the stale draining record in place of the ready one, and after unregister().
    store = MemoryStore()
    faulty = FaultyStore(store)
    async with DistributedRuntime(
        KvDiscovery(faulty, layout="dynamo-v1", owns_store=False), lease_ttl=5
    ) as rt:
        endpoint = rt.endpoint("dynamo.backend.generate")
        gate = faulty.gate("create", after=True)  # the create lands; its answer is held
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(endpoint.register, DynamoTcp("h", 1), readiness=Readiness.DRAINING))
            await gate.arrived.wait()
            tg.cancel_scope.cancel()
        faulty.ungate("create", after=True)
        ready = await endpoint.register(DynamoTcp("h", 2))
        assert await rt.list() == [ready]
        assert list(await store.get_prefix("v1/")) == [
            f"v1/instances/dynamo/backend/generate/{rt.instance_id:x}"
        ]
        await endpoint.unregister()
        assert await store.get_prefix("v1/") == {}


def test_a_record_under_a_sibling_of_the_root_is_not_read_as_one_at_the_wrong_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``/services_dynamo/...`` shares the root's letters, not its path: the warning says where records
    live, not that this one belongs elsewhere (it was never in the layout's tree)."""
    layout = DyndiscLayout()
    sibling = layout.key_for(WORKER).replace("/services/", "/services_", 1)
    with caplog.at_level(logging.WARNING, "dyndisc.kv"):
        assert layout.parse(sibling, WORKER.to_json()) is None
    assert "belongs at" not in caplog.text
    assert "not /services/<namespace>/<component>/<endpoint>/<id hex>" in caplog.text


async def test_a_refused_draining_registration_forgets_the_side_copy_it_did_not_write() -> None:
    """Two backends registering one instance id (a conflict): the one refused wrote nothing, so a later
    registration of its own does not remove the draining copy the other one holds."""
    store = MemoryStore()
    holder, other = KvDiscovery(store, layout="dynamo-v1"), KvDiscovery(store, layout="dynamo-v1")
    held, taken = await store.grant(30), await store.grant(30)
    draining = WORKER.replace(readiness=Readiness.DRAINING)
    await holder.register(draining, Lease(id=held.id, ttl=30))
    side = holder.layout.side_key_for(draining)
    with pytest.raises(RegistrationConflictError):
        await other.register(draining, Lease(id=taken.id, ttl=30))
    await other.register(WORKER, Lease(id=taken.id, ttl=30))  # the main key is free: the copy is elsewhere
    assert side in await store.get_prefix("v1/"), "the holder's draining copy is not the other's to remove"


def test_a_layout_given_whole_takes_no_root_of_its_own() -> None:
    mine = DyndiscLayout("/mine")
    assert make_layout(mine) is mine
    with pytest.raises(ValueError, match="either a KeyLayout or a root"):
        make_layout(mine, root="/other")
