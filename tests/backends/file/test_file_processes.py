"""Several real processes share one file-backend root: they register, watch, race and get SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from dyndisc import DistributedRuntime
from dyndisc.backends.file import FileStore

WORKER = Path(__file__).with_name("file_worker.py")
TTL = 2.0
#: Seconds beyond the TTL within which a killed process's instance must be reported gone.
EXPIRY_BOUND = 1.0
PROMPT = 10.0


class Child:
    """A worker subprocess whose stdout is read one JSON line at a time."""

    def __init__(self, process: Process, name: str) -> None:
        self.process = process
        self.name = name
        assert process.stdout is not None
        self._lines = TextReceiveStream(process.stdout)
        self._buffer = ""

    async def line(self, timeout: float = PROMPT) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while "\n" not in self._buffer:
                try:
                    self._buffer += await self._lines.receive()
                except anyio.EndOfStream:
                    raise AssertionError(f"{self.name} exited ({self.process.returncode})") from None
        line, self._buffer = self._buffer.split("\n", 1)
        found: dict[str, Any] = json.loads(line)
        return found

    async def send(self, text: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(text.encode())


@asynccontextmanager
async def children(root: Path) -> AsyncIterator[Any]:
    """``await spawn(command, argument, ttl=...)`` starts a worker; every one is stopped at exit."""
    started: list[Child] = []

    async def spawn(command: str, argument: str, ttl: float = TTL) -> Child:
        env = {
            **os.environ,
            "DYN_DISCOVERY_BACKEND": "file",
            "DYN_FILE_KV": str(root),
            "DYN_LEASE_TTL": str(ttl),
        }
        process = await anyio.open_process(
            [sys.executable, str(WORKER), command, argument], env=env, stderr=None
        )
        child = Child(process, f"{command} {argument} (pid {process.pid})")
        started.append(child)
        return child

    try:
        yield spawn
    finally:
        for child in started:
            if child.process.returncode is None:
                child.process.terminate()
        with anyio.move_on_after(10):
            for child in started:
                await child.process.wait()
        for child in started:
            if child.process.returncode is None:
                child.process.kill()
                await child.process.wait()
            await child.process.aclose()


async def watcher_ids(child: Child, ids: set[int], until: Any) -> set[int]:
    """Apply ``child``'s watch events to ``ids`` until ``until(ids)`` holds."""
    while not until(ids):
        event = await child.line()
        if event["event"] == "resync":
            ids = set(event["ids"])
        elif event["event"] == "added":
            ids.add(event["id"])
        else:
            ids.discard(event["id"])
    return ids


@pytest.mark.slow
async def test_processes_share_a_root_and_a_killed_one_expires(tmp_path: Path) -> None:
    ns = f"p{uuid.uuid4().hex[:10]}"
    root = tmp_path / "kv"
    async with children(root) as spawn, DistributedRuntime(FileStore(root), lease_ttl=TTL) as frontend:
        watcher = await spawn("watch", ns)
        assert (await watcher.line())["event"] == "resync"
        client = await frontend.endpoint(f"{ns}.backend.generate").client()

        killed = await spawn("register", f"{ns}.backend.generate")
        kept = await spawn("register", f"{ns}.backend.generate")
        # The one stopped cleanly has a 30 s TTL: only its revoke can make it leave quickly.
        stopped = await spawn("register", f"{ns}.backend.generate", ttl=30)
        ids: dict[Child, int] = {}
        for child in (killed, kept, stopped):
            ids[child] = (await child.line())["instance_id"]
        everyone = set(ids.values())
        await client.wait_for(3, timeout=PROMPT)
        assert set(client.instance_ids()) == everyone
        seen = await watcher_ids(watcher, set(), lambda s: s == everyone)

        killed.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        with anyio.fail_after(TTL + EXPIRY_BOUND):
            while ids[killed] in client.instance_ids():
                await client._source.wait_changed()
        in_process = time.monotonic() - killed_at
        seen = await watcher_ids(watcher, seen, lambda s: ids[killed] not in s)
        in_other_process = time.monotonic() - killed_at
        assert in_other_process <= TTL + EXPIRY_BOUND, f"the watcher process took {in_other_process:.2f}s"
        assert set(client.instance_ids()) == seen == {ids[kept], ids[stopped]}
        # Whoever noticed first removed the dead lease's files: nothing of it is left on disk but the
        # tombstone that tells watches it expired (swept after TOMBSTONE_SECONDS).
        leftovers = [
            p for p in root.rglob("*") if f"{ids[killed]:016x}" in p.name or p.name == f"{ids[killed]:x}.rec"
        ]
        assert [p.name for p in leftovers] == [f"{ids[killed]:016x}.expired"], leftovers

        stopped.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        with anyio.fail_after(PROMPT):
            assert await stopped.process.wait() == 0
        seen = await watcher_ids(watcher, seen, lambda s: ids[stopped] not in s)
        assert time.monotonic() - stopped_at < TTL, "a clean exit is seen at once, long before its 30 s TTL"
        with anyio.fail_after(2):
            while ids[stopped] in client.instance_ids():
                await client._source.wait_changed()
        assert set(client.instance_ids()) == seen == {ids[kept]}
        print(f"SIGKILL seen after {in_process:.2f}s here, {in_other_process:.2f}s in another process")


@pytest.mark.slow
async def test_processes_racing_to_create_one_key_have_one_winner(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    key = "/services/race/c/e/1"
    async with children(root) as spawn:
        racers = [await spawn("create", key) for _ in range(6)]
        for racer in racers:
            assert (await racer.line())["event"] == "ready"
        for racer in racers:
            await racer.send("go\n")
        results = [await racer.line() for racer in racers]
        winners = [r["lease"] for r in results if r["won"]]
        assert len(winners) == 1, results
        assert {r["holder"] for r in results} == set(winners), "every loser is told who holds the key"
        stored = await FileStore(root).get_prefix(key)
        assert stored == {key: b"from lease %x" % winners[0]}
        assert not [p for p in root.rglob(".tmp-*")], "no temporary file is left behind"
        for racer in racers:
            assert racer.process.stdin is not None
            await racer.process.stdin.aclose()
        with anyio.fail_after(PROMPT):
            for racer in racers:
                assert await racer.process.wait() == 0
    assert await FileStore(root).get_prefix("/") == {}, "each racer revoked its lease on exit"
