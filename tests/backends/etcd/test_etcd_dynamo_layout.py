"""The ``dynamo-v1`` key layout against a real etcd: records written byte for byte as the reference runtime
writes them are read, and what dyndisc writes under that layout has exactly that shape."""

from __future__ import annotations

import json
import uuid

import anyio
import pytest
from etcd_helpers import MakeStore, next_event

from dyndisc import Added, DistributedRuntime, DynamoTcp, InstanceQuery, KvDiscovery, Removed, Resync
from dyndisc.testing.servers import EtcdServer


async def test_reads_records_the_reference_runtime_wrote(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(dyndisc_etcd_server.client_url)
    ns = f"dyn-{uuid.uuid4().hex[:8]}"
    lease = await store.grant(5)
    worker_id = lease.id
    key = f"v1/instances/{ns}/backend/generate/{worker_id:x}"
    # Exactly what Dynamo 1.6.1's KVStoreDiscovery puts (serde_json of DiscoveryInstance::Endpoint), with
    # its optional fields.
    raw = (
        '{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"' + ns + '",'
        f'"instance_id":{worker_id},"transport":{{"tcp":"10.0.0.5:41555/{worker_id:x}/{ns}/backend/generate"}},'
        '"device_type":"cuda","request_plane_codec":"msgpack"}'
    ).encode()
    discovery = KvDiscovery(store, layout="dynamo-v1", owns_store=False)
    query = InstanceQuery(namespace=ns)
    async with discovery.watch(query) as events:
        assert await next_event(events) == Resync(instances=())
        assert await store.create(key, raw, lease.id) is None
        added = await next_event(events)
        assert isinstance(added, Added)
        instance = added.instance
        assert (instance.namespace, instance.component, instance.endpoint) == (ns, "backend", "generate")
        assert instance.instance_id == worker_id
        assert instance.transport is not None
        assert (instance.transport.kind, instance.transport.address) == (
            "tcp",
            f"10.0.0.5:41555/{worker_id:x}/{ns}/backend/generate",
        )
        assert (instance.device_type, instance.request_plane_codec) == ("cuda", "msgpack")
        assert instance.metadata == {}
        assert await discovery.list(query) == [instance]
        # A NATS-transport worker of an older runtime, and a model card in the same bucket tree are
        # read and skipped respectively.
        other = await store.grant(5)
        nats_raw = (
            '{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"' + ns + '",'
            f'"instance_id":{other.id},"transport":{{"nats_tcp":"{ns}_backend.generate-{other.id:x}"}}}}'
        ).encode()
        await store.create(f"v1/instances/{ns}/backend/generate/{other.id:x}", nats_raw, other.id)
        second = await next_event(events)
        assert isinstance(second, Added)
        assert second.instance.transport is not None
        assert second.instance.transport.kind == "nats_tcp"
        # The worker dies: its lease goes, and the watcher sees it leave.
        await store.revoke(lease.id)
        assert await next_event(events) == Removed(endpoint=instance.endpoint_id, instance_id=worker_id)
        await store.revoke(other.id)
        assert isinstance(await next_event(events), Removed)


async def test_writes_records_in_the_reference_shape(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore
) -> None:
    store = make_store(dyndisc_etcd_server.client_url)
    ns = f"dyn-{uuid.uuid4().hex[:8]}"
    discovery = KvDiscovery(store, layout="dynamo-v1", owns_store=False)
    async with DistributedRuntime(discovery, lease_ttl=2) as runtime:  # TTL 2 s
        iid = runtime.instance_id
        await runtime.endpoint(f"{ns}.backend.generate").register(DynamoTcp("10.0.0.5", 41555))
        stored = await store.get_prefix("v1/instances/")
        mine = {k: v for k, v in stored.items() if k.startswith(f"v1/instances/{ns}/")}
        expected = (
            '{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"' + ns + '",'
            f'"instance_id":{iid},"transport":{{"tcp":"10.0.0.5:41555/{iid:x}/{ns}/backend/generate"}}}}'
        ).encode()
        assert mine == {f"v1/instances/{ns}/backend/generate/{iid:x}": expected}
        # Parses back with the same shape a reference reader expects.
        body = json.loads(expected)
        assert list(body) == ["type", "component", "endpoint", "namespace", "instance_id", "transport"]
        # Metadata and readiness go in fields the reference ignores.
        await runtime.endpoint(f"{ns}.backend.generate").register(
            DynamoTcp("10.0.0.5", 41555), {"model": "m"}
        )
        updated = json.loads(
            (await store.get_prefix(f"v1/instances/{ns}/"))[f"v1/instances/{ns}/backend/generate/{iid:x}"]
        )
        assert updated["type"] == "Endpoint"
        assert updated["metadata"] == {"model": "m"}
    with anyio.fail_after(10):
        assert await store.get_prefix(f"v1/instances/{ns}/") == {}, "revoking the lease removes the record"


async def test_the_layout_is_chosen_by_environment(
    dyndisc_etcd_server: EtcdServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYN_KV_LAYOUT", "dynamo-v1")
    discovery = KvDiscovery(make_store(dyndisc_etcd_server.client_url), owns_store=False)
    assert discovery.layout.name == "dynamo-v1"
    assert discovery.prefix_for(InstanceQuery(namespace="a")) == "v1/instances/a/"
