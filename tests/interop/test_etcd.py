"""dyndisc and the reference runtime (Dynamo 1.6.1) on one etcd, under the ``dynamo-v1`` layout: each sees the
other's workers with the same ids, transports and optional fields, their model cards and event channels,
names with ``:``, ``+``, spaces and non-ASCII letters; a clean exit and a SIGKILL reach the other side within
the TTL bound; a draining dyndisc worker leaves Dynamo's routing; a Dynamo client sends its requests to the
path dyndisc's transport names.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from refkit import (
    TIMINGS,
    Reference,
    dyndisc_argv,
    dyndisc_env,
    first_entries,
    ref_argv,
    reference_env,
    spawn,
)
from stub_server import path_recorder

from dyndisc import (
    Added,
    DiscoveryEvent,
    DistributedRuntime,
    EndpointId,
    EntryRemoved,
    EventChannel,
    InstanceQuery,
    KvDiscovery,
    ModelCard,
    Readiness,
    Removed,
    Resync,
)
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.testing.servers import EtcdServer

#: etcd lease TTL of both sides here (the reference's default is 30 s; dyndisc's 10 s).
TTL = 3.0
#: What may come on top of the TTL before the other side sees a crash: etcd checks expiry every 500 ms, the
#: reference client polls every 100 ms, and a loaded CI machine is slower.
BOUND = 2.0
#: A reference process starts in about a second; a loaded CI machine gets more.
START = 60.0


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def dyndisc_runtime(server: EtcdServer) -> AsyncIterator[DistributedRuntime]:
    store = EtcdStore(EtcdSettings.load(endpoints=server.client_url, startup_connect_timeout_seconds=10))
    async with DistributedRuntime(KvDiscovery(store, layout="dynamo-v1"), lease_ttl=TTL) as runtime:
        yield runtime


async def next_event(events: AsyncIterator[DiscoveryEvent], timeout: float) -> DiscoveryEvent:
    with anyio.fail_after(timeout):
        return await anext(events)


def ref_env(server: EtcdServer, home: Path) -> dict[str, str]:
    # CUDA_VISIBLE_DEVICES empty: the reference then says "cpu" (unset, it says "cuda" even without a GPU).
    env = {"ETCD_ENDPOINTS": server.client_url, "ETCD_LEASE_TTL": str(int(TTL)), "CUDA_VISIBLE_DEVICES": ""}
    return reference_env(env, home)


def dd_env(server: EtcdServer) -> dict[str, str]:
    return dyndisc_env(
        {"DYN_DISCOVERY_BACKEND": "etcd", "DYN_KV_LAYOUT": "dynamo-v1", "ETCD_ENDPOINTS": server.client_url}
    )


async def test_a_reference_worker_its_card_and_channel_are_seen_by_dyndisc(
    reference: Reference, dyndisc_etcd_server: EtcdServer, tmp_path: Path
) -> None:
    ns = unique("r")
    path = f"{ns}.comp.ep"
    async with dyndisc_runtime(dyndisc_etcd_server) as runtime, runtime.endpoint(path).watch() as events:
        assert await next_event(events, 5) == Resync(instances=())
        argv = ref_argv(
            reference, "ref_worker.py", "--backend", "etcd", "--endpoint", path,
            "--model-name", f"{ns}-model", "--minimal-card", "--event-channel", "kv",
        )  # fmt: skip
        async with (
            runtime.bucket("v1/mdc").watch(f"{ns}/") as cards,
            runtime.bucket("v1/event_channels").watch(f"namespace/{ns}/") as channel_entries,
            spawn("ref-worker", argv, ref_env(dyndisc_etcd_server, tmp_path), tmp_path) as worker,
        ):
            started = await worker.lines.wait_for("started", timeout=START)
            iid = started["connection_id"]
            added = await next_event(events, START)
            assert isinstance(added, Added)
            instance = added.instance
            # The same id, the reference's own transport (the path its TCP server routes by), its fields.
            assert instance.instance_id == iid
            assert instance.endpoint_id == EndpointId.parse(path)
            assert instance.transport is not None
            assert instance.transport.kind == "tcp"
            assert re.fullmatch(rf"127\.0\.0\.1:\d+/{iid:x}/{ns}/comp/ep", instance.transport.address)
            assert (instance.device_type, instance.request_plane_codec) == ("cpu", "msgpack")
            assert instance.readiness is Readiness.READY
            assert instance.metadata == {}
            # Its model card, read back as a ModelCard, and its event channel.
            (entry,) = await first_entries(cards, 10)
            card = ModelCard.from_entry(entry)
            assert (card.display_name, card.instance_id, card.lora) == (f"{ns}-model", iid, None)
            assert card.card["model_input"] == "Tokens"
            assert await runtime.endpoint(path).models() == [card]
            # The reference registers its channel in the background, after its publisher exists.
            await first_entries(channel_entries, 10)
            channels = await runtime.event_channels(InstanceQuery.parse(path))
            assert [(c.topic, c.transport["kind"]) for c in channels] == [("kv-events", "Zmq")]
            assert isinstance(channels[0], EventChannel)
            assert channels[0].transport["config"]["endpoint"].startswith("tcp://127.0.0.1:")
            # A clean exit: rt.shutdown() unregisters the endpoint at once (the card goes with the lease,
            # revoked at the end of the shutdown, or expiring if the driver's exit outran the revoke).
            sent = worker.signal(signal.SIGTERM)
            assert await next_event(events, 5) == Removed(endpoint=instance.endpoint_id, instance_id=iid)
            TIMINGS.add("etcd: reference SIGTERM -> dyndisc Removed", time.time() - sent)
            with anyio.fail_after(TTL + BOUND):
                while not isinstance(await anext(cards), EntryRemoved):
                    pass
        assert await runtime.models(InstanceQuery.parse(path)) == [], "the card went with the lease"

        # A crash: the lease expires on etcd's clock.
        async with spawn("ref-worker-2", argv, ref_env(dyndisc_etcd_server, tmp_path), tmp_path) as worker:
            iid = (await worker.lines.wait_for("started", timeout=START))["connection_id"]
            added = await next_event(events, START)
            assert isinstance(added, Added)
            assert added.instance.instance_id == iid
            await worker.lines.wait_for("serving", timeout=START)
            killed = worker.kill()
            assert await next_event(events, TTL + BOUND) == Removed(
                endpoint=EndpointId.parse(path), instance_id=iid
            )
            TIMINGS.add(f"etcd: reference SIGKILL -> dyndisc Removed (TTL {TTL:g}s)", time.time() - killed)


async def test_a_dyndisc_worker_is_seen_routed_to_and_dropped_by_a_reference_client(
    reference: Reference, dyndisc_etcd_server: EtcdServer, tmp_path: Path
) -> None:
    ns = unique("d")
    path = f"{ns}.comp.ep"
    ref_client = ref_argv(reference, "ref_client.py", "--backend", "etcd", "--endpoint", path)
    async with path_recorder() as server:
        worker_argv = dyndisc_argv(
            "--endpoint", path, "--tcp", f"127.0.0.1:{server.port}", "--device-type", "cpu",
            "--codec", "msgpack", "--lease-ttl", str(TTL),
        )  # fmt: skip
        async with (
            spawn("ref-client", ref_client, ref_env(dyndisc_etcd_server, tmp_path), tmp_path) as client,
            spawn("dd-worker", worker_argv, dd_env(dyndisc_etcd_server), tmp_path) as worker,
        ):
            await client.lines.wait_for("client_ready", timeout=START)
            registered = await worker.lines.wait_for("registered", timeout=30)
            iid = registered["instance_id"]
            seen = await client.lines.wait_for("instances", lambda i: iid in i["ids"], timeout=10)
            TIMINGS.add("etcd: dyndisc registered -> reference client lists it", seen["t"] - registered["t"])
            (view,) = [i for i in seen["instances"] if i["instance_id"] == iid]
            assert view["transport"] == {
                "kind": "tcp",
                "address": f"127.0.0.1:{server.port}/{iid:x}/{ns}/comp/ep",
            }
            assert view["device_type"] == "cpu"
            assert (view["namespace"], view["component"], view["endpoint"]) == (ns, "comp", "ep")

            # A Dynamo client calls it: the request goes to dyndisc's address, with the path dyndisc built.
            call = ref_argv(
                reference, "ref_client.py", "--backend", "etcd", "--endpoint", path, "--call", f"{iid:x}"
            )
            async with spawn("ref-call", call, ref_env(dyndisc_etcd_server, tmp_path), tmp_path) as caller:
                target = await caller.lines.wait_for("call_target", timeout=START)
                assert target["listed"] is True
                assert await server.next_path(timeout=15) == f"{iid:x}/{ns}/comp/ep"

            # Draining: Dynamo stops routing to it; dyndisc still lists it, as draining.
            async with dyndisc_runtime(dyndisc_etcd_server) as runtime:
                mark = len(client.lines.items)
                drained = worker.signal(signal.SIGUSR1)
                gone = await client.lines.wait_for(
                    "instances", lambda i: iid not in i["ids"], after=mark, timeout=10
                )
                TIMINGS.add("etcd: dyndisc drain -> reference client stops listing it", gone["t"] - drained)
                (listed,) = await runtime.endpoint(path).list()
                assert (listed.instance_id, listed.readiness) == (iid, Readiness.DRAINING)
                mark = len(client.lines.items)
                worker.signal(signal.SIGUSR2)
                await client.lines.wait_for("instances", lambda i: iid in i["ids"], after=mark, timeout=10)
                (listed,) = await runtime.endpoint(path).list()
                assert listed.readiness is Readiness.READY

            # A clean exit revokes the lease: the reference drops it at once.
            mark = len(client.lines.items)
            stopped = worker.signal(signal.SIGTERM)
            dropped = await client.lines.wait_for(
                "instances", lambda i: iid not in i["ids"], after=mark, timeout=5
            )
            TIMINGS.add("etcd: dyndisc SIGTERM -> reference client drops it", dropped["t"] - stopped)
            await worker.lines.wait_for("stopped", timeout=10)

        # A crash: the reference drops it when the lease expires.
        async with (
            spawn("ref-client-2", ref_client, ref_env(dyndisc_etcd_server, tmp_path), tmp_path) as client,
            spawn("dd-worker-2", worker_argv, dd_env(dyndisc_etcd_server), tmp_path) as worker,
        ):
            iid = (await worker.lines.wait_for("registered", timeout=30))["instance_id"]
            await client.lines.wait_for("instances", lambda i: iid in i["ids"], timeout=START)
            mark = len(client.lines.items)
            killed = worker.kill()
            dropped = await client.lines.wait_for(
                "instances", lambda i: iid not in i["ids"], after=mark, timeout=TTL + BOUND
            )
            TIMINGS.add(
                f"etcd: dyndisc SIGKILL -> reference client drops it (TTL {TTL:g}s)", dropped["t"] - killed
            )


async def test_names_the_reference_accepts_cross_both_ways(
    reference: Reference, dyndisc_etcd_server: EtcdServer, tmp_path: Path
) -> None:
    ns = unique("n")
    theirs, ours = f"{ns}.c\u00f6mp.ep:v2", f"{ns}.c+1.my \u00e9p"
    async with dyndisc_runtime(dyndisc_etcd_server) as runtime:
        client = await runtime.endpoint(theirs).client()
        async with (
            spawn(
                "ref-worker",
                ref_argv(reference, "ref_worker.py", "--backend", "etcd", "--endpoint", theirs),
                ref_env(dyndisc_etcd_server, tmp_path),
                tmp_path,
            ) as worker,
            spawn(
                "ref-client",
                ref_argv(reference, "ref_client.py", "--backend", "etcd", "--endpoint", ours),
                ref_env(dyndisc_etcd_server, tmp_path),
                tmp_path,
            ) as ref_client,
            spawn(
                "dd-worker", dyndisc_argv("--endpoint", ours), dd_env(dyndisc_etcd_server), tmp_path
            ) as dd_worker,
        ):
            iid = (await worker.lines.wait_for("started", timeout=START))["connection_id"]
            (found,) = await client.wait_for_instances(timeout=START)
            assert (found.instance_id, found.endpoint_id) == (iid, EndpointId.parse(theirs))
            assert found.transport is not None
            assert found.transport.address.endswith(f"/{iid:x}/{ns}/c\u00f6mp/ep:v2")
            mine = (await dd_worker.lines.wait_for("registered", timeout=30))["instance_id"]
            seen = await ref_client.lines.wait_for("instances", lambda i: mine in i["ids"], timeout=10)
            (view,) = seen["instances"]
            assert (view["component"], view["endpoint"]) == ("c+1", "my \u00e9p")
            assert view["transport"]["address"].endswith(f"/{mine:x}/{ns}/c+1/my \u00e9p")
