"""The first snapshot of a large endpoint, each measurement in a new process, ours beside the raw client.

    python -m benchmarks.bulk [--sizes 10000,30000,100000] [--runs 3] [--json out.json]

One etcd holds ``n`` instances of one endpoint. A new process then starts (imports done, runtime and
connection made, outside the timing) and is timed from ``endpoint.client()`` called to every instance being in
the client: wall time, CPU time per instance, the share of it spent in the garbage collector, and the memory
it holds per instance (traced by ``tracemalloc`` in a run of its own, and as the growth of the process's
resident set). The raw client, in a process of its own too, does the least etcd allows: one ``Range`` of the
prefix into a ``{key: value}`` dict of bytes, then a ``Watch`` created from the revision it read (aetcd's
generated stubs, nothing of dyndisc). A second raw client (``raw-json``) reads the prefix in the pages
dyndisc's listing takes, at one revision, and parses each value with ``json.loads`` while the next page is on
its way, the garbage collector paused as dyndisc pauses it: the least a reader that looks at the records does,
what issue 25's goal compares with. They alternate, ``--runs`` times each; the figures are medians, and each
ratio is the median of the runs' own ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

NAMESPACE, COMPONENT, ENDPOINT = "bulk", "c", "e"
PREFIX = f"/services/{NAMESPACE}/{COMPONENT}/{ENDPOINT}/"
#: etcd's default limit of operations in one transaction (``--max-txn-ops``).
TXN_OPS = 128


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _GcTimer:
    """Time spent in the garbage collector, from ``gc.callbacks``."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


# -- the measured processes ---------------------------------------------------------------------------------
async def _ours(endpoint: str, count: int, traced: bool) -> dict[str, Any]:
    from dyndisc import DistributedRuntime, KvDiscovery
    from dyndisc.backends.etcd import EtcdSettings, EtcdStore

    async with DistributedRuntime(KvDiscovery(EtcdStore(EtcdSettings.load(endpoints=endpoint)))) as rt:
        handle = rt.endpoint(f"{NAMESPACE}.{COMPONENT}.{ENDPOINT}")
        return await _measure(lambda: handle.client(), lambda c: len(c.instances()), count, traced)


async def _raw_json(endpoint: str, count: int, traced: bool) -> dict[str, Any]:
    return await _raw(endpoint, count, traced, pages=True)


