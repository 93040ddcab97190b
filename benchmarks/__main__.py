"""Run the benchmarks: ``python -m benchmarks [--quick] [--targets memory,etcd] [--json results.json]``.

Every figure is measured in one process, side by side with the raw client of the same store; ratios are
ours / raw. ``--quick`` is the smoke version CI runs (seconds, no thresholds).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
from typing import Any

import anyio
import anyio.to_thread

from benchmarks import bulk
from benchmarks import cases as bench
from benchmarks.targets import TARGETS

QUICK: dict[str, Any] = {
    "prop": 20,
    "thr": 50,
    "repeats": 1,
    "scale": [(100, 5)],
    "ka": [1, 10],
    "ka_ttl": 0.5,
    "fail_ttls": [1.0],
    "fail_workers": 2,
    "watchers": 2,
    "clean": 2,
    "registrations": 400,
    "snapshot": [1000],
}
FULL: dict[str, Any] = {
    "prop": 1000,
    "thr": 1000,
    "repeats": 3,
    "scale": [(100, 100), (1000, 100), (10000, 100)],
    "ka": [1, 100, 1000],
    "ka_ttl": 2.0,
    "fail_ttls": [2.0, 10.0],
    "fail_workers": 8,
    "watchers": 10,
    "clean": 10,
    "registrations": 20000,
    "snapshot": [10000, 30000],
}
#: The scale case runs where the issue asks for it; the others have no bulk seeding path worth measuring.
SCALE_TARGETS = ("memory", "etcd")
#: Smaller sizes per target, where the full ones measure something no deployment does. On Kubernetes every
#: endpoint of a worker lives in its one DynamoWorkerMetadata, re-applied whole on each registration (as the
#: reference runtime does), so n endpoints on one worker cost O(n^2); real workers have a handful.
LIMITS: dict[str, dict[str, int]] = {"kubernetes": {"prop": 200, "thr": 100}}
CASES = ("propagation", "throughput", "registrations", "scale", "snapshot", "failure", "keepalive")
#: Cases that need an etcd server of their own and processes of their own (CPU-bound, one new process each).
ETCD_ONLY = ("registrations", "snapshot")


async def run(targets: list[str], cases: list[str], sizes: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    full = sizes
    for name in targets:
        sizes = {**full, **{k: min(v, full[k]) for k, v in LIMITS.get(name, {}).items()}}
        started = time.perf_counter()
        async with TARGETS[name]() as target:
            found: dict[str, Any] = {}
            if "propagation" in cases:
                found["propagation"] = await bench.propagation(target, sizes["prop"])
                await target.close_backends()
            if "throughput" in cases:
                found["throughput"] = await bench.throughput(target, sizes["thr"], 64, sizes["repeats"])
                await target.close_backends()
            if "registrations" in cases and name == "etcd" and target.worker_env is not None:
                found["registrations"] = await anyio.to_thread.run_sync(
                    bulk.measure_registrations,
                    target.worker_env["ETCD_ENDPOINTS"],
                    sizes["registrations"],
                    4,
                    32,
                    sizes["repeats"],
                )
            if "scale" in cases and name in SCALE_TARGETS:
                found["scale"] = [await bench.scale(target, n, w) for n, w in sizes["scale"]]
                await target.close_backends()
            if "snapshot" in cases and name == "etcd" and target.worker_env is not None:
                found["snapshot"] = await anyio.to_thread.run_sync(
                    bulk.run_sizes, target.worker_env["ETCD_ENDPOINTS"], sizes["snapshot"], sizes["repeats"]
                )
            if "failure" in cases:
                found["failure"] = await bench.failure_detection(
                    target, sizes["fail_ttls"], sizes["fail_workers"], sizes["watchers"], sizes["clean"]
                )
                await target.close_backends()
            if "keepalive" in cases and target.key_value:
                found["keepalive"] = await bench.keepalive_cost(target, sizes["ka"], sizes["ka_ttl"])
                await target.close_backends()
            if target.raw is not None:
                await target.raw.aclose()
            found["versions"] = target.versions
            found["seconds"] = round(time.perf_counter() - started, 1)
            results[name] = found
            print(f"{name}: done in {found['seconds']} s", file=sys.stderr, flush=True)
    return results


def print_table(results: dict[str, Any]) -> None:
    for target, found in results.items():
        print(f"\n## {target}  ({found.get('seconds')} s; {found.get('versions') or ''})")
        for case, figures in found.items():
            if case in ("seconds", "versions"):
                continue
            rows = figures if isinstance(figures, list) else [figures]
            for row in rows:
                print(f"  {case:12s} " + "  ".join(f"{k}={v}" for k, v in row.items()))


def _machine() -> str:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
            model = names[0] if names else model
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} CPUs"


def _packages() -> dict[str, str]:
    found = {}
    names = ("dyndisc", "anyio", "pydantic", "grpcio", "aetcd", "nats-py", "watchfiles", "kubernetes_asyncio")
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run for CI")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, from {', '.join(TARGETS)}"
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--scale",
        type=int,
        help="also take etcd's first snapshot at this many instances (e.g. 100000; minutes, not in CI)",
    )
    parser.add_argument("--profile", help="profile the run with pyinstrument; write its text report here")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {list(TARGETS)}")
    cases = [c for c in args.cases.split(",") if c]
    if unknown := [c for c in cases if c not in CASES]:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    started = time.perf_counter()
    sizes = dict(QUICK if args.quick else FULL)
    if args.scale:
        sizes["snapshot"] = sorted({*sizes["snapshot"], args.scale})
    if args.profile:
        from pyinstrument import Profiler

        with Profiler(async_mode="disabled") as profiler:  # every task's time, not one coroutine's
            results = anyio.run(run, targets, cases, sizes)
        with open(args.profile, "w") as out:
            out.write(profiler.output_text(unicode=True, show_all=False))
    else:
        results = anyio.run(run, targets, cases, sizes)
    meta = {
        "command": " ".join(["python", "-m", "benchmarks", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "machine": _machine(),
        "packages": _packages(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print_table(results)
    print(f"\n{meta}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"meta": meta, "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
