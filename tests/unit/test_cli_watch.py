"""``dyndisc watch`` over a real etcd says when what it shows is stale and when it is current again (issue 26
item 3): a frozen etcd (SIGSTOP) within seconds, an etcd missing at the start after ``--wait`` (and it
waits on instead of exiting); and a key layout mismatch is a hint, not a silent ``0 instance(s)``, from
``list``, ``watch`` and ``doctor``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from output_lines import Lines

from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import EtcdServer, free_ports

DYNDISC = [sys.executable, "-m", "dyndisc"]
ENV = {**os.environ, "NO_COLOR": "1", "DYN_DISCOVERY_BACKEND": "etcd"}


class Watching(Lines):
    """A ``dyndisc`` process (a watch) over the etcd at ``url``, its lines read with a timeout."""

    def __init__(self, url: str, *args: str) -> None:
        env = {**ENV, "ETCD_ENDPOINTS": url}
        super().__init__(
            subprocess.Popen(
                [*DYNDISC, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )

    def stop(self) -> str:
        return self.close()


@pytest.fixture
def etcd(dyndisc_private_servers: PrivateServers) -> EtcdServer:
    return dyndisc_private_servers(EtcdServer)


def test_a_frozen_etcd_is_said_within_seconds_and_its_return_too(etcd: EtcdServer) -> None:
    watching = Watching(etcd.client_url, "watch")
    try:
        assert " = 0 live under *" in watching.line(30)
        assert etcd.pid is not None
        os.kill(etcd.pid, signal.SIGSTOP)  # no error, no closed stream: etcd just stops answering
        try:
            stale = watching.line(8)
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        assert " ! stale since " in stale
        assert "the watch lost its server; still trying" in stale
        resumed = watching.line(15)
        assert " ~ resumed after " in resumed
        assert resumed.rstrip().endswith("the view is current")
    finally:
        stderr = watching.stop()
    assert "Traceback" not in stderr


def test_an_etcd_missing_at_the_start_is_waited_for(dyndisc_private_servers: PrivateServers) -> None:
    client, peer = free_ports(2)
    url = f"http://127.0.0.1:{client}"
    watching = Watching(url, "--wait", "1", "watch", "--json")
    try:
        stale = watching.record(10)  # after --wait: said, not exited
        assert (stale["event"], stale["stale"]) == ("status", True)
        assert "did not answer within 1s (--wait)" in stale["cause"]
        assert watching.process.poll() is None
        dyndisc_private_servers(EtcdServer, ports=(client, peer))
        resumed = watching.record(30)
        assert (resumed["event"], resumed["stale"]) == ("status", False)
        assert resumed["lasted"] >= 1
        assert watching.record(10)["event"] == "resync"
    finally:
        stderr = watching.stop()
    assert "Traceback" not in stderr


@pytest.fixture
def dynamo_worker(etcd: EtcdServer) -> Iterator[str]:
    """A worker registered in the reference's key layout (dynamo-v1), as a Dynamo worker is; yields its id."""
    env = {**ENV, "ETCD_ENDPOINTS": etcd.client_url, "DYN_KV_LAYOUT": "dynamo-v1"}
    process = subprocess.Popen(
        [*DYNDISC, "register", "dynamo.backend.generate", "--transport", "tcp://10.0.0.5:9000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("registered "), line + (process.stderr.read() if process.stderr else "")
        yield line.split()[1].split("/")[1]
    finally:
        process.terminate()
        process.wait(timeout=30)


def dyndisc(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DYNDISC, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "ETCD_ENDPOINTS": url, **env},
        check=False,
    )


HINT = "hint: 1 instance(s) under * are in the dynamo-v1 key layout (under v1/instances/)"


def test_a_layout_mismatch_is_a_hint(etcd: EtcdServer, dynamo_worker: str) -> None:
    listed = dyndisc(etcd.client_url, "list")
    assert listed.returncode == 0, listed.stderr
    assert "0 instance(s) under *" in listed.stderr
    assert HINT in listed.stderr
    assert "set DYN_KV_LAYOUT=dynamo-v1 to see them" in listed.stderr
    right = dyndisc(etcd.client_url, "list", DYN_KV_LAYOUT="dynamo-v1")
    assert dynamo_worker in right.stdout
    assert "hint" not in right.stderr
    doctor = dyndisc(etcd.client_url, "doctor")
    assert doctor.returncode == 0, doctor.stdout  # a warning, not a failure
    assert "[warn] key layout: 1 instance(s) under * are in the dynamo-v1 key layout" in doctor.stdout
    assert "fix: set DYN_KV_LAYOUT=dynamo-v1 to see them" in doctor.stdout

    watching = Watching(etcd.client_url, "watch")
    try:
        assert " = 0 live under *" in watching.line(30)
        assert watching.process.stderr is not None
        assert HINT in watching.process.stderr.readline()
    finally:
        watching.stop()
