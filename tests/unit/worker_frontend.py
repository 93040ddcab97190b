"""Run a ``worker.py`` and a ``frontend.py`` as two processes, as the README and the examples show them."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


def run_worker_and_frontend(
    directory: Path, env: dict[str, str], timeout: float, stop_timeout: float | None = None
) -> str:
    """Start ``worker.py``, run ``frontend.py`` against it, stop the worker with SIGTERM.

    Checks that the frontend picked the worker on each of its five requests and that both exited cleanly
    (the worker within ``stop_timeout``, default ``timeout``); returns the worker's output.
    """
    worker = subprocess.Popen(
        [sys.executable, "worker.py"],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        first = worker.stdout.readline()  # blocks until the worker has registered
        assert first.startswith("registered dynamo.backend.generate/"), first or worker.stderr.read()  # type: ignore[union-attr]
        frontend = subprocess.run(
            [sys.executable, "frontend.py"],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert frontend.returncode == 0, frontend.stderr
        instance_hex = first.split("/")[1].split()[0]
        assert frontend.stdout.count(f"-> {instance_hex} at tcp://127.0.0.1:9000") == 5, frontend.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=timeout if stop_timeout is None else stop_timeout)
    assert worker.returncode == 0, err
    return first + out
