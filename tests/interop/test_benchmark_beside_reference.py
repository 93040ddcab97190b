"""``python -m benchmarks.reference --quick``: the benchmark beside the reference runtime runs and reports
every figure (no thresholds: the figures are for people; ``docs/performance.md`` has a full run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from refkit import ROOT, Reference


def test_the_benchmark_beside_the_reference_reports_every_figure(
    reference: Reference, tmp_path: Path
) -> None:
    out = tmp_path / "reference.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.reference", "--quick", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    (sync,) = results["sync"]
    assert sync["instances"] == 100
    for side in ("ours", "reference"):
        assert sync[f"{side}_wall_s"] > 0
        for figure in ("visible_p50_ms", "visible_p99_ms", "call_p50_ms"):
            assert results["register_visible"][f"{side}_{figure}"] > 0, (side, figure)
    assert "| called → key seen, p50 |" in done.stdout
