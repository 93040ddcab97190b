"""Every example in ``examples/`` runs as written: worker + frontend on each backend with a server we can
start here, the round-robin router, graceful shutdown on SIGTERM, and the pytest example by its documented
command (``test_pytest_plugin_modes.py`` also runs it in a project of its own, in each configuration)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream
from worker_frontend import run_worker_and_frontend

from dyndisc import Added, InstanceQuery, KvDiscovery, Removed, Resync
from dyndisc.backends.file import FileStore
from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import EtcdServer, NatsServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Seconds any example may take: generous, the machine is shared.
TIMEOUT = 90


def backend_env(name: str, tmp_path: Path, dyndisc_private_servers: PrivateServers) -> dict[str, str]:
    """Environment selecting backend ``name`` on a server (or directory) of this test's own."""
    env = {**os.environ, "DYN_DISCOVERY_BACKEND": name, "DYN_LEASE_TTL": "2"}  # TTL 2 s
    if name == "etcd":
        env["ETCD_ENDPOINTS"] = dyndisc_private_servers(EtcdServer).client_url
    elif name == "nats":
        env["NATS_SERVER"] = dyndisc_private_servers(NatsServer).url
    elif name == "file":
        env["DYN_FILE_KV"] = str(tmp_path / "kv")
    return env


@pytest.mark.parametrize("backend", ["etcd", "nats", "file"])
def test_worker_and_frontend_run_as_written(
    backend: str, tmp_path: Path, dyndisc_private_servers: PrivateServers
) -> None:
    env = backend_env(backend, tmp_path, dyndisc_private_servers)
    out = run_worker_and_frontend(EXAMPLES, env, timeout=TIMEOUT)
    assert out.splitlines()[-1] == "unregistered"


@pytest.mark.parametrize("backend", ["memory", "file"])
def test_router_example_picks_round_robin(
    backend: str, tmp_path: Path, dyndisc_private_servers: PrivateServers
) -> None:
    env = backend_env(backend, tmp_path, dyndisc_private_servers)
    result = subprocess.run(
        [sys.executable, "router.py"], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 11, result.stdout
    before, left, after = lines[:6], lines[6], lines[7:]
    assert [line.split(": ")[1] for line in lines[:6] + lines[7:]] == [f"request {n}" for n in range(10)]
    first_six = [line.split(":")[0] for line in before]
    assert Counter(first_six) == {"worker-a": 2, "worker-b": 2, "worker-c": 2}
    assert first_six[:3] == first_six[3:], "round-robin: the same order each cycle"
    assert left == "worker-b left; 2 workers remain"
    assert Counter(line.split(":")[0] for line in after) == {"worker-a": 2, "worker-c": 2}


async def test_graceful_shutdown_unregisters_first_then_drains(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    env = {**os.environ, "DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(root), "DYN_LEASE_TTL": "2"}
    query = InstanceQuery.parse("dynamo.backend.generate")
    watcher = KvDiscovery(FileStore(root))
    try:
        async with (
            watcher.watch(query) as events,
            await anyio.open_process(
                [sys.executable, "graceful_shutdown.py"], cwd=EXAMPLES, env=env
            ) as worker,
        ):
            assert worker.stdout is not None
            lines = TextReceiveStream(worker.stdout)
            output = ""

            async def read_until(text: str) -> None:
                nonlocal output
                with anyio.fail_after(TIMEOUT):
                    while text not in output:
                        output += await lines.receive()

            with anyio.fail_after(TIMEOUT):
                assert isinstance(await anext(events), Resync)
                added = await anext(events)
            assert isinstance(added, Added)
            assert added.instance.transport is not None
            host, _, port = added.instance.transport.address.rpartition(":")

            async with await anyio.connect_tcp(host, int(port)) as request:
                await request.send(b"3")  # a request of 3 s of work, in flight during the shutdown
                await read_until("working for 3.0s")
                worker.send_signal(signal.SIGTERM)
                with anyio.fail_after(2.5):  # well before the request completes: routing is left first
                    removed = await anext(events)
                assert isinstance(removed, Removed)
                assert removed.instance_id == added.instance.instance_id
                with anyio.fail_after(TIMEOUT):
                    reply = await request.receive()
                assert reply == b"done after 3.0s", "the in-flight request was drained, not dropped"
            with anyio.fail_after(TIMEOUT):
                code = await worker.wait()
            await read_until("exiting")
            assert code == 0
            assert output.splitlines()[1:] == [
                "working for 3.0s",
                "got SIGTERM",
                "unregistered",
                "drained 1 in-flight request(s)",
                "lease revoked; exiting",
            ]
    finally:
        await watcher.aclose()


def test_pytest_example_passes_by_its_documented_command() -> None:
    # `pytest examples/test_with_dyndisc.py` from the checkout: examples/pytest.ini, not this repository's
    # settings (asyncio_mode = "auto"), configures the run, as a user's own project would.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "examples/test_with_dyndisc.py"],
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configfile: pytest.ini" in result.stdout
    assert "2 passed" in result.stdout


def test_ctrl_c_while_the_worker_waits_for_etcd_is_no_traceback() -> None:
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{unused.getsockname()[1]}"
    env = {**os.environ, "DYN_DISCOVERY_BACKEND": "etcd", "ETCD_ENDPOINTS": nowhere}
    worker = subprocess.Popen(
        [sys.executable, "worker.py"], cwd=EXAMPLES, stderr=subprocess.PIPE, text=True, env=env
    )
    assert worker.stderr is not None
    waiting = worker.stderr.readline()  # the library says it waits (after a second and a half)
    assert "waiting for etcd at" in waiting, waiting
    worker.send_signal(signal.SIGINT)
    _, rest = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 130
    assert "Traceback" not in rest, rest
    assert "interrupted before registering" in rest
