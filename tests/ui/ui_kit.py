"""The pieces of the browser tests: Debian's chromium, ``dyndisc ui`` in a process of its own (its stderr
kept, so a test can say it printed no traceback) and worker processes. The fixtures are in ``conftest.py``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
#: The workers' lease TTL: short, so a crash shows within seconds.
TTL = 2.0


def chromium() -> str:
    found = os.environ.get("DYNDISC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "no chromium to drive (apt-get install chromium, or set DYNDISC_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


class UiProcess:
    """``dyndisc ui`` in a process of its own, on a free port; its stderr goes to a file."""

    def __init__(self, env: dict[str, str], stderr: Path, *args: str) -> None:
        self.stderr_path = stderr
        self._stderr = open(stderr, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dyndisc", *args, "ui", "--port", "0", "--wait", "30"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("dyndisc ui: http://"), line + self.stderr()
        self.url = line.split()[2]

    def stderr(self) -> str:
        """What it printed on stderr so far."""
        self._stderr.flush()
        return self.stderr_path.read_text()

    def stop(self) -> str:
        """Stop it as Ctrl-C does; return its whole stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)
        self._stderr.close()
        return self.stderr_path.read_text()


class Workers:
    """Worker processes (``ui_worker.py``), each registering one instance."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def start(self, port: int, model: str | None = None, topic: str | None = None) -> str:
        """A worker at ``tcp://10.0.0.<port>:9000`` (with the model card ``model`` and the event channel
        ``topic`` if given); returns its instance id (hex)."""
        argv = [
            sys.executable,
            str(HERE / "ui_worker.py"),
            "fleet.backend.generate",
            f"tcp://10.0.0.{port}:9000",
            model or "-",
            topic or "-",
        ]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=self.env)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("registered "), line
        instance_id = line.split()[1]
        self.processes[instance_id] = process
        return instance_id

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=30)
