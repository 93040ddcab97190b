"""The benchmark harness cannot rot: its reduced version (``--quick``, seconds, no thresholds) runs against
every target and must produce every figure, and the plots draw. Performance itself is judged by
``python -m benchmarks``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The figures each case must produce on every target where it applies.
EXPECTED = {
    "propagation": {"count", "p50_ms", "p99_ms", "e2e_p50_ms", "e2e_p99_ms"},
    "throughput": {"seq_per_s", "c64_per_s"},
    "failure": {"clean_p50_ms", "clean_max_ms"},
}
#: Targets that have a raw client of the same store, so their figures come with ratios.
WITH_RAW = {"memory", "etcd", "nats", "file"}


def run_quick(module: str, out: Path) -> subprocess.CompletedProcess[str]:
    """Run benchmark ``module`` in its quick mode, its JSON results to ``out``; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json", str(out)],
        cwd=ROOT,
        # The benchmarks from ROOT, dyndisc from wherever this test's own comes from (PYTHONPATH kept).
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_quick_benchmarks_produce_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = run_quick("benchmarks", out)
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"memory", "etcd", "nats", "file", "kubernetes"}
    for target, found in results.items():
        for case, figures in EXPECTED.items():
            assert figures <= set(found[case]), (target, case, found[case])
        if target in WITH_RAW:
            assert {"ratio_p50", "ratio_e2e_p50"} <= set(found["propagation"]), target
            assert {"ratio_seq", "ratio_c64"} <= set(found["throughput"]), target
            assert found["keepalive"]["1_endpoints_req_per_s"] > 0, target
    for target in ("memory", "etcd"):
        (scale,) = results[target]["scale"]
        assert scale["bytes_per_instance"] > 0
        assert scale["snapshot_ms"] > 0
        # Beside the raw client's snapshot and memory, with the same objects alive for both fan-outs.
        beside_raw = {"raw_snapshot_ms", "ratio_snapshot", "raw_bytes_per_instance", "ratio_fanout_p99"}
        assert beside_raw <= set(scale)
    # The CPU-bound registrations and the new-process first snapshot, each beside raw (etcd).
    assert {"ours_per_s", "raw_per_s", "ratio_rate", "ratio_cpu"} <= set(results["etcd"]["registrations"])
    (snapshot,) = results["etcd"]["snapshot"]
    assert {"ratio_wall_s", "ours_traced_bytes", "raw_traced_bytes", "ours_rss_bytes"} <= set(snapshot)
    # The table is printed for people, with every target in it.
    for target in results:
        assert f"## {target}" in done.stdout
    plotted = subprocess.run(
        [sys.executable, "-m", "benchmarks.plot", str(out), str(out), "--out", str(tmp_path / "img")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plotted.returncode == 0, plotted.stderr[-4000:]
    for name in ("propagation.png", "scale.png"):
        assert (tmp_path / "img" / name).stat().st_size > 10_000, name


@pytest.mark.slow
def test_quick_kube_fleet_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    run_quick("benchmarks.kube_fleet", out)
    results = json.loads(out.read_text())
    clients = results["clients"]
    for figure in ("snapshot_ms", "raw_snapshot_ms", "bytes_per_instance", "ratio_snapshot", "ratio_bytes"):
        assert clients[figure] > 0, (figure, clients)
    # One watch per kind (and the routers' own resource), however many clients.
    assert clients["watches_open"] == 3, clients
    for ttl in ("ttl2", "ttl10"):
        assert results["workers"][ttl]["requests_per_s"] >= 0, results["workers"]


@pytest.mark.slow
def test_quick_kube_scope_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scope.json"
    run_quick("benchmarks.kube_scope", out)
    results = json.loads(out.read_text())
    for case in ("unscoped", "scoped", "alone"):
        assert results["medians"][case]["retained_bytes"] > 0, results["medians"]
    # The scoped watcher holds its deployment's objects, as many as the one alone in its namespace.
    assert results["medians"]["scoped"]["objects_held"] == results["medians"]["alone"]["objects_held"]
    assert results["medians"]["unscoped"]["objects_held"] > results["medians"]["scoped"]["objects_held"]


@pytest.mark.slow
def test_quick_nats_failover_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "failover.json"
    run_quick("benchmarks.nats_failover", out)
    results = json.loads(out.read_text())
    for fault in ("kill", "partition"):
        summary = results[fault]["summary"]
        assert {"moved_s", "write_s", "seen_s", "leases_kept"} <= set(summary), summary


@pytest.mark.slow
def test_quick_fanout_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    run_quick("benchmarks.fanout", out)
    found = json.loads(out.read_text())
    watchers = found["meta"]["sizes"]["watchers"]
    for mode in ("direct", "proxy"):
        small, big = found["results"][mode]["small"], found["results"][mode]["big"]
        for side in ("ours", "raw"):
            figures = small[side]
            for figure in ("sync_all_s", "etcd_peak_rss_mib", "etcd_requests", "converge_median_ms"):
                assert figures[figure] > 0, (mode, side, figure, figures)
            for figure in ("departure_median_ms", "etcd_calls_per_departure"):
                assert figures[figure] > 0, (mode, side, figure, figures)
            assert big[side]["sync_all_s"] > 0, (mode, side, big)
        # Beside raw in the same run.
        assert {"ratio_sync_all_s", "ratio_converge_median_ms"} <= set(small), small
    # Directly, etcd holds a watch per watcher; through the proxy, its own two and one for them all.
    assert found["results"]["direct"]["small"]["ours"]["etcd_watchers"] == watchers
    assert found["results"]["proxy"]["small"]["ours"]["etcd_watchers"] == 3
    assert found["results"]["proxy"]["small"]["ours"]["proxy_connections"] >= watchers
