"""NATS on a cluster: how long a client takes to fail over when a server fails.

    python -m benchmarks.nats_failover [--runs 5] [--faults kill,leader,meta,partition,silent]
                                       [--ttl 10] [--json out.json] [--quick]

Each run starts a cluster of three nats-servers (``NatsCluster``) and a bucket with a copy on each; a worker
runtime (lease TTL ``--ttl``, default the runtime's 10 s) and a watcher runtime, each given the three
servers, are placed on the server the fault hits (the stream leader's own clients for ``leader``). Then the
fault, and, timed from it:

* **moved**: the worker's connection is on another server (``kill``: nats-py reconnects; ``partition``,
  ``silent``: the server keeps the connection and dyndisc's probe leaves it; ``leader``, ``meta``: the
  server is killed under its clients too);
* **write**: the worker's next registration succeeds (tried again on ``BackendUnavailableError``, as an
  application would: a write fails while the stream has no leader);
* **seen**: the watcher's watch, the same one as before the fault, shows that registration;
* **lease**: whether the worker kept its lease (else it was replaced, and the runtime said why).

``kill``: a server that leads nothing; ``leader``: the bucket's stream leader; ``meta``: the JetStream meta
leader when it leads nothing else; ``partition``: a server that leads nothing, its routes reset;
``silent``: the same, its routes black-holed. Medians and maxima over ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import uuid
from typing import Any

import anyio

from dyndisc import Added, BackendUnavailableError, DistributedRuntime, KvDiscovery, Resync
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing import RuntimeHost
from dyndisc.testing.servers import NatsCluster, NatsClusterServer

FAULTS = ("kill", "leader", "meta", "partition", "silent")
#: Seconds a run may take from the fault to the watcher seeing the write.
LIMIT = 60.0


class Placed:
    """A runtime on a chosen server of the cluster (made again until its connection lands there)."""

    def __init__(self, host: RuntimeHost, store: NatsStore) -> None:
        self.host, self.store = host, store

    @classmethod
    async def on(
        cls, cluster: NatsCluster, bucket: str, server: NatsClusterServer | None, ttl: float
    ) -> Placed:
        settings = NatsSettings.load(
            server=cluster.servers_setting, kv_bucket=bucket, kv_replicas=3, timeout=3.0
        )
        for _ in range(40):
            store = NatsStore(settings)
            host = await RuntimeHost.start(DistributedRuntime(KvDiscovery(store), lease_ttl=ttl))
            url = store.connection.connected_url
            if server is None or (url is not None and cluster.server_at(url) is server):
                return cls(host, store)
            await host.stop()
            await store.aclose()
        raise RuntimeError(f"no runtime landed on {server}")

    def server(self, cluster: NatsCluster) -> NatsClusterServer | None:
        url = self.store.connection.connected_url
        return None if url is None else cluster.server_at(url)

    async def close(self) -> None:
        with anyio.move_on_after(15):
            await self.host.stop()
        await self.store.aclose()


def _victim(cluster: NatsCluster, stream: str, fault: str) -> NatsClusterServer | None:
    leader, meta = cluster.stream_leader(stream), cluster.meta_leader()
    if fault == "leader":
        return leader
    if fault == "meta":
        return meta if meta is not leader else None
    return next((s for s in cluster.servers if s not in (leader, meta)), None)


async def one_run(fault: str, ttl: float) -> dict[str, Any] | None:
    """One fault on a fresh cluster: its timings, or ``None`` when no server fits the fault this time."""
    with NatsCluster() as cluster:
        bucket, namespace = f"fo_{uuid.uuid4().hex[:8]}", f"n{uuid.uuid4().hex[:8]}"
        first = await Placed.on(cluster, bucket, None, ttl)  # makes the bucket
        placed = [first]
        try:
            victim = _victim(cluster, f"KV_{bucket}", fault)
            if victim is None:
                return None
            worker = await Placed.on(cluster, bucket, victim, ttl)
            watcher = await Placed.on(cluster, bucket, victim, ttl)
            placed += [worker, watcher]
            runtime = worker.host.runtime
            lease = runtime.instance_id
            await runtime.endpoint(f"{namespace}.backend.before").register("tcp://10.9.0.1:9000")
            seen = anyio.Event()
            async with (
                watcher.host.runtime.namespace(namespace).watch() as events,
                anyio.create_task_group() as tg,
            ):

                async def follow() -> None:
                    async for event in events:
                        shown = (
                            (event.instance,)
                            if isinstance(event, Added)
                            else event.instances
                            if isinstance(event, Resync)
                            else ()
                        )
                        if any(i.endpoint_id.endpoint == "after" for i in shown):
                            seen.set()

                tg.start_soon(follow)
                await anyio.sleep(0.5)
                started = time.monotonic()
                if fault in ("partition", "silent"):
                    await anyio.to_thread.run_sync(
                        lambda: cluster.partition(victim, silent=fault == "silent")
                    )
                else:
                    await anyio.to_thread.run_sync(victim.kill)
                figures: dict[str, Any] = {"fault": fault, "victim_led": fault in ("leader", "meta")}
                with anyio.fail_after(LIMIT):
                    while worker.server(cluster) in (None, victim):  # noqa: ASYNC110 - polled: no event
                        await anyio.sleep(0.01)
                    figures["moved_s"] = round(time.monotonic() - started, 3)
                    while True:
                        try:
                            await runtime.endpoint(f"{namespace}.backend.after").register(
                                "tcp://10.9.0.1:9001"
                            )
                            break
                        except BackendUnavailableError:
                            await anyio.sleep(0.05)
                    figures["write_s"] = round(time.monotonic() - started, 3)
                    await seen.wait()
                    figures["seen_s"] = round(time.monotonic() - started, 3)
                figures["lease_kept"] = runtime.instance_id == lease
                tg.cancel_scope.cancel()
            cluster.heal()
            return figures
        finally:
            for one in reversed(placed):
                await one.close()


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(rows)}
    for key in ("moved_s", "write_s", "seen_s"):
        values = [r[key] for r in rows]
        out[key] = {"median": round(statistics.median(values), 3), "max": max(values)}
    out["leases_kept"] = f"{sum(r['lease_kept'] for r in rows)}/{len(rows)}"
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": {"command": " ".join(["python -m benchmarks.nats_failover", *sys.argv[1:]])}
    }
    for fault in args.faults:
        rows: list[dict[str, Any]] = []
        attempts = 0
        while len(rows) < args.runs and attempts < args.runs * 4:
            attempts += 1
            row = await one_run(fault, args.ttl)
            if row is not None:
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        results[fault] = {"summary": summary(rows) if rows else None, "rows": rows}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nats_failover", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=10.0, help="the worker's lease TTL, seconds")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated: {', '.join(FAULTS)}")
    parser.add_argument(
        "--quick", action="store_true", help="one run of kill and partition: a smoke run for CI"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.faults = 1, "kill,partition"
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    logging.basicConfig(level=logging.ERROR)  # the faults' warnings are expected: the figures tell
    results = anyio.run(run, args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text)


if __name__ == "__main__":
    main()
