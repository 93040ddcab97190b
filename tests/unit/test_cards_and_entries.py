"""Metadata entries, model cards and event channels: their shapes (the reference's, byte for byte) and how the
runtime keeps them, and transports, right across a lease replacement (on the memory store)."""

from __future__ import annotations

import json

import anyio
import pytest

from dyndisc import (
    DistributedRuntime,
    DynamoTcp,
    EventChannel,
    InvalidNameError,
    InvalidRecordError,
    KvDiscovery,
    LeaseChange,
    MemoryStore,
    MetadataEntry,
    ModelCard,
    RecordTooLargeError,
    model_card,
)

#: Records ai-dynamo-runtime 1.6.1 wrote (tools/dynamo-reference/FINDINGS.md, section 3).
REFERENCE_CHANNEL = (
    b'{"type":"EventChannel","scope":{"kind":"endpoint","endpoint":{"namespace":"ns","component":"comp",'
    b'"name":"ep"}},"topic":"kv-events","instance_id":27476551617894,"transport":{"kind":"Zmq","config":'
    b'{"endpoint":"tcp://127.0.0.1:37481"}}}'
)
REFERENCE_CHANNEL_KEY = "namespace/ns/component/comp/endpoint/ep/topic/kv-events/18fd62194d66"
REFERENCE_CARD = (
    b'{"type":"Model","namespace":"ns","component":"comp","endpoint":"ep","instance_id":9056354218997069110,'
    b'"card_json":{"display_name":"tiny2","slug":"tiny2","source_path":"tiny2-external","model_info":null,'
    b'"context_length":0,"kv_cache_block_size":0,"migration_limit":0,"model_type":"Chat",'
    b'"model_input":"Tokens","worker_type":"aggregated","needs":[]}}'
)


def test_the_references_event_channel_reads_and_writes_back_byte_for_byte() -> None:
    entry = MetadataEntry.from_json("v1/event_channels", REFERENCE_CHANNEL_KEY, REFERENCE_CHANNEL)
    channel = EventChannel.from_entry(entry)
    assert (channel.namespace, channel.component, channel.endpoint) == ("ns", "comp", "ep")
    assert (channel.topic, channel.publisher_id) == ("kv-events", 0x18FD62194D66)
    assert channel.to_entry() == entry
    assert channel.to_entry().to_json() == REFERENCE_CHANNEL
    spaced = EventChannel("n s", "c", None, "kv events", 1, {"kind": "Zmq", "config": {}})
    assert spaced.key == "namespace/n%20s/component/c/topic/kv%20events/1"
    assert spaced.scope == {"kind": "component", "namespace": "n s", "component": "c"}


def test_the_references_model_card_reads_and_writes_back_byte_for_byte() -> None:
    key = f"ns/comp/ep/{9056354218997069110:x}"
    entry = MetadataEntry.from_json("v1/mdc", key, REFERENCE_CARD)
    card = ModelCard.from_entry(entry)
    assert (card.display_name, card.slug, card.instance_id, card.lora) == (
        "tiny2",
        "tiny2",
        9056354218997069110,
        None,
    )
    assert card.to_entry().to_json() == REFERENCE_CARD
    with pytest.raises(InvalidRecordError, match="belongs at key"):
        ModelCard.from_entry(MetadataEntry.from_json("v1/mdc", "ns/comp/ep/1", REFERENCE_CARD))
    with pytest.raises(InvalidRecordError, match="not 'Model'"):
        ModelCard.from_entry(MetadataEntry("v1/mdc", key, {"type": "Endpoint"}))
    lora = ModelCard("ns", "comp", "ep", 0x1F, model_card("m"), lora="adapter")
    assert lora.key == "ns/comp/ep/1f/adapter"
    assert json.loads(lora.to_entry().to_json())["model_suffix"] == "adapter"


def test_model_card_is_the_smallest_card_a_frontend_lists() -> None:
    assert model_card("m") == {
        "display_name": "m",
        "slug": "m",
        "kv_cache_block_size": 16,
        "migration_limit": 0,
        "model_type": "Chat",
        "model_input": "Text",
        "worker_type": "aggregated",
    }


