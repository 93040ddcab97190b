"""A herd through an etcd outage: many runtimes in many processes, etcd killed and restarted on its data.

    python -m benchmarks.herd [--runtimes 1000] [--processes 10] [--endpoints 5] [--ttl 5] [--down 8]

Reports, as one JSON object: how long after the restart every endpoint was visible again to a watcher with
no extra id (full visibility), the most extra ids a watcher listed at once (an old id of a runtime beside
its new one: a phantom) and for how long, how many runtimes changed id (re-registrations), and etcd's peak
request rate (from its ``/metrics``) against its steady rate.

The workers run whatever ``dyndisc`` their ``PYTHONPATH`` finds (``--worker-path`` sets it), so the same
run can measure another version of the library side by side with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from dyndisc import Added, InstanceQuery, KvDiscovery, Removed, Resync
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.testing.servers import EtcdServer

NAMESPACE = "herd"


# -- the worker processes --------------------------------------------------------------------------------
async def _worker(endpoints_url: str, runtimes: int, endpoints: int, ttl: float, first: int) -> None:
    """``runtimes`` runtimes with ``endpoints`` endpoints each; prints its ids whenever they change."""
    from dyndisc import DistributedRuntime

    async def run(n: int, ready: anyio.Event) -> None:
        settings = EtcdSettings.load(endpoints=endpoints_url, request_timeout_seconds=5.0)
        async with DistributedRuntime(KvDiscovery(EtcdStore(settings)), lease_ttl=ttl) as runtime:
            for e in range(endpoints):
                await runtime.endpoint(f"{NAMESPACE}.r{n}.e{e}").register(f"tcp://10.0.0.1:{e}")
            ready.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        events = []
        for n in range(first, first + runtimes):
            ready = anyio.Event()
            events.append(ready)
            tg.start_soon(run, n, ready)
        for ready in events:
            await ready.wait()
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
        tg.cancel_scope.cancel()


# -- measuring --------------------------------------------------------------------------------------------
def _requests(server: EtcdServer) -> float:
    """etcd's count of gRPC requests started so far (every method)."""
    with urllib.request.urlopen(f"{server.client_url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_started_total")
    )


class Census:
    """What one watcher sees: instances by (endpoint, id)."""

    def __init__(self) -> None:
        self.instances: set[tuple[str, int]] = set()

    def apply(self, event: Resync | Added | Removed) -> None:
        if isinstance(event, Resync):
            self.instances = {(str(i.endpoint_id), i.instance_id) for i in event.instances}
        elif isinstance(event, Added):
            self.instances.add((str(event.instance.endpoint_id), event.instance.instance_id))
        else:
            self.instances.discard((str(event.endpoint), event.instance_id))

    def ids(self) -> set[int]:
        return {i for _, i in self.instances}


@contextmanager
def _workers(args: argparse.Namespace, url: str) -> Iterator[list[subprocess.Popen[str]]]:
    env = {**os.environ}
    if args.worker_path:
        env["PYTHONPATH"] = os.pathsep.join([args.worker_path, str(Path(__file__).resolve().parent.parent)])
    per = args.runtimes // args.processes
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.herd",
                "--worker",
                url,
                str(per),
                str(args.endpoints),
                str(args.ttl),
                str(p * per),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for p in range(args.processes)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def measure(args: argparse.Namespace) -> dict[str, object]:
    total = (args.runtimes // args.processes) * args.processes
    want = total * args.endpoints
    with EtcdServer(election_ms=(100, 1000)) as server, _workers(args, server.client_url) as procs:
        for proc in procs:
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError(f"a worker process did not start: {line!r}")
        census = Census()
        store = EtcdStore(EtcdSettings.load(endpoints=server.client_url, startup_connect_timeout_seconds=60))
        async with KvDiscovery(store) as watcher, watcher.watch(InstanceQuery(namespace=NAMESPACE)) as events:

            async def follow() -> None:
                async for event in events:
                    census.apply(event)

            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                with anyio.fail_after(120):
                    while len(census.instances) < want:  # noqa: ASYNC110 - sampling, not waiting on a change
                        await anyio.sleep(0.05)
                before_ids = census.ids()
                # The steady request rate, over two TTLs.
                steady_start, start_count = (
                    time.monotonic(),
                    await anyio.to_thread.run_sync(_requests, server),
                )
                await anyio.sleep(2 * args.ttl)
                steady = (await anyio.to_thread.run_sync(_requests, server) - start_count) / (
                    time.monotonic() - steady_start
                )
                await anyio.to_thread.run_sync(server.kill)
                await anyio.sleep(args.down)
                await anyio.to_thread.run_sync(server.start)
                restarted = time.monotonic()
                peak, last_count, last_time = 0.0, None, restarted
                most_extra, extra_until, visible_at = 0, None, None
                while time.monotonic() - restarted < args.observe:
                    now = time.monotonic()
                    try:
                        count = await anyio.to_thread.run_sync(_requests, server)
                    except OSError:
                        count = None
                    if count is not None and last_count is not None and now > last_time:
                        peak = max(peak, (count - last_count) / (now - last_time))
                    last_count, last_time = count, now
                    extra = len(census.ids()) - total
                    if extra > 0:
                        most_extra, extra_until = max(most_extra, extra), now
                    if visible_at is None and len(census.instances) == want and extra == 0:
                        visible_at = now
                    await anyio.sleep(0.25)
                tg.cancel_scope.cancel()
        changed = len(before_ids - census.ids())
    return {
        "runtimes": total,
        "processes": args.processes,
        "endpoints": want,
        "ttl_s": args.ttl,
        "etcd_down_s": args.down,
        "full_visibility_after_restart_s": None if visible_at is None else round(visible_at - restarted, 2),
        "most_extra_ids_listed": most_extra,
        "extra_ids_listed_until_s": 0.0 if extra_until is None else round(extra_until - restarted, 2),
        "runtimes_that_changed_id": changed,
        "etcd_steady_requests_per_s": round(steady),
        "etcd_peak_requests_per_s": round(peak),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.herd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtimes", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--endpoints", type=int, default=5, help="endpoints per runtime")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease TTL, seconds")
    parser.add_argument("--down", type=float, default=8.0, help="seconds etcd stays down")
    parser.add_argument("--observe", type=float, default=20.0, help="seconds watched after the restart")
    parser.add_argument("--worker-path", help="PYTHONPATH of the workers (another dyndisc to measure)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        url, runtimes, endpoints, ttl, first = args.worker
        anyio.run(_worker, url, int(runtimes), int(endpoints), float(ttl), int(first))
        return
    print(json.dumps(anyio.run(measure, args)))


if __name__ == "__main__":
    main()
