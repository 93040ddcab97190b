"""Listing a large prefix from etcd: one ``Range`` beside pages of ``LIST_PAGE_SIZE`` keys.

    python -m benchmarks.etcd_listing [--keys 100000] [--pages 0,1000] [--runs 3]

One etcd holds ``--keys`` instance records of one endpoint (as ``benchmarks.bulk`` writes them). Each
measurement is a new process (imports and connection made outside the timing) that lists the prefix with
:func:`dyndisc.backends.etcd.listing.list_prefix` at one page size (``0``: the whole prefix in one
``Range``, as before paging): wall and CPU time, and the peak growth of the process's resident set over the
listing (its ``ru_maxrss`` after, less its resident set before). The page sizes alternate within each run;
the figures are medians of the runs. ``--etcd-memory`` restarts etcd before each listing and samples its
resident set meanwhile: the peak growth an answer made etcd take (``etcd_extra_mib``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.bulk import PREFIX, _seed


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _list(endpoint: str, page_size: int, keys: int) -> dict[str, Any]:
    from dyndisc.backends.etcd import EtcdSettings, EtcdStore
    from dyndisc.backends.etcd.listing import list_prefix

    store = EtcdStore(EtcdSettings.load(endpoints=endpoint, request_timeout_seconds=60))
    try:
        await store.get_prefix("/warm-up/")  # the connection exists before the timing
        before = _rss()
        cpu, wall = time.process_time(), time.perf_counter()
        found = await list_prefix(store.connection, PREFIX, page_size or keys + 1)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        assert len(found.items) == keys, (len(found.items), keys)
        return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak / 2**20}
    finally:
        await store.aclose()


def _in_child(endpoint: str, page_size: int, keys: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.etcd_listing", "child", endpoint, str(page_size), str(keys)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"listing with pages of {page_size} failed: {done.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def _vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _with_server_memory(server: Any, measure_one: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure_one()`` against a freshly started etcd (Go keeps what a large answer took: a process that
    built one before would start higher), with the peak growth of etcd's resident set meanwhile."""
    server.restart()
    pid = server.pid
    before = _vm_rss(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _vm_rss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        found = measure_one()
    finally:
        done.set()
        sampler.join()
    return found | {"etcd_extra_mib": (peak[0] - before) / 2**20}


def measure(
    endpoint: str, keys: int, pages: list[int], runs: int, server: Any = None
) -> list[dict[str, Any]]:
    """Medians of ``runs`` runs, each listing once at every page size in turn; with ``server``, each on a
    fresh etcd process whose memory is sampled too."""
    samples: dict[int, dict[str, list[float]]] = {size: {} for size in pages}
    for _ in range(runs):
        for size in pages:
            one = partial(_in_child, endpoint, size, keys)
            found = one() if server is None else _with_server_memory(server, one)
            for name, value in found.items():
                samples[size].setdefault(name, []).append(value)
    return [
        {"keys": keys, "page_size": size or "one Range", "runs": runs}
        | {name: round(statistics.median(values), 3) for name, values in figures.items()}
        for size, figures in samples.items()
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        endpoint, page_size, keys = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(asyncio.run(_list(endpoint, page_size, keys))), flush=True)
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.etcd_listing", description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--pages", default="0,1000", help="page sizes to compare (0: one Range)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--etcd-memory",
        action="store_true",
        help="restart etcd before each listing and sample its resident set (the peak growth it took)",
    )
    args = parser.parse_args()
    from dyndisc.testing.servers import EtcdServer

    with EtcdServer() as server:
        asyncio.run(_seed(server.client_url, args.keys, 0))
        pages = [int(p) for p in args.pages.split(",")]
        for row in measure(
            server.client_url, args.keys, pages, args.runs, server if args.etcd_memory else None
        ):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
