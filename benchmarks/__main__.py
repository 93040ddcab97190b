"""Run the benchmarks: ``python -m benchmarks [--quick] [--targets memory,etcd] [--json results.json]``.

Every figure is measured in one process, side by side with the raw client of the same store; ratios are
ours / raw. ``--quick`` is the smoke version CI runs (seconds, no thresholds).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import anyio

from benchmarks import cases
from benchmarks.targets import TARGETS


async def run(targets: list[str], quick: bool) -> dict[str, Any]:
    sizes = (
        {"prop": 50, "thr": 100, "scale": [(100, 5)], "ka": [1, 10], "ttl": 0.5}
        if quick
        else {
            "prop": 1000,
            "thr": 1000,
            "scale": [(100, 100), (1000, 100), (10000, 100)],
            "ka": [1, 100, 1000],
            "ttl": 2.0,
        }
    )
    results: dict[str, Any] = {}
    for name in targets:
        async with TARGETS[name]() as target:
            found: dict[str, Any] = {}
            found["propagation"] = await cases.propagation(target, sizes["prop"])
            found["throughput"] = await cases.throughput(target, sizes["thr"], 64)
            found["scale"] = [await cases.scale(target, n, w) for n, w in sizes["scale"]]
            found["keepalive"] = await cases.keepalive_cost(target, sizes["ka"], sizes["ttl"])
            if target.raw is not None:
                await target.raw.aclose()
            results[name] = found
    return results


def print_table(results: dict[str, Any]) -> None:
    for target, found in results.items():
        print(f"\n## {target}")
        for case, figures in found.items():
            rows = figures if isinstance(figures, list) else [figures]
            for row in rows:
                print(f"  {case:12s} " + "  ".join(f"{k}={v}" for k, v in row.items()))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run for CI")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, from {', '.join(TARGETS)}"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {list(TARGETS)}")
    started = time.perf_counter()
    results = anyio.run(run, targets, args.quick)
    meta = {
        "command": " ".join([sys.executable, "-m", "benchmarks", *sys.argv[1:]]),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print_table(results)
    print(f"\n{meta}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"meta": meta, "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
