"""Beside the reference runtime (``ai-dynamo-runtime`` 1.6.1) on one etcd: the same measurements, each side in
processes of its own, ours under the reference's key layout (``DYN_KV_LAYOUT=dynamo-v1``).

    python -m benchmarks.reference [--sizes 1000,3000,10000] [--toggles 30] [--runs 3] [--json out.json]
    python -m benchmarks.reference --quick      # the smoke version: seconds

* **sync**: ``n`` instances of one endpoint in the reference's layout; a new process times
  ``endpoint.client()`` until its client lists all ``n`` (wall and CPU time, imports and the runtime's own
  start outside the timing). The reference's client has no "wait for n", so it is polled every 5 ms.
* **register → visible**: a worker process registers and unregisters its endpoint instance when told on
  stdin; a raw etcd watch in this process (aetcd's stubs) stamps the moment the key arrives. Figures: from the
  call to the key seen (p50, p99), and the call's own duration, ``--toggles`` of each per run.

The reference is installed (or reused) by ``tools/dynamo-reference/install.sh``; its side runs
``tools/dynamo-reference/ref_bench.py``. Ratios are ours / reference, medians of the runs' own ratios: below
1 means dyndisc is faster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "dynamo-reference"
SYNCED = "bench.sync.generate"
TOGGLED = "bench.toggle.generate"
#: Transactions of this many puts seed the instances (etcd's default ``--max-txn-ops``).
TXN_OPS = 128
#: How often our side reads its client while waiting for ``n`` (the same as the reference's poll).
POLL = 0.005


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


# -- our side, in processes of its own ----------------------------------------------------------------------
def _runtime(endpoints: str) -> Any:
    from dyndisc import DistributedRuntime, KvDiscovery
    from dyndisc.backends.etcd import EtcdSettings, EtcdStore

    store = EtcdStore(EtcdSettings.load(endpoints=endpoints))
    return DistributedRuntime(KvDiscovery(store, layout="dynamo-v1"))


async def _our_sync(endpoints: str, count: int) -> None:
    async with _runtime(endpoints) as runtime:
        endpoint = runtime.endpoint(SYNCED)
        cpu, wall = time.process_time(), time.perf_counter()
        client = await endpoint.client()
        while len(client.instances()) < count:  # noqa: ASYNC110 - polled, as the reference side must be
            await asyncio.sleep(POLL)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        _emit("synced", wall_s=wall, cpu_s=cpu, instances=len(client.instances()))


async def _our_toggle(endpoints: str) -> None:
    from dyndisc import DynamoTcp

    async with _runtime(endpoints) as runtime:
        endpoint = runtime.endpoint(TOGGLED)
        instance = await endpoint.register(DynamoTcp("127.0.0.1", 9))
        _emit("serving", instance_id=instance.instance_id)
        loop = asyncio.get_running_loop()
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            called = time.time()
            if line == "register":
                await endpoint.register(DynamoTcp("127.0.0.1", 9))
            elif line == "unregister":
                await endpoint.unregister()
            else:
                _emit("unknown_command", line=line)
                continue
            _emit("done", op=line, called=called, returned=time.time())


# -- the driver ---------------------------------------------------------------------------------------------
def reference_python() -> str:
    """The reference venv's python, installed or reused by ``install.sh`` (a clear error if it cannot be)."""
    done = subprocess.run(
        ["bash", str(TOOLS / "install.sh"), "--json"], capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise SystemExit(
            f"the reference runtime could not be installed by tools/dynamo-reference/install.sh "
            f"(exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    python: str = json.loads(done.stdout.strip().splitlines()[-1])["python"]
    return python


def _side_argv(side: str, refpy: str, mode: str, endpoints: str, count: int = 0) -> list[str]:
    """The command of one measured process: the reference's driver, or this module's child."""
    if side == "reference":
        endpoint = SYNCED if mode == "sync" else TOGGLED
        argv = [refpy, str(TOOLS / "ref_bench.py"), mode, "--endpoint", endpoint]
        return [*argv, "--count", str(count)] if mode == "sync" else argv
    argv = [sys.executable, "-m", "benchmarks.reference", f"child-{mode}", endpoints]
    return [*argv, str(count)] if mode == "sync" else argv


def _env(endpoints: str) -> dict[str, str]:
    return {**os.environ, "ETCD_ENDPOINTS": endpoints, "PYTHONPATH": str(ROOT)}


async def _seed(endpoints: str, count: int, start: int) -> None:
    """Instances ``start + 1 .. count`` of :data:`SYNCED`, as the reference writes them."""
    from aetcd import rpc

    from dyndisc import EndpointId, Instance, dynamo_tcp
    from dyndisc.backends.kv.layouts import DynamoV1Layout

    layout = DynamoV1Layout()
    endpoint = EndpointId.parse(SYNCED)
    channel = rpc.insecure_channel(endpoints.removeprefix("http://"))
    kv = rpc.KVStub(channel)
    sem = asyncio.Semaphore(16)

    async def batch(first: int) -> None:
        ops = []
        for n in range(first, min(first + TXN_OPS, count + 1)):
            transport = dynamo_tcp(f"10.0.{n >> 8 & 255}.{n & 255}", 9000, endpoint, n)
            instance = Instance.for_endpoint(endpoint, n, transport)
            put = rpc.PutRequest(key=layout.key_for(instance).encode(), value=layout.encode(instance))
            ops.append(rpc.RequestOp(request_put=put))
        async with sem:
            await kv.Txn(rpc.TxnRequest(success=ops))

    await asyncio.gather(*(batch(first) for first in range(start + 1, count + 1, TXN_OPS)))
    await channel.close()


def _sync_once(side: str, refpy: str, endpoints: str, count: int) -> dict[str, float]:
    argv = _side_argv(side, refpy, "sync", endpoints, count)
    done = subprocess.run(argv, env=_env(endpoints), capture_output=True, text=True, timeout=900, check=False)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    synced = [line for line in lines if line["event"] == "synced"]
    if done.returncode != 0 or not synced:
        raise RuntimeError(f"the {side} sync of {count} failed: {done.stderr[-3000:]}")
    return {"wall_s": synced[0]["wall_s"], "cpu_s": synced[0]["cpu_s"]}


async def _toggle_once(side: str, refpy: str, endpoints: str, toggles: int) -> dict[str, float]:
    from aetcd import rpc
    from aetcd.utils import prefix_range_end

    argv = _side_argv(side, refpy, "toggle", endpoints)
    worker = await asyncio.create_subprocess_exec(
        *argv,
        env=_env(endpoints),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert worker.stdin is not None
    assert worker.stdout is not None
    channel = rpc.insecure_channel(endpoints.removeprefix("http://"))
    call = rpc.WatchStub(channel).Watch()
    seen: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    async def watch() -> None:
        key = b"v1/instances/" + TOGGLED.replace(".", "/").encode() + b"/"
        create = rpc.WatchCreateRequest(key=key, range_end=prefix_range_end(key))
        await call.write(rpc.WatchRequest(create_request=create))
        while True:
            reply = await call.read()
            stamp = time.time()
            for event in reply.events:
                seen.put_nowait((event.type, stamp))

    async def line(event: str) -> dict[str, Any]:
        while True:
            raw = await asyncio.wait_for(worker.stdout.readline(), 60)  # type: ignore[union-attr]
            if not raw:
                raise RuntimeError(f"the {side} worker exited before {event!r}")
            if raw.startswith(b"{") and (found := json.loads(raw))["event"] == event:
                return found

    watcher = asyncio.ensure_future(watch())
    visible, calls = [], []
    try:
        await line("serving")
        for i in range(toggles + 3):  # three to warm up
            for op, kind in (("unregister", 1), ("register", 0)):
                while not seen.empty():
                    seen.get_nowait()
                worker.stdin.write(f"{op}\n".encode())
                await worker.stdin.drain()
                done = await line("done")
                while True:
                    event_type, stamp = await asyncio.wait_for(seen.get(), 30)
                    if event_type == kind:
                        break
                if op == "register" and i >= 3:
                    visible.append((stamp - done["called"]) * 1e3)
                    calls.append((done["returned"] - done["called"]) * 1e3)
    finally:
        watcher.cancel()
        call.cancel()
        await channel.close()
        worker.stdin.close()
        try:
            await asyncio.wait_for(worker.wait(), 10)
        except TimeoutError:
            worker.kill()
    visible.sort()
    return {
        "visible_p50_ms": statistics.median(visible),
        "visible_p99_ms": visible[min(len(visible) - 1, round(0.99 * (len(visible) - 1)))],
        "call_p50_ms": statistics.median(calls),
    }


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: round(statistics.median(r[name] for r in runs), 4) for name in runs[0]}


def measure(refpy: str, endpoints: str, sizes: list[int], toggles: int, runs: int) -> dict[str, Any]:
    """Every figure, ours and the reference's alternating, ``runs`` times; medians and ratios."""
    results: dict[str, Any] = {"sync": [], "register_visible": {}}
    seeded = 0
    for count in sorted(sizes):
        asyncio.run(_seed(endpoints, count, seeded))
        seeded = count
        per_run = []
        for _ in range(runs):
            ours = _sync_once("ours", refpy, endpoints, count)
            ref = _sync_once("reference", refpy, endpoints, count)
            per_run.append(
                {
                    "ours_wall_s": ours["wall_s"],
                    "reference_wall_s": ref["wall_s"],
                    "ours_cpu_s": ours["cpu_s"],
                    "reference_cpu_s": ref["cpu_s"],
                    "ratio_wall": ours["wall_s"] / ref["wall_s"],
                }
            )
        results["sync"].append({"instances": count, "runs": runs, **_medians(per_run)})
        print(json.dumps(results["sync"][-1]), file=sys.stderr, flush=True)
    per_run = []
    for _ in range(runs):
        ours = asyncio.run(_toggle_once("ours", refpy, endpoints, toggles))
        ref = asyncio.run(_toggle_once("reference", refpy, endpoints, toggles))
        run = {f"ours_{k}": v for k, v in ours.items()} | {f"reference_{k}": v for k, v in ref.items()}
        run |= {f"ratio_{k}": ours[k] / ref[k] for k in ("visible_p50_ms", "visible_p99_ms", "call_p50_ms")}
        per_run.append(run)
    results["register_visible"] = {"toggles": toggles, "runs": runs, **_medians(per_run)}
    print(json.dumps(results["register_visible"]), file=sys.stderr, flush=True)
    return results


def table(results: dict[str, Any]) -> str:
    """The results as the Markdown tables of ``docs/performance.md``."""
    lines = [
        "| instances | dyndisc sync (s) | reference sync (s) | ours / reference | CPU ours / reference (s) |",
        "|---|---|---|---|---|",
    ]
    for row in results["sync"]:
        lines.append(
            f"| {row['instances']:,} | {row['ours_wall_s']:.3f} | {row['reference_wall_s']:.3f} | "
            f"{row['ratio_wall']:.3f} | {row['ours_cpu_s']:.3f} / {row['reference_cpu_s']:.3f} |"
        )
    reg = results["register_visible"]
    lines += [
        "",
        "| register → visible | dyndisc (ms) | reference (ms) | ours / reference |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("visible_p50_ms", "called → key seen, p50"),
        ("visible_p99_ms", "called → key seen, p99"),
        ("call_p50_ms", "the call itself, p50"),
    ):
        lines.append(
            f"| {label} | {reg[f'ours_{name}']:.2f} | {reg[f'reference_{name}']:.2f} | "
            f"{reg[f'ratio_{name}']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child-sync":
        asyncio.run(_our_sync(sys.argv[2], int(sys.argv[3])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "child-toggle":
        asyncio.run(_our_toggle(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference", description=__doc__)
    parser.add_argument("--sizes", default="1000,3000,10000")
    parser.add_argument("--toggles", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 instances, 5 toggles, 1 run")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    sizes = [100] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    toggles, runs = (5, 1) if args.quick else (args.toggles, args.runs)
    refpy = reference_python()
    from dyndisc.testing.servers import EtcdServer

    with EtcdServer() as server:
        results = measure(refpy, server.client_url, sizes, toggles, runs)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