@pytest.mark.parametrize(
    ("bucket", "key", "value", "error"),
    [
        ("v1/mdc", "a/../b", {}, InvalidNameError),
        ("v1/mdc", "/a", {}, InvalidNameError),
        ("v1/mdc", "a\nb", {}, InvalidNameError),
        ("../v1", "a", {}, InvalidNameError),
        ("v1/mdc", "a", {"x": float("nan")}, InvalidRecordError),
        ("v1/mdc", "a", {"x": (1, 2)}, InvalidRecordError),
    ],
)
def test_bad_entries_are_refused(bucket: str, key: str, value: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        MetadataEntry(bucket, key, value)


async def test_an_event_channel_published_through_the_runtime_can_be_withdrawn() -> None:
    zmq = {"kind": "Zmq", "config": {"endpoint": "tcp://10.0.0.5:5557"}}
    async with DistributedRuntime(MemoryStore(), lease_ttl=30) as runtime:
        channel = await runtime.register_event_channel(EventChannel("ns", None, None, "kv-events", 7, zmq))
        assert await runtime.event_channels() == [channel]
        await runtime.unregister_event_channel(channel)
        assert await runtime.event_channels() == []


async def test_an_entry_prefix_is_checked_as_a_key_and_never_leaves_its_bucket() -> None:
    backend = KvDiscovery(MemoryStore())
    await backend.put_entry(MetadataEntry("v1/mdc", "ns/a", {"v": 1}), None)
    for bad in ("..", "../", "ns/../", "a\nb"):
        with pytest.raises(InvalidNameError):
            await backend.list_entries("v1/mdc", bad)
        with pytest.raises(InvalidNameError):
            async with backend.watch_entries("v1/mdc", bad):
                pass
    for good in ("", "n", "ns/", "ns/a"):
        assert [e.key for e in await backend.list_entries("v1/mdc", good)] == ["ns/a"]


def test_a_value_too_large_or_not_an_object_is_refused() -> None:
    with pytest.raises(RecordTooLargeError, match="limit"):
        MetadataEntry("v1/mdc", "a", {"x": "y" * 300_000}).to_json()
    with pytest.raises(InvalidRecordError, match="not an object"):
        MetadataEntry.from_json("v1/mdc", "a", b"[1]")
    entry = MetadataEntry("v1/mdc", "a", {"x": [1]})
    with pytest.raises(TypeError, match="read-only"):
        entry.value["x"].append(2)  # type: ignore[attr-defined]


async def test_transport_cards_and_entries_follow_a_lease_replacement() -> None:
    store = MemoryStore()
    replaced = anyio.Event()

    def on_lease_change(_change: LeaseChange) -> None:
        replaced.set()

    async with DistributedRuntime(
        KvDiscovery(store, layout="dynamo-v1"), lease_ttl=2, on_lease_change=on_lease_change
    ) as runtime:
        endpoint = runtime.endpoint("ns.comp.ep")
        old = runtime.instance_id
        first = await endpoint.register(DynamoTcp("10.0.0.5", 9000))
        assert first.transport is not None
        assert first.transport.address == f"10.0.0.5:9000/{old:x}/ns/comp/ep"
        await endpoint.register_model(model_card("m"))
        await runtime.bucket("v1/custom").put("bound", {"v": 1})
        await runtime.bucket("v1/custom").put("unbound", {"v": 2}, lease=False)
        await store.revoke(old)  # the lease is lost behind the runtime's back: its next keep-alive says so
        with anyio.fail_after(5):
            await replaced.wait()
        new = runtime.instance_id
        assert new != old
        (moved,) = await endpoint.list()
        assert moved.transport is not None
        assert moved.transport.address == f"10.0.0.5:9000/{new:x}/ns/comp/ep", "the id in the path follows"
        (card,) = await endpoint.models()
        assert (card.instance_id, card.key) == (new, f"ns/comp/ep/{new:x}")
        assert [e.key for e in await runtime.bucket("v1/custom").entries()] == ["bound", "unbound"]
        await endpoint.unregister_model()
        assert await endpoint.models() == []
    assert [e.key for e in await KvDiscovery(store, layout="dynamo-v1").list_entries("v1/custom")] == [
        "unbound"
    ]
