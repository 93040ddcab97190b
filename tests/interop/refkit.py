"""The interop suite's tools: the installed reference runtime, and processes that print JSON lines.

The reference (``ai-dynamo==1.6.1`` / ``ai-dynamo-runtime==1.6.1``) lives in a venv of its own, built and
cached by ``tools/dynamo-reference/install.sh``; its drivers (``ref_worker.py``, ``ref_client.py``) and
``dyndisc_worker.py`` here print one JSON object per line, which :class:`Lines` collects so a test can wait
for the line it needs, with a deadline.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from dyndisc import EntryAdded, EntryEvent, EntryResync, MetadataEntry
from dyndisc.testing.server_fixtures import in_ci

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools" / "dynamo-reference"
HERE = Path(__file__).resolve().parent
#: The reference release the suite is verified against (install.sh pins it).
REFERENCE_VERSION = "1.6.1"


def _drivers_common() -> ModuleType:
    """The drivers' shared module (it runs in the reference's venv, so it is loaded by path, not imported)."""
    spec = importlib.util.spec_from_file_location("dynamo_reference_common", TOOLS / "_common.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Every socket of a reference process on loopback, and no hub: what the drivers set for themselves, and
#: what the frontend and mocker, which are not our drivers, need from us.
LOOPBACK_ENV: dict[str, str] = _drivers_common().LOOPBACK_ENV


@dataclass(frozen=True)
class Reference:
    """The installed reference runtime: its python and the tiny model folder."""

    python: Path
    model: Path
    version: str


def install_reference() -> Reference:
    """Install (or reuse) the reference runtime with ``install.sh``; fail in CI, skip elsewhere, if it cannot.

    A cold install takes about a minute (~700 MB venv); a cached one half a second.
    """
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(TOOLS / "install.sh"), "--json"], capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        reason = (
            f"the reference runtime (ai-dynamo {REFERENCE_VERSION}) could not be installed by "
            f"tools/dynamo-reference/install.sh (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
        if in_ci():
            pytest.fail(f"INTEROP SUITE CANNOT RUN: {reason}", pytrace=False)
        pytest.skip(reason)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    sys.stderr.write(
        f"\n[interop] reference {found['version']} at {found['python']} "
        f"({'reused' if found['reused'] else 'installed'} in {time.monotonic() - started:.1f}s)\n"
    )
    return Reference(python=Path(found["python"]), model=Path(found["model"]), version=found["version"])


class Lines:
    """The JSON lines a process printed so far, and a way to wait for one."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = anyio.Event()

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(
        self,
        event: str,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        *,
        timeout: float,
        after: int = 0,
        what: str = "",
    ) -> dict[str, Any]:
        """The first line (from index ``after``) of ``event`` satisfying ``where``; fail after ``timeout``."""
        try:
            with anyio.fail_after(timeout):
                while True:
                    for item in self.items[after:]:
                        if item.get("event") == event and where(item):
                            return item
                    await self._changed.wait()
        except TimeoutError:
            tail = "\n".join(json.dumps(i, ensure_ascii=False)[:400] for i in self.items[-8:])
            raise AssertionError(f"no {event!r} line {what} within {timeout}s; last lines:\n{tail}") from None


