"""Medians of several benchmark runs as Markdown: ``python -m benchmarks.report run1.json run2.json ...``.

Every numeric figure is the median over the runs; a ratio is the median of each run's own ratio (each run
measured ours and raw side by side), not a ratio of medians. Used for ``docs/performance.md``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

#: Figures shown per case, in order, with their column titles.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "propagation": [
        ("e2e_p50_ms", "called→Added p50 ms"),
        ("raw_e2e_p50_ms", "raw p50 ms"),
        ("ratio_e2e_p50", "ratio p50"),
        ("e2e_p99_ms", "called→Added p99 ms"),
        ("raw_e2e_p99_ms", "raw p99 ms"),
        ("ratio_e2e_p99", "ratio p99"),
        ("p50_ms", "returned→Added p50 ms"),
    ],
    "throughput": [
        ("seq_per_s", "sequential /s"),
        ("raw_seq_per_s", "raw /s"),
        ("ratio_seq", "ratio"),
        ("c64_per_s", "64 in flight /s"),
        ("raw_c64_per_s", "raw /s"),
        ("ratio_c64", "ratio"),
    ],
    "registrations": [
        ("registrations", "registrations"),
        ("ours_per_s", "/s"),
        ("raw_per_s", "raw /s"),
        ("ratio_rate", "ratio"),
        ("ours_cpu_us", "CPU µs each"),
        ("raw_cpu_us", "raw CPU µs"),
        ("ratio_cpu", "ratio"),
        ("raw-create_cpu_us", "same request, raw CPU µs"),
        ("ratio_cpu_same_request", "ratio"),
    ],
    "scale": [
        ("instances", "instances"),
        ("snapshot_ms", "first snapshot ms"),
        ("raw_snapshot_ms", "raw ms"),
        ("ratio_snapshot", "ratio"),
        ("fanout_first_ms", "first change ms"),
        ("fanout_p50_ms", "fan-out p50 ms"),
        ("fanout_p99_ms", "fan-out p99 ms"),
        ("raw_fanout_p99_ms", "raw fan-out p99 ms"),
        ("ratio_fanout_p99", "ratio"),
        ("bytes_per_instance", "bytes/instance"),
        ("raw_bytes_per_instance", "raw bytes"),
    ],
    "snapshot": [
        ("instances", "instances"),
        ("ours_wall_s", "first snapshot s (new process)"),
        ("raw_wall_s", "raw s"),
        ("ratio_wall_s", "ratio"),
        ("raw-json_wall_s", "raw paging + JSON s"),
        ("ratio_json_wall_s", "ratio"),
        ("ours_cpu_us", "CPU µs/instance"),
        ("raw_cpu_us", "raw"),
        ("raw-json_cpu_us", "raw paging + JSON"),
        ("ours_gc_share", "GC share"),
        ("ours_traced_bytes", "traced B/instance"),
        ("raw_traced_bytes", "raw"),
        ("ours_rss_bytes", "RSS B/instance"),
        ("raw_rss_bytes", "raw"),
    ],
    "failure": [
        ("ttl2_p50_s", "TTL 2 s: p50 s"),
        ("ttl2_max_s", "max s"),
        ("ttl10_p50_s", "TTL 10 s: p50 s"),
        ("ttl10_max_s", "max s"),
        ("clean_p50_ms", "clean exit p50 ms"),
        ("clean_max_ms", "max ms"),
    ],
    "keepalive": [
        ("1_endpoints_req_per_s", "1 endpoint req/s"),
        ("100_endpoints_req_per_s", "100 endpoints"),
        ("1000_endpoints_req_per_s", "1,000 endpoints"),
    ],
}


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not numbers:
        return values[0] if values else "—"
    found = statistics.median(numbers)
    if all(isinstance(v, int) for v in numbers):
        return round(found)
    return round(found, 3)


def _rows(runs: list[dict[str, Any]], target: str, case: str) -> list[dict[str, Any]]:
    found = [run["results"][target][case] for run in runs if case in run["results"].get(target, {})]
    if not found:
        return []
    if isinstance(found[0], list):  # the scale case: one row per size, in the same order in every run
        return [{k: _median([f[i].get(k) for f in found]) for k in found[0][i]} for i in range(len(found[0]))]
    return [{k: _median([f.get(k) for f in found]) for k in found[0]}]


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The results of several runs as one, every figure its median over the runs (what the tables show, so
    the plots drawn from it agree with them)."""
    merged: dict[str, Any] = {}
    for target, found in runs[0]["results"].items():
        merged[target] = {}
        for case, figures in found.items():
            if case not in COLUMNS:
                merged[target][case] = figures
                continue
            rows = _rows(runs, target, case)
            merged[target][case] = rows if isinstance(figures, list) else (rows[0] if rows else {})
    return merged


def table(runs: list[dict[str, Any]], case: str) -> str:
    """One Markdown table of ``case``: a row per target (and per size for the scale case)."""
    columns = COLUMNS[case]
    lines = [
        "| target | " + " | ".join(title for _, title in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for target in runs[0]["results"]:
        for row in _rows(runs, target, case):
            lines.append(f"| {target} | " + " | ".join(str(row.get(key, "—")) for key, _ in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m benchmarks.report run1.json [run2.json ...]")
    runs = [json.loads(Path(p).read_text()) for p in sys.argv[1:]]
    meta = runs[0]["meta"]
    print(f"Medians of {len(runs)} run(s); {meta['machine']}; Python {meta['python']}.\n")
    for case in COLUMNS:
        print(f"### {case}\n\n{table(runs, case)}\n")


if __name__ == "__main__":
    main()
