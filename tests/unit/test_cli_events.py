"""``dyndisc events``: the history a running ``dyndisc ui`` keeps (with its token, ``--since``, a path,
``-f``), or without a UI, the same records from a fresh watch (issue 26 item 1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from output_lines import Lines

from dyndisc import DistributedRuntime, InstanceQuery, KvDiscovery, MemoryStore

pytest.importorskip("aiohttp", reason="the UI needs aiohttp")
from dyndisc.ui import serve

DYNDISC = [sys.executable, "-m", "dyndisc"]
TOKEN = "t0ken"
ENV = {**os.environ, "NO_COLOR": "1"}


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


async def dyndisc(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DYNDISC, *args], capture_output=True, text=True, timeout=60, env={**ENV, **env}, check=False
        )

    return await anyio.to_thread.run_sync(call)


@asynccontextmanager
async def ui_with_history() -> AsyncIterator[tuple[str, MemoryStore]]:
    """A ``dyndisc ui`` (in this process, with a token) that saw a worker join and leave. Entered in the
    test itself: a task group must be left by the task that entered it, which a fixture's teardown is not."""
    store = MemoryStore()
    address: list[str] = []
    async with KvDiscovery(store, owns_store=False) as backend, anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(backend, InstanceQuery(), port=0, token=TOKEN, on_ready=address.append))
        with anyio.fail_after(10):
            while not address:  # noqa: ASYNC110 - the server reports its address through a callback
                await anyio.sleep(0.01)
        async with DistributedRuntime(store) as worker:
            await worker.endpoint("ns.backend.generate").register("tcp://10.0.0.5:9000")
            await worker.endpoint("other.backend.generate").register("tcp://10.0.0.6:9000")
            await worker.endpoint("ns.backend.generate").unregister()
        yield address[0], store
        tg.cancel_scope.cancel()


async def test_the_history_of_a_running_ui() -> None:
    async with ui_with_history() as (url, _):
        await said_by_the_ui(url)


async def said_by_the_ui(url: str) -> None:
    done = await dyndisc("events", "--ui", url, "--token", TOKEN, "--since", "10m", "--json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    said = [(r["kind"], r.get("endpoint")) for r in records]
    assert said[0] == ("started", None)
    assert ("joined", "ns.backend.generate") in said
    assert said[-2:] == [("left", "ns.backend.generate"), ("left", "other.backend.generate")]
    assert all(r["seq"] == n for n, r in enumerate(records, 1))
    assert "from the dyndisc ui at" in done.stderr

    text = await dyndisc("events", "ns", "--ui", url, "--token", TOKEN)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert all("other.backend" not in line for line in lines)  # the path chose one namespace
    assert " joined   ns.backend.generate " in lines[1]
    assert " left     ns.backend.generate " in lines[2]
    assert lines[2].endswith("(left)")

    refused = await dyndisc("events", "--ui", url)
    assert refused.returncode == 1
    assert "needs its token: pass --token or set DYNDISC_UI_TOKEN" in refused.stderr
    from_env = await dyndisc("events", "--ui", url, DYNDISC_UI_TOKEN=TOKEN)
    assert from_env.returncode == 0, from_env.stderr
    bad = await dyndisc("events", "--ui", url, "--token", TOKEN, "--since", "yesterday")
    assert bad.returncode == 2
    assert "is not a duration" in bad.stderr


async def test_following_a_ui() -> None:
    async with ui_with_history() as (url, store):
        argv = [*DYNDISC, "events", "-f", "--json", "--ui", url, "--token", TOKEN]
        lines = Lines(await anyio.to_thread.run_sync(lambda: popen(argv, ENV)))
        try:
            said = [await anyio.to_thread.run_sync(lines.record) for _ in range(5)]
            assert [r["kind"] for r in said] == ["started", "joined", "joined", "left", "left"]
            async with DistributedRuntime(store) as late:
                await late.endpoint("ns.late.generate").register("tcp://10.0.0.7:9000")
                joined = await anyio.to_thread.run_sync(lines.record)
            assert (joined["kind"], joined["endpoint"]) == ("joined", "ns.late.generate")
        finally:
            stderr = await anyio.to_thread.run_sync(lines.close)
        assert "Traceback" not in stderr


def popen(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_ui_named_on_the_command_line_must_answer() -> None:
    done = subprocess.run(
        [*DYNDISC, "events", "--ui", closed_url()], capture_output=True, text=True, timeout=60, env=ENV
    )
    assert done.returncode == 1
    assert "no dyndisc ui answers at" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_a_ui_a_fresh_watch(tmp_path: Path) -> None:
    env = {**ENV, "DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(tmp_path), "DYN_LEASE_TTL": "2"}
    lines = Lines(popen([*DYNDISC, "events", "--json"], {**env, "DYNDISC_UI_URL": closed_url()}))
    worker = None
    try:
        started = lines.record()
        assert (started["kind"], started["live"]) == ("started", 0)
        worker = popen([*DYNDISC, "register", "ns.c.e", "--transport", "tcp://10.0.0.5:9000"], env)
        joined = lines.record()
        said = (joined["kind"], joined["endpoint"], joined["transport"])
        assert said == ("joined", "ns.c.e", "tcp://10.0.0.5:9000")
        worker.send_signal(signal.SIGTERM)  # it leaves cleanly
        left = lines.record()
        assert (left["kind"], left["instance_id"]) == ("left", joined["instance_id"])
    finally:
        if worker is not None:
            worker.wait(timeout=30)
        stderr = lines.close()
    assert "so no history: following a fresh watch from now on" in stderr