async def _raw(endpoint: str, count: int, traced: bool, *, pages: bool = False) -> dict[str, Any]:
    """The raw client. With ``pages``, what the issue's goal is held against: the prefix read in pages of
    dyndisc's size at one revision, each value parsed by ``json.loads`` while the next page is on its way
    (the least a reader that looks at the records can do)."""
    from aetcd import rpc
    from aetcd.utils import prefix_range_end

    from dyndisc.backends.etcd.listing import LIST_MAX_PAGES, LIST_PAGE_SIZE

    # A large prefix is one large answer: lift gRPC's 4 MiB cap, as dyndisc's channels do.
    options = [("grpc.max_receive_message_length", 2**31 - 1)]
    channel = rpc.insecure_channel(endpoint.removeprefix("http://"), options=options)
    kv, watch = rpc.KVStub(channel), rpc.WatchStub(channel)
    await kv.Range(rpc.RangeRequest(key=b"/warm-up"))  # the connection exists before the timing
    calls: list[Any] = []

    async def snapshot() -> dict[bytes, Any]:
        key = PREFIX.encode()
        end = prefix_range_end(key)
        if not pages:
            reply = await kv.Range(rpc.RangeRequest(key=key, range_end=end))
            items: dict[bytes, Any] = {bytes(kv.key): bytes(kv.value) for kv in reply.kvs}
        else:
            items, revision, page = {}, 0, LIST_PAGE_SIZE
            gc.disable()  # as dyndisc pauses it around bulk steps: many objects, none of them garbage
            # Each page is parsed while etcd answers the next one: the request goes out first.
            pending = asyncio.ensure_future(kv.Range(rpc.RangeRequest(key=key, range_end=end, limit=page)))
            while True:
                reply = await pending
                if not revision:  # the pages dyndisc's listing takes: few, since etcd counts every key left
                    revision = reply.header.revision
                    page = max(page, -(-(reply.count - len(reply.kvs)) // LIST_MAX_PAGES))
                if reply.more:
                    start = bytes(reply.kvs[-1].key) + b"\0"
                    request = rpc.RangeRequest(key=start, range_end=end, limit=page, revision=revision)
                    pending = asyncio.ensure_future(kv.Range(request))
                    await asyncio.sleep(0)  # grpc sends it from a task of its own: let that task run first
                for found in reply.kvs:
                    items[bytes(found.key)] = json.loads(found.value)
                if not reply.more:
                    break
            gc.enable()
        call = watch.Watch()
        calls.append(call)
        create = rpc.WatchCreateRequest(
            key=key, range_end=prefix_range_end(key), start_revision=reply.header.revision + 1
        )
        await call.write(rpc.WatchRequest(create_request=create))
        assert (await call.read()).created
        return items

    try:
        return await _measure(snapshot, len, count, traced)
    finally:
        for call in calls:
            call.cancel()
        await channel.close()


async def _measure(make: Any, size: Any, count: int, traced: bool) -> dict[str, Any]:
    gc.collect()
    timer = _GcTimer()
    if traced:
        tracemalloc.start()
    before_traced = tracemalloc.get_traced_memory()[0] if traced else 0
    before_rss = _rss()
    gc.callbacks.append(timer)
    cpu, wall = time.process_time(), time.perf_counter()
    held = await make()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gc.callbacks.remove(timer)
    assert size(held) == count, (size(held), count)
    gc.collect()
    figures: dict[str, Any] = {"rss_bytes": (_rss() - before_rss) / count}
    if traced:
        figures["traced_bytes"] = (tracemalloc.get_traced_memory()[0] - before_traced) / count
        tracemalloc.stop()
    else:
        figures |= {"wall_s": wall, "cpu_us": cpu / count * 1e6, "gc_share": timer.total / max(cpu, 1e-9)}
    return figures


async def _registrations(side: str, endpoint: str, count: int, in_flight: int, tag: str) -> dict[str, Any]:
    """``count`` registrations, ``in_flight`` at a time, from one process: CPU time per registration."""
    limiter = asyncio.Semaphore(in_flight)
    transport = "tcp://10.0.0.1:9000"
    if side == "ours":
        from dyndisc import DistributedRuntime, KvDiscovery
        from dyndisc.backends.etcd import EtcdSettings, EtcdStore

        async with DistributedRuntime(
            KvDiscovery(EtcdStore(EtcdSettings.load(endpoints=endpoint))), lease_ttl=60
        ) as rt:

            async def one(n: int) -> None:
                async with limiter:
                    await rt.endpoint(f"reg{tag}.c.e{n}").register(transport)

            return await _timed(one, count)
    from aetcd import rpc

    from dyndisc import Instance

    channel = rpc.insecure_channel(endpoint.removeprefix("http://"))
    kv, leases = rpc.KVStub(channel), rpc.LeaseStub(channel)
    lease = (await leases.LeaseGrant(rpc.LeaseGrantRequest(TTL=60))).ID
    # The same record bytes as ours writes, made outside the timing: the raw client does no encoding.
    values = [Instance(f"reg{tag}", "c", f"e{n}", lease, transport).to_json() for n in range(count)]

    async def put(n: int) -> None:
        async with limiter:
            key = f"/services/reg{tag}/c/e{n}/{lease:x}".encode()
            value = values[n]
            if side == "raw-encode":
                # What any client registering an endpoint from its names must do besides the request: the
                # record's JSON (the same bytes, by the standard library, nothing checked).
                host = transport.removeprefix("tcp://")
                names = {"namespace": f"reg{tag}", "component": "c", "endpoint": f"e{n}"}
                record = {**names, "instance_id": lease, "transport": {"tcp": host}}
                value = json.dumps(record, separators=(",", ":")).encode()
            put = rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))
            if side == "raw":
                # A transaction of one leased put: etcd 3.5 serves it 3-4 times faster than a leased Put.
                await kv.Txn(rpc.TxnRequest(success=[put]))
                return
            # raw-create (and raw-encode): the request dyndisc sends (create if absent, else read what is
            # there), with a deadline as every call of dyndisc's carries: what the semantics cost, apart from
            # the library.
            equal, create = rpc.Compare.CompareResult.EQUAL, rpc.Compare.CompareTarget.CREATE
            absent = rpc.Compare(result=equal, target=create, key=key, create_revision=0)
            read = rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
            await kv.Txn(rpc.TxnRequest(compare=[absent], success=[put], failure=[read]), timeout=5.0)

    try:
        return await _timed(put, count)
    finally:
        await channel.close()


async def _timed(one: Any, count: int) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": wall, "cpu_us": cpu / count * 1e6}


def measure_registrations(
    endpoint: str, count: int, processes: int, in_flight: int, runs: int
) -> dict[str, Any]:
    """``count`` registrations from ``processes`` processes at once, ``in_flight`` each, ours and raw in
    turn: registrations per second and CPU per registration (medians over ``runs``). Raw three times: a
    leased put (the least etcd allows); ``raw-create``, the request dyndisc sends (what its semantics cost);
    ``raw-encode``, that request with the record encoded per registration by ``json.dumps`` (what any
    client registering from names must also do)."""
    samples: dict[str, list[float]] = {}
    for run in range(runs):
        found: dict[str, float] = {}
        # Alternate which side goes first: the store grows with every run.
        sides = ("ours", "raw", "raw-create", "raw-encode")
        for side in sides if run % 2 == 0 else sides[::-1]:
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.bulk",
                        "child-reg",
                        side,
                        endpoint,
                        str(count // processes),
                        str(in_flight),
                        f"{side}{run}x{p}",
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for p in range(processes)
            ]
            results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
            found[f"{side}_per_s"] = count / max(r["wall_s"] for r in results)
            found[f"{side}_cpu_us"] = statistics.median(r["cpu_us"] for r in results)
        found["ratio_rate"] = found["raw_per_s"] / found["ours_per_s"]
        found["ratio_cpu"] = found["ours_cpu_us"] / found["raw_cpu_us"]
        found["ratio_cpu_same_request"] = found["ours_cpu_us"] / found["raw-create_cpu_us"]
        found["ratio_cpu_same_work"] = found["ours_cpu_us"] / found["raw-encode_cpu_us"]
        for name, value in found.items():
            samples.setdefault(name, []).append(value)
    figures: dict[str, Any] = {"registrations": count, "processes": processes, "in_flight": in_flight}
    for name, values in samples.items():
        figures[name] = round(statistics.median(values), 3 if "ratio" in name else 1)
    return figures


