"""dyndisc and the reference runtime (Dynamo 1.6.1) on one host, in one file store (``DYN_FILE_KV``), under
the ``dynamo-v1`` layout: the reference's flat percent-encoded files, live while their mtime is fresh.

Each side sees the other's workers with the same ids, transports and optional fields (and the reference's
model card); a clean exit is seen at once, a SIGKILL once the files are older than the reference's 10 s
expiry and a watcher's sweep (every 3.3 s) removes them.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
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

from dyndisc import (
    Added,
    DiscoveryEvent,
    EndpointId,
    InstanceQuery,
    KvDiscovery,
    ModelCard,
    Readiness,
    Removed,
    Resync,
)
from dyndisc.backends.file import DynamoFileStore
from dyndisc.backends.file.dynamo_store import REFERENCE_EXPIRY

START = 60.0
PROMPT = 5.0
#: A crashed writer's file is deleted by the first sweep after it is older than the expiry.
CRASH_BOUND = REFERENCE_EXPIRY + REFERENCE_EXPIRY / 3 + 2.0


async def until(events: AsyncIterator[DiscoveryEvent], wanted: DiscoveryEvent, timeout: float) -> float:
    """Skip events until ``wanted``; return when it came."""
    with anyio.fail_after(timeout):
        while await anext(events) != wanted:
            pass
    return time.time()


async def test_reference_and_dyndisc_workers_see_each_other_in_one_file_store(
    reference: Reference, tmp_path: Path
) -> None:
    root = tmp_path / "kv"
    ns = f"f{uuid.uuid4().hex[:6]}"
    path = f"{ns}.comp.ep"
    endpoint = EndpointId.parse(path)
    ref_env = reference_env({"DYN_FILE_KV": str(root), "CUDA_VISIBLE_DEVICES": ""}, tmp_path)
    dd_env = dyndisc_env(
        {"DYN_DISCOVERY_BACKEND": "file", "DYN_KV_LAYOUT": "dynamo-v1", "DYN_FILE_KV": str(root)}
    )
    ref_worker = ref_argv(
        reference, "ref_worker.py", "--backend", "file", "--endpoint", path, "--model-name", f"{ns}-model",
        "--minimal-card",
    )  # fmt: skip
    dd_worker = dyndisc_argv("--endpoint", path, "--tcp", "127.0.0.1:9", "--device-type", "cpu")
    ref_client = ref_argv(reference, "ref_client.py", "--backend", "file", "--endpoint", path)
    backend = KvDiscovery(DynamoFileStore(root), layout="dynamo-v1")
    async with (
        backend,
        backend.watch(InstanceQuery.parse(path)) as events,
        backend.watch_entries("v1/mdc", f"{ns}/") as cards,
        spawn("ref-client", ref_client, ref_env, tmp_path) as client,
    ):
        await client.lines.wait_for("client_ready", timeout=START)
        async with (
            spawn("ref-worker", ref_worker, ref_env, tmp_path) as worker,
            spawn("dd-worker", dd_worker, dd_env, tmp_path) as dd,
        ):
            theirs = (await worker.lines.wait_for("started", timeout=START))["connection_id"]
            registered = await dd.lines.wait_for("registered", timeout=30)
            mine = registered["instance_id"]
            # The reference worker, seen by dyndisc.
            found = {}
            with anyio.fail_after(START):
                while set(found) != {theirs, mine}:
                    event = await anext(events)
                    if isinstance(event, Resync):  # the first event: what is there when it is read
                        found = {i.instance_id: i for i in event.instances}
                    elif isinstance(event, Added):
                        found[event.instance.instance_id] = event.instance
            transport = found[theirs].transport
            assert transport is not None
            assert re.fullmatch(rf"127\.0\.0\.1:\d+/{theirs:x}/{ns}/comp/ep", transport.address)
            assert (found[theirs].device_type, found[theirs].request_plane_codec) == ("cpu", "msgpack")
            (entry,) = await first_entries(cards, START)
            card = ModelCard.from_entry(entry)
            assert (card.display_name, card.instance_id) == (f"{ns}-model", theirs)
            # The dyndisc worker, seen by the reference client; its file is named as the reference names them.
            seen = await client.lines.wait_for("instances", lambda i: mine in i["ids"], timeout=START)
            TIMINGS.add("files: dyndisc registered -> reference client lists it", seen["t"] - registered["t"])
            (view,) = [i for i in seen["instances"] if i["instance_id"] == mine]
            assert view["transport"] == {"kind": "tcp", "address": f"127.0.0.1:9/{mine:x}/{ns}/comp/ep"}
            assert view["device_type"] == "cpu"
            assert theirs in seen["ids"]
            assert (root / "v1" / "instances" / f"{ns}%2Fcomp%2Fep%2F{mine:x}").is_file()

            # Draining: the reference stops listing it, dyndisc sees it draining.
            mark = len(client.lines.items)
            drained = dd.signal(signal.SIGUSR1)
            gone = await client.lines.wait_for(
                "instances", lambda i: mine not in i["ids"], after=mark, timeout=PROMPT
            )
            TIMINGS.add("files: dyndisc drain -> reference client stops listing it", gone["t"] - drained)
            await until(events, Added(instance=found[mine].replace(readiness=Readiness.DRAINING)), PROMPT)
            mark = len(client.lines.items)
            dd.signal(signal.SIGUSR2)
            await client.lines.wait_for("instances", lambda i: mine in i["ids"], after=mark, timeout=PROMPT)

            # Clean exits: each deletes its files.
            mark = len(client.lines.items)
            stopped = dd.signal(signal.SIGTERM)
            dropped = await client.lines.wait_for(
                "instances", lambda i: mine not in i["ids"], after=mark, timeout=PROMPT
            )
            TIMINGS.add("files: dyndisc SIGTERM -> reference client drops it", dropped["t"] - stopped)
            sent = worker.signal(signal.SIGTERM)
            seen_at = await until(events, Removed(endpoint=endpoint, instance_id=theirs), PROMPT)
            TIMINGS.add("files: reference SIGTERM -> dyndisc Removed", seen_at - sent)

        # Crashes, both at once: the files stay until they are older than the expiry and a sweep finds them.
        async with (
            spawn("ref-worker-2", ref_worker, ref_env, tmp_path) as worker,
            spawn("dd-worker-2", dd_worker, dd_env, tmp_path) as dd,
        ):
            theirs = (await worker.lines.wait_for("started", timeout=START))["connection_id"]
            mine = (await dd.lines.wait_for("registered", timeout=30))["instance_id"]
            await client.lines.wait_for("instances", lambda i: mine in i["ids"], timeout=START)
            with anyio.fail_after(START):
                while (
                    not isinstance(event := await anext(events), Added)
                    or event.instance.instance_id != theirs
                ):
                    pass
            mark = len(client.lines.items)
            killed = worker.kill()
            dd.kill()
            seen_at = await until(events, Removed(endpoint=endpoint, instance_id=theirs), CRASH_BOUND)
            TIMINGS.add("files: reference SIGKILL -> dyndisc Removed (10 s expiry)", seen_at - killed)
            dropped = await client.lines.wait_for(
                "instances", lambda i: mine not in i["ids"], after=mark, timeout=CRASH_BOUND
            )
            TIMINGS.add(
                "files: dyndisc SIGKILL -> reference client drops it (10 s expiry)", dropped["t"] - killed
            )
