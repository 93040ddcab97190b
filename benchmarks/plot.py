"""Plots for ``docs/performance.md``: ``python -m benchmarks.plot run1.json [run2.json ...] [--out out_dir]``.

Every figure is the median over the runs given, as in the tables of :mod:`benchmarks.report`. Needs matplotlib
(in the ``dev`` extra). Writes ``propagation.png`` (ours beside the raw client, per target)
and ``scale.png`` (how snapshot time, fan-out and memory grow with the number of instances).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a CI machine
import matplotlib.pyplot as plt  # after choosing the backend

from benchmarks.report import medians


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def propagation(results: dict[str, Any], out: Path) -> Path:
    """End-to-end propagation (register called -> Added seen elsewhere), p50 and p99, ours and raw."""
    targets = [t for t in results if "propagation" in results[t]]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.2
    series = [
        ("e2e_p50_ms", "dyndisc p50"),
        ("raw_e2e_p50_ms", "raw client p50"),
        ("e2e_p99_ms", "dyndisc p99"),
        ("raw_e2e_p99_ms", "raw client p99"),
    ]
    for n, (key, label) in enumerate(series):
        values = [results[t]["propagation"].get(key, 0.0) for t in targets]
        ax.bar([i + (n - 1.5) * width for i in range(len(targets))], values, width, label=label)
    ax.set_xticks(range(len(targets)), targets)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.set_title("Watch propagation: register() called -> Added in another runtime")
    ax.legend(fontsize="small")
    return _save(fig, out / "propagation.png")


def scale(results: dict[str, Any], out: Path) -> Path:
    """Snapshot time, fan-out p99 and bytes per instance against the number of instances."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = [
        ("snapshot_ms", "first full snapshot, ms"),
        ("fanout_p99_ms", "fan-out of one change, p99 ms"),
        ("bytes_per_instance", "bytes per instance (one watcher)"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for target, found in results.items():
            rows = found.get("scale")
            if not rows:
                continue
            sizes = [r["instances"] for r in rows]
            line = ax.plot(sizes, [r[key] for r in rows], marker="o", label=target)[0]
            raw_key = f"raw_{key}"
            if all(raw_key in r for r in rows):  # the raw client's figure, dashed in the same colour
                raw = [r[raw_key] for r in rows]
                ax.plot(sizes, raw, "--", color=line.get_color(), label=f"{target} raw")
        ax.set_xscale("log")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("instances (100 watchers)")
        ax.legend(fontsize="small")
    return _save(fig, out / "scale.png")


def main() -> None:
    args = sys.argv[1:]
    if not args:
        raise SystemExit(
            "usage: python -m benchmarks.plot run1.json [run2.json ...] [--out out_dir (default docs/img)]"
        )
    out = Path("docs/img")
    if "--out" in args:
        at = args.index("--out")
        out, args = Path(args[at + 1]), args[:at] + args[at + 2 :]
    elif len(args) == 2 and not args[1].endswith(".json"):  # the old form: results.json out_dir
        out, args = Path(args[1]), args[:1]
    # The medians of the runs, as the tables of benchmarks.report show them.
    results = medians([json.loads(Path(p).read_text()) for p in args])
    out.mkdir(parents=True, exist_ok=True)
    for path in (propagation(results, out), scale(results, out)):
        print(path)


if __name__ == "__main__":
    main()