def child(argv: list[str]) -> None:
    """``child ours|raw time|traced ENDPOINT COUNT``: measure once, print the figures as JSON."""
    side, mode, endpoint, count = argv[0], argv[1], argv[2], int(argv[3])
    run = {"ours": _ours, "raw": _raw, "raw-json": _raw_json}[side]
    print(json.dumps(asyncio.run(run(endpoint, count, mode == "traced"))), flush=True)


# -- the driver ---------------------------------------------------------------------------------------------
async def _seed(endpoint: str, count: int, start: int) -> None:
    """Instances ``start + 1 .. count`` of the endpoint, as dyndisc writes them, in transactions."""
    from aetcd import rpc

    from dyndisc import Instance

    channel = rpc.insecure_channel(endpoint.removeprefix("http://"))
    kv = rpc.KVStub(channel)
    sem = asyncio.Semaphore(16)

    async def batch(first: int) -> None:
        ops = []
        for n in range(first, min(first + TXN_OPS, count + 1)):
            record = Instance(NAMESPACE, COMPONENT, ENDPOINT, n, f"tcp://10.0.{n >> 8 & 255}.{n & 255}:9000")
            key = f"{PREFIX}{n:x}".encode()
            ops.append(rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=record.to_json())))
        async with sem:
            await kv.Txn(rpc.TxnRequest(success=ops))

    await asyncio.gather(*(batch(first) for first in range(start + 1, count + 1, TXN_OPS)))
    await channel.close()


def _measure_in_child(side: str, mode: str, endpoint: str, count: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bulk", "child", side, mode, endpoint, str(count)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {side} {mode} run failed: {done.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def measure(endpoint: str, count: int, runs: int) -> dict[str, Any]:
    """Medians of ``runs`` alternating runs of ours and raw at ``count`` instances."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        run: dict[str, float] = {}
        for side in ("ours", "raw", "raw-json"):
            for mode in ("time", "traced"):
                for name, value in _measure_in_child(side, mode, endpoint, count).items():
                    # RSS is read in the timed run (tracemalloc's own tables would inflate it).
                    if mode == "traced" and name == "rss_bytes":
                        continue
                    run[f"{side}_{name}"] = value
        for name in ("wall_s", "cpu_us", "traced_bytes", "rss_bytes"):
            run[f"ratio_{name}"] = run[f"ours_{name}"] / max(run[f"raw_{name}"], 1e-12)
            run[f"ratio_json_{name}"] = run[f"ours_{name}"] / max(run[f"raw-json_{name}"], 1e-12)
        for name, value in run.items():
            samples.setdefault(name, []).append(value)
    figures: dict[str, Any] = {"instances": count, "runs": runs}
    for name, values in samples.items():
        digits = 4 if "wall" in name else 3 if "ratio" in name or "share" in name else 2
        figures[name] = round(statistics.median(values), digits)
    return figures


def run_sizes(endpoint: str, sizes: list[int], runs: int) -> list[dict[str, Any]]:
    """Seed up to each size in turn (one etcd, growing) and measure it."""
    results = []
    seeded = 0
    for count in sorted(sizes):
        asyncio.run(_seed(endpoint, count, seeded))
        seeded = count
        results.append(measure(endpoint, count, runs))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "child-reg":
        side, endpoint, count, in_flight, tag = sys.argv[2:7]
        found = asyncio.run(_registrations(side, endpoint, int(count), int(in_flight), tag))
        print(json.dumps(found), flush=True)
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bulk", description=__doc__)
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--registrations", type=int, default=0, help="also time this many CPU-bound registrations"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    from dyndisc.testing.servers import EtcdServer

    results: dict[str, Any] = {}
    with EtcdServer() as server:
        if args.registrations:
            results["registrations"] = measure_registrations(
                server.client_url, args.registrations, 4, 32, args.runs
            )
            print(json.dumps(results["registrations"]), file=sys.stderr, flush=True)
        sizes = [int(s) for s in args.sizes.split(",") if s]
        results["snapshot"] = run_sizes(server.client_url, sizes, args.runs) if sizes else []
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
