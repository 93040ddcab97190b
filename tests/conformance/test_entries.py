"""The metadata store, written once and run against every backend: entries (bound to the lease or not),
model deployment cards and event channels, and names the reference runtime accepts.

Buckets here are two segments (``v1/...``), which every layout accepts (``dynamo-v1`` needs it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from contract_helpers import Runtimes, wait_until

from dyndisc import (
    EntryAdded,
    EntryEvent,
    EntryRemoved,
    EntryResync,
    InvalidNameError,
    MetadataEntry,
    model_card,
)
from harnesses.base import Harness

PROMPT = 5.0
BUCKET = "v1/conformance"


async def next_entry_event(events: AsyncIterator[EntryEvent], timeout: float = PROMPT) -> EntryEvent:
    with anyio.fail_after(timeout):
        return await anext(events)


async def test_entries_are_put_read_watched_and_deleted(runtimes: Runtimes, ns: str) -> None:
    worker, reader = await runtimes.start(), await runtimes.start()
    mine, theirs = worker.bucket(BUCKET), reader.bucket(BUCKET)
    async with theirs.watch(f"{ns}/") as events:
        assert await next_entry_event(events) == EntryResync(entries=())
        entry = await mine.put(f"{ns}/a/1", {"model": "m", "n": [1, 2]})
        assert entry == MetadataEntry(BUCKET, f"{ns}/a/1", {"model": "m", "n": [1, 2]})
        assert await next_entry_event(events) == EntryAdded(entry=entry)
        changed = await mine.put(f"{ns}/a/1", {"model": "m2"})
        assert await next_entry_event(events) == EntryAdded(entry=changed), "a put is an upsert"
        other = await mine.put(f"{ns}/b", {"x": 1})
        assert await next_entry_event(events) == EntryAdded(entry=other)
        assert await theirs.get(f"{ns}/a/1") == changed
        assert await theirs.entries(f"{ns}/") == [changed, other]
        assert await theirs.entries(f"{ns}/a/") == [changed]
        await mine.delete(f"{ns}/a/1")
        assert await next_entry_event(events) == EntryRemoved(bucket=BUCKET, key=f"{ns}/a/1")
        assert await theirs.get(f"{ns}/a/1") is None
        await mine.delete(f"{ns}/never-written")  # a no-op
    async with theirs.watch(f"{ns}/") as events:
        assert await next_entry_event(events) == EntryResync(entries=(other,)), "a new watch starts with it"


async def test_bound_entries_leave_with_the_runtime_and_unbound_ones_stay(
    runtimes: Runtimes, ns: str
) -> None:
    worker_host = await runtimes.host()
    worker, reader = worker_host.runtime, await runtimes.start()
    bound = await worker.bucket(BUCKET).put(f"{ns}/bound", {"v": 1})
    unbound = await worker.bucket(BUCKET).put(f"{ns}/unbound", {"v": 2}, lease=False)
    assert await reader.bucket(BUCKET).entries(f"{ns}/") == [bound, unbound]
    async with reader.bucket(BUCKET).watch(f"{ns}/") as events:
        assert await next_entry_event(events) == EntryResync(entries=(bound, unbound))
        await worker_host.stop()
        assert await next_entry_event(events) == EntryRemoved(bucket=BUCKET, key=f"{ns}/bound")
    assert await reader.bucket(BUCKET).entries(f"{ns}/") == [unbound]
    await reader.bucket(BUCKET).delete(f"{ns}/unbound")
    assert await reader.bucket(BUCKET).entries(f"{ns}/") == []


@pytest.mark.contract("lease_ttl")
async def test_a_crashed_workers_bound_entries_expire_with_its_lease(
    runtimes: Runtimes, harness: Harness, ns: str
) -> None:
    host = await runtimes.host()
    reader = await runtimes.start()
    await host.runtime.bucket(BUCKET).put(f"{ns}/k", {"v": 1})
    async with reader.bucket(BUCKET).watch(f"{ns}/") as events:
        assert isinstance(await next_entry_event(events), EntryResync)
        await host.crash()
        bound = harness.lease_ttl + harness.expiry_bound
        assert await next_entry_event(events, bound + 2) == EntryRemoved(bucket=BUCKET, key=f"{ns}/k")


async def test_bad_buckets_keys_and_values_are_refused_before_anything_is_written(
    runtimes: Runtimes, ns: str
) -> None:
    worker = await runtimes.start()
    for bucket in ("", "a b", "x/../y", "v1/\x00"):
        with pytest.raises(InvalidNameError):
            await worker.bucket(bucket).put(f"{ns}/k", {"v": 1})
    for key in ("", f"{ns}//k", f"{ns}/../k", f"{ns}/\x00"):
        with pytest.raises(InvalidNameError):
            await worker.bucket(BUCKET).put(key, {"v": 1})
    with pytest.raises(ValueError, match="JSON"):
        await worker.bucket(BUCKET).put(f"{ns}/k", {"v": object()})
    assert await worker.bucket(BUCKET).entries(f"{ns}/") == []


async def test_a_model_card_is_published_for_the_instance_and_read_back(runtimes: Runtimes, ns: str) -> None:
    worker, frontend = await runtimes.start(), await runtimes.start()
    endpoint = worker.endpoint(f"{ns}.backend.generate")
    await endpoint.register("tcp://10.0.0.5:9000")
    card = await endpoint.register_model(model_card("tiny"))
    assert card.key == f"{ns}/backend/generate/{worker.instance_id:x}"
    assert (card.display_name, card.instance_id) == ("tiny", worker.instance_id)
    lora = await endpoint.register_model(model_card("tiny-lora"), lora="tiny-lora")
    assert lora.key == f"{card.key}/tiny-lora"
    assert await frontend.endpoint(f"{ns}.backend.generate").models() == [card, lora]
    assert [c for c in await frontend.models() if c.namespace == ns] == [card, lora]
    await endpoint.unregister_model(lora="tiny-lora")
    assert await frontend.endpoint(f"{ns}.backend.generate").models() == [card]
    await endpoint.unregister_model()
    assert await frontend.endpoint(f"{ns}.backend.generate").models() == []


async def test_an_event_channel_is_published_and_read_back(runtimes: Runtimes, ns: str) -> None:
    worker, subscriber = await runtimes.start(), await runtimes.start()
    transport = {"kind": "Zmq", "config": {"endpoint": "tcp://127.0.0.1:5557"}}
    channel = await worker.endpoint(f"{ns}.backend.generate").register_event_channel("kv-events", transport)
    assert channel.key.startswith(f"namespace/{ns}/component/backend/endpoint/generate/topic/kv-events/")
    assert [c for c in await subscriber.event_channels(topic="kv-events") if c.namespace == ns] == [channel]
    assert [c for c in await subscriber.event_channels(topic="other") if c.namespace == ns] == []
    await worker.endpoint(f"{ns}.backend.generate").unregister_event_channel(channel)
    assert [c for c in await subscriber.event_channels() if c.namespace == ns] == []


@pytest.mark.parametrize("names", ["comp.ep:v2", "comp+1.my ep", "c\u00f6mp.\u00e9p"])
async def test_names_the_reference_runtime_accepts_are_registered_and_seen(
    runtimes: Runtimes, ns: str, names: str
) -> None:
    worker, frontend = await runtimes.start(), await runtimes.start()
    path = f"{ns}.{names}"
    client = await frontend.endpoint(path).client()
    registered = await worker.endpoint(path).register("tcp://10.0.0.5:9000")
    await wait_until(client._source, lambda: client.instances() == [registered], PROMPT, f"{path} to be seen")
    card = await worker.endpoint(path).register_model(model_card("m"))
    assert await frontend.endpoint(path).models() == [card]
    assert await frontend.endpoint(path).list() == [registered]
