"""NATS: keep-alive messages reaching a watcher, and 64-in-flight registrations, beside the raw client.

    python -m benchmarks.natskeep [--endpoints 1,100,1000] [--ttl 2] [--runs 3]

One runtime holds ``n`` endpoints with lease TTL ``--ttl``; a second process's watch of the bucket counts
every message its consumer receives during three TTLs (nothing else writes meanwhile): that is what each
watcher receives and parses to keep the runtime's registrations alive. Then 1,000 registrations with 64 in
flight, ours and the raw client (nats-py's ``kv.create`` with a per-key TTL) alternating, ``--runs`` times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from benchmarks.cases import run_bounded
from dyndisc import DistributedRuntime, KvDiscovery


async def _count_messages(url: str, bucket: str, seconds: float) -> int:
    """Messages a consumer of the whole bucket receives during ``seconds`` (after its initial state)."""
    import nats

    nc = await nats.connect(url)
    received = 0

    async def on_msg(msg: Any) -> None:
        nonlocal received
        received += 1

    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"$KV.{bucket}.>", cb=on_msg, ordered_consumer=True, deliver_policy="new")
        await anyio.sleep(seconds)  # a counting window, not a wait for a condition
        await sub.unsubscribe()
    finally:
        await nc.close()
    return received


#: Registrations in flight at once, ours and raw.
IN_FLIGHT = 64


def _registering(runtime: DistributedRuntime, ns: str) -> Callable[[int], Awaitable[None]]:
    """Register endpoint ``e<n>`` of ``ns`` on ``runtime``."""

    async def register(n: int) -> None:
        await runtime.endpoint(f"{ns}.c.e{n}").register("tcp://127.0.0.1:1")

    return register


async def keepalive(url: str, bucket: str, counts: list[int], ttl: float) -> dict[str, float]:
    from dyndisc.backends.nats import NatsSettings, NatsStore

    figures: dict[str, float] = {"ttl_s": ttl}
    for count in counts:
        settings = NatsSettings.load(server=url, kv_bucket=bucket)
        async with DistributedRuntime(KvDiscovery(NatsStore(settings)), lease_ttl=ttl) as runtime:
            await run_bounded(count, IN_FLIGHT, _registering(runtime, f"k{uuid.uuid4().hex[:8]}"))
            window = 3 * ttl
            figures[f"{count}_endpoints_msgs_per_s"] = round(
                await _count_messages(url, bucket, window) / window, 2
            )
    return figures


async def registrations(url: str, bucket: str, count: int, runs: int) -> dict[str, float]:
    import nats

    from dyndisc.backends.nats import NatsSettings, NatsStore

    ours: list[float] = []
    raw: list[float] = []
    nc = await nats.connect(url)
    kv = await nc.jetstream().key_value(bucket)
    value = b'{"namespace":"r","component":"c","endpoint":"e","instance_id":1,"transport":{"tcp":"h:1"}}'
    try:
        for _ in range(runs):
            ns = f"r{uuid.uuid4().hex[:8]}"
            settings = NatsSettings.load(server=url, kv_bucket=bucket)
            async with DistributedRuntime(KvDiscovery(NatsStore(settings)), lease_ttl=30) as runtime:
                ours.append(await run_bounded(count, IN_FLIGHT, _registering(runtime, ns)))

            async def put(n: int, ns: str = ns) -> None:
                await kv.create(f"raw.{ns}.{n}", value, msg_ttl=30)

            raw.append(await run_bounded(count, IN_FLIGHT, put))
    finally:
        await nc.close()
    return {
        "c64_per_s": round(count / statistics.median(ours)),
        "raw_c64_per_s": round(count / statistics.median(raw)),
        "ratio_c64": round(statistics.median(o / r for o, r in zip(ours, raw, strict=True)), 2),
    }


async def run(counts: list[int], ttl: float, runs: int) -> dict[str, Any]:
    from dyndisc.backends.nats import NatsSettings, NatsStore
    from dyndisc.testing.servers import NatsServer

    with NatsServer() as server:
        bucket = "dyndisc_keep"
        first = NatsStore(NatsSettings.load(server=server.url, kv_bucket=bucket))
        await first.get_prefix("/")  # creates the bucket (with per-key TTLs and markers)
        await first.aclose()
        return {
            "keepalive": await keepalive(server.url, bucket, counts, ttl),
            "registrations": await registrations(server.url, bucket, 1000, runs),
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.natskeep", description=__doc__)
    parser.add_argument("--endpoints", default="1,100,1000")
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    counts = [int(c) for c in args.endpoints.split(",")]
    print(json.dumps(anyio.run(run, counts, args.ttl, args.runs)))


if __name__ == "__main__":
    main()
