"""The worst stall of the event loop while the file store reads, scans and revokes 10,000 records.

    python -m benchmarks.stall [--records 10000] [--limit-ms 10]

A ticker task asks to wake every millisecond and records how late it woke: the longest delay is the worst
time the event loop was blocked. It runs while the file store lists the records (``get_prefix``), while a
watch starts and takes its first snapshot, and while the lease owning them all is revoked; each step is
measured ``--repeats`` times and the median of its worst stalls is reported (the machine's other load
shows up as lateness too). Exits with status 1 if the listing or the revoke stalls the loop for
``--limit-ms`` (the goal: 10 ms at 10,000 records). The watch's start is reported, not asserted: watchfiles
adds its inotify watches holding the GIL (31 ms for 10,000 files in 10 directories, measured), which no
thread of ours can avoid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from dyndisc.backends.file import FileStore
from dyndisc.backends.kv import StoreSnapshot

TICK = 0.001


async def _worst_stall(step: Callable[[], Awaitable[Any]]) -> float:
    """Run ``step`` beside a ticker; the longest the ticker was kept waiting past its tick, in seconds."""
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while True:
            started = time.perf_counter()
            await anyio.sleep(TICK)
            worst = max(worst, time.perf_counter() - started - TICK)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0.01)  # the ticker is ticking
        await step()
        tg.cancel_scope.cancel()
    return worst


async def measure(records: int, repeats: int = 3) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dyndisc-stall-") as root:
        store = FileStore(Path(root))
        lease = await store.grant(600)
        value = b'{"namespace":"s","component":"c","endpoint":"e","instance_id":1}'
        for n in range(records):
            await store.create(f"/services/s/c/e/{n:x}", value, lease.id)
        figures: dict[str, float] = {"records": records}

        async def listing() -> None:
            assert len(await store.get_prefix("/services/s/")) == records

        async def snapshot() -> None:
            async with store.watch("/services/s/") as events:
                first = await anext(events)
                assert isinstance(first, StoreSnapshot)
                assert len(first.items) == records

        for name, step in (("get_prefix", listing), ("watch_start_snapshot", snapshot)):
            stalls = [await _worst_stall(step) for _ in range(repeats)]
            figures[f"{name}_worst_stall_ms"] = round(statistics.median(stalls) * 1000, 2)
        stalls = []
        for _ in range(repeats):
            # Revoked by another store, as another process would (it walks the tree for the lease's keys),
            # then granted again: each revoke removes all the records.
            other = FileStore(Path(root))
            stalls.append(await _worst_stall(lambda other=other, gone=lease.id: other.revoke(gone)))
            assert await store.get_prefix("/services/s/") == {}
            lease = await store.grant(600)
            for n in range(records):
                await store.create(f"/services/s/c/e/{n:x}", value, lease.id)
        figures["revoke_worst_stall_ms"] = round(statistics.median(stalls) * 1000, 2)
        await store.aclose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stall", description=__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--limit-ms", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures = anyio.run(measure, args.records, args.repeats)
    print(json.dumps(figures))
    worst = max(figures["get_prefix_worst_stall_ms"], figures["revoke_worst_stall_ms"])
    if worst >= args.limit_ms:
        print(f"the event loop stalled {worst} ms (limit {args.limit_ms} ms)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
