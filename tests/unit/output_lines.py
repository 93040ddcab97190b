"""A process's output read a line at a time, each within a timeout (a thread reads the pipe, so a line that
is already buffered is never waited for)."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from typing import IO, Any


class Lines:
    """The lines ``process`` prints on stdout, as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._lines.put(line)
        self._lines.put("")  # the end: the process closed its output

    def line(self, timeout: float = 15) -> str:
        """The next line (``""`` once the output ended); fails if none comes within ``timeout`` s."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing printed within {timeout}s") from None

    def record(self, timeout: float = 15) -> dict[str, Any]:
        """The next line, read as one JSON object."""
        found: dict[str, Any] = json.loads(self.line(timeout))
        return found

    def close(self) -> str:
        """Stop the process (SIGTERM); its stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=30)
        self._reader.join(5)
        return self.process.stderr.read() if self.process.stderr is not None else ""