class Proc:
    """A process started by :func:`spawn`: its JSON lines, its stderr log, and signals."""

    def __init__(self, name: str, process: anyio.abc.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.lines = Lines()

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int) -> float:
        """Send ``sig``; return when (``time.time()``)."""
        with suppress(ProcessLookupError):
            self.process.send_signal(sig)
        return time.time()

    def kill(self) -> float:
        """SIGKILL: no cleanup at all, as a crash."""
        return self.signal(signal.SIGKILL)

    async def wait(self, timeout: float) -> int:
        with anyio.fail_after(timeout):
            return await self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the process's stderr, without terminal colours (the reference's logger
        colours its lines even into a file)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()[-lines:])

    async def _pump(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                with suppress(ValueError):
                    self.lines.add(json.loads(line))


@asynccontextmanager
async def spawn(
    name: str, argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str], logs: Path
) -> AsyncIterator[Proc]:
    """Run ``argv`` with ``env`` for the duration of the block (killed at its end if still running); its
    stdout lines are parsed as JSON, its stderr goes to ``logs/<name>.log`` (shown if the test fails)."""
    log = logs / f"{name}.log"
    with log.open("wb") as err:
        process = await anyio.open_process(
            [str(a) for a in argv], env=dict(env), stdout=subprocess.PIPE, stderr=err, start_new_session=True
        )
        proc = Proc(name, process, log)
        SEEN[name] = proc
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(proc._pump)
                try:
                    yield proc
                finally:
                    if process.returncode is None:
                        proc.kill()
                    with anyio.move_on_after(10, shield=True):
                        await process.wait()
                    tg.cancel_scope.cancel()
        finally:
            await process.aclose()


#: Processes of the current test, by name: their stderr logs are attached to its report if it fails.
SEEN: dict[str, Proc] = {}


def reference_env(extra: Mapping[str, str], home: Path) -> dict[str, str]:
    """The environment of a reference process: ours, loopback, ``HOME`` in the test's directory (the frontend
    caches model files under ``~/.cache``), and ``extra``."""
    env = {**os.environ, **LOOPBACK_ENV, "HOME": str(home), **extra}
    env.pop("PYTHONPATH", None)  # the reference venv must not see dyndisc's sources
    return env


def dyndisc_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a dyndisc worker process (``src`` importable from a checkout)."""
    src = str(ROOT / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def ref_argv(reference: Reference, driver: str, *args: str) -> list[str]:
    return [str(reference.python), str(TOOLS / driver), *args]


def dyndisc_argv(*args: str) -> list[str]:
    return [sys.executable, str(HERE / "dyndisc_worker.py"), *args]


@dataclass
class Timings:
    """Latencies measured by the suite, printed at the end of the session (the report's figures)."""

    rows: list[tuple[str, float]]

    def add(self, what: str, seconds: float) -> None:
        self.rows.append((what, seconds))

    def render(self) -> str:
        width = max((len(w) for w, _ in self.rows), default=0)
        return "\n".join(
            f"  {w:<{width}}  {s:7.3f}s" if math.isfinite(s) else f"  {w:<{width}}  n/a" for w, s in self.rows
        )


TIMINGS = Timings(rows=[])


async def first_entries(events: AsyncIterator[EntryEvent], timeout: float) -> list[MetadataEntry]:
    """The entries of a bucket watch as soon as it holds any (from its resync or later additions)."""
    entries: list[MetadataEntry] = []
    with anyio.fail_after(timeout):
        async for event in events:
            if isinstance(event, EntryResync):
                entries = list(event.entries)
            elif isinstance(event, EntryAdded):
                entries.append(event.entry)
            if entries:
                return entries
    raise AssertionError("the watch ended")


def free_port() -> int:
    """A TCP port free on loopback now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get_models(url: str) -> list[str] | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as reply:
            body = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return sorted(str(m.get("id")) for m in body.get("data", []))


async def wait_for_models(
    url: str, condition: Callable[[list[str]], bool], timeout: float, what: str
) -> tuple[list[str], float]:
    """Ask a frontend's ``GET /v1/models`` until ``condition(ids)`` holds; return the ids and when.

    A frontend has no push API for its model list: it is asked every 50 ms until the deadline.
    """
    last: list[str] | None = None
    with anyio.move_on_after(timeout):
        while True:
            last = await anyio.to_thread.run_sync(_get_models, url)
            if last is not None and condition(last):
                return last, time.time()
            await anyio.sleep(0.05)
    raise AssertionError(f"the frontend at {url} did not list {what} within {timeout}s (last answer: {last})")
