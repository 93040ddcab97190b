"""``dyndisc server etcd|nats``: a real server to try dyndisc with, started by one command, used through the
one ``export`` line it prints, stopped by Ctrl-C (its port closed, its temporary data gone, or kept with
``--data``); etcd built from its Go modules the first time, saying so."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dyndisc import KvDiscovery, MetadataEntry
from dyndisc.backends.etcd import EtcdSettings, EtcdStore

DYNDISC = [sys.executable, "-m", "dyndisc"]


class Started:
    """A ``dyndisc server ...`` process that printed its export line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.process = subprocess.Popen(
            [*DYNDISC, "server", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
        )
        assert self.process.stdout is not None
        self.export = self.process.stdout.readline().strip()  # blocks until the server is up (or gone)
        assert self.export.startswith("export "), self.export + self.finish(timeout)[1]
        self.env = dict(pair.split("=", 1) for pair in self.export.removeprefix("export ").split())

    def url(self, variable: str) -> str:
        return self.env[variable]

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Ctrl-C, as a person stops it; its exit status and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=timeout)
        return self.process.returncode, stderr


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def dyndisc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DYNDISC, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", **env},
        check=False,
    )


def test_etcd_to_try_things_with_one_export_line() -> None:
    server = Started("etcd", "--port", "0")
    try:
        assert set(server.env) == {"DYN_DISCOVERY_BACKEND", "ETCD_ENDPOINTS"}
        listed = dyndisc(server.env, "list")
        assert listed.returncode == 0, listed.stderr
        assert "0 instance(s) under *" in listed.stderr
        assert dyndisc(server.env, "doctor").returncode == 0
    finally:
        status, stderr = server.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert "stopping etcd" in stderr
    assert refused(port_of(server.url("ETCD_ENDPOINTS")))
    log = re.search(r"\(log: (\S+)\)", stderr)
    assert log is not None, stderr
    assert not Path(log[1]).parent.exists()  # its temporary data went with it


async def test_etcd_keeps_its_data_in_a_given_directory(tmp_path: Path) -> None:
    entry = MetadataEntry("v1/notes", "kept", {"said": "hello"})
    for first in (True, False):
        server = await anyio.to_thread.run_sync(
            lambda: Started("etcd", "--port", "0", "--data", str(tmp_path))
        )
        try:
            store = EtcdStore(EtcdSettings.load(endpoints=server.url("ETCD_ENDPOINTS")))
            async with KvDiscovery(store) as backend:
                if first:
                    await backend.put_entry(entry, None)  # no lease: it stays until deleted
                assert await backend.list_entries("v1/notes") == [entry]
        finally:
            status, stderr = await anyio.to_thread.run_sync(server.finish)
        assert status == 0, stderr
        assert f"its data stays in {tmp_path}" in stderr
    assert (tmp_path / "data").is_dir()


def test_nats_to_try_things_with_one_export_line() -> None:
    server = Started("nats", "--port", "0")
    try:
        assert server.env["DYN_DISCOVERY_BACKEND"] == "nats"
        listed = dyndisc(server.env, "list")
        assert listed.returncode == 0, listed.stderr
    finally:
        status, stderr = server.finish()
    assert status == 0, stderr
    assert "stopping nats-server" in stderr
    assert refused(port_of(server.url("NATS_SERVER")))


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


@pytest.mark.parametrize("kind", ["etcd", "nats"])
def test_a_port_in_use_is_said_before_anything_starts(kind: str, taken_port: int) -> None:
    done = dyndisc({}, "server", kind, "--port", str(taken_port))
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{taken_port}: something else listens there" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_server_kit_helps_with_status_0() -> None:
    for args in (["--help"], ["etcd", "--help"], ["kube", "--help"]):
        done = subprocess.run(
            [sys.executable, "-m", "dyndisc.testing.servers", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: python -m dyndisc.testing.servers")
    wrong = subprocess.run(
        [sys.executable, "-m", "dyndisc.testing.servers"], capture_output=True, text=True, check=False
    )
    assert wrong.returncode == 2


@pytest.mark.slow
def test_the_first_use_builds_etcd_and_says_so(tmp_path: Path) -> None:
    if shutil.which("go") is None and not Path("/usr/local/go/bin/go").is_file():
        pytest.skip("building etcd needs the Go toolchain")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}  # nothing cached: it must build
    started = time.monotonic()
    server = Started("etcd", "--port", "0", env=env, timeout=900)
    try:
        assert dyndisc(server.env, "list").returncode == 0
    finally:
        status, stderr = server.finish()
    assert status == 0, stderr
    assert "building etcd v3.6.16 from its Go modules, once (about 30 s" in stderr
    built = re.search(r"built etcd v3\.6\.16 in (\d+)s", stderr)
    assert built is not None, stderr
    assert int(built[1]) <= time.monotonic() - started + 1
    assert (tmp_path / "cache" / "dyndisc" / "etcd-v3.6.16" / "etcd").is_file()
