"""The README's examples and the demo run as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dyndisc.testing.servers import EtcdServer

ROOT = Path(__file__).resolve().parents[2]


def test_in_process_example_runs_as_written() -> None:
    result = subprocess.run(
        [sys.executable, "in_process.py"], cwd=ROOT / "examples", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("registered dynamo.backend.generate/")
    assert sum(line.startswith("request ") for line in lines) == 5
    assert lines[-1] == "unregistered"


def test_demo_command_is_installed() -> None:
    env = {**os.environ, "DYN_DISCOVERY_BACKEND": "etcd"}  # the demo's own default (memory) must win
    result = subprocess.run(
        [sys.executable, "-m", "dyndisc.cli", "demo", "--ttl", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "backend 'memory'" in out
    assert "done: the watcher saw 8 changes" in out  # 4 joins, 1 clean leave, 1 expiry, 2 leaves at the end
    assert out.count(" joined at tcp://127.0.0.1:900") == 4
    assert out.count(" left ") == 3
    # The crashed worker is told apart: its lease expired, nobody removed it.
    (crash,) = [line for line in out.splitlines() if " expired " in line]
    assert "(its lease ran out)" in crash


def test_the_command_line_never_imports_the_test_kit() -> None:
    # The demo crashes a worker with a few lines of its own: the CLI needs nothing of dyndisc.testing.
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from dyndisc.cli import main\n"
        "for args in (['demo', '--help'], ['doctor', '--help']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0\n"
        "import dyndisc.cli.demo, dyndisc.cli.doctor\n"
        "print(sorted(m for m in sys.modules if m.startswith('dyndisc.testing')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_demo_on_etcd_tells_a_crash_from_a_departure(dyndisc_etcd_server: EtcdServer) -> None:
    env = {**os.environ, "ETCD_ENDPOINTS": dyndisc_etcd_server.client_url}
    result = subprocess.run(
        [sys.executable, "-m", "dyndisc.cli", "demo", "--backend", "etcd", "--ttl", "1"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "backend 'etcd'" in out
    assert out.count(" left ") == 3, out
    (crash,) = [line for line in out.splitlines() if " expired " in line]
    assert "(its lease ran out)" in crash
