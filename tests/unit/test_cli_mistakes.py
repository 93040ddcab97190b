"""The ``dyndisc`` command as an operator meets it: each mistake gets a short message and the right exit
status (2 for usage, 1 for a failure), never a traceback; the happy path on the file backend, across real
processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

DYNDISC = [sys.executable, "-m", "dyndisc"]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [*DYNDISC, *args], capture_output=True, text=True, timeout=timeout, env=environment, check=False
    )


def assert_clean(result: subprocess.CompletedProcess[str], status: int, *says: str) -> None:
    """Exit ``status``, no traceback, a message of a few lines that says each of ``says``."""
    output = result.stdout + result.stderr
    assert result.returncode == status, output
    assert "Traceback" not in output, output
    assert len(result.stderr.splitlines()) <= 6, result.stderr
    for said in says:
        assert said in output, output


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["register", "ns.c.e", "--transport", "127.0.0.1:9000"], ["did you mean tcp://127.0.0.1:9000?"]),
        (["register", "ns.c.e", "--transport", "foo://bar"], ["unknown transport kind 'foo'"]),
        (["register", "ns.c.e", "--transport", "tcp://host"], ["must be host:port"]),
        (["register", "ns.c.e"], ["give --transport", "--no-transport"]),
        (["register", "ns.c.e", "--transport", "tcp://h:1", "--metadata", "notjson"], ["not valid JSON"]),
        (["register", "ns.c.e", "--transport", "tcp://h:1", "--metadata", "[1]"], ["must be a JSON object"]),
        (["register", "ns.c", "--transport", "tcp://h:1"], ["ns.c"]),
        (["get", "ns.c.e/xyz"], ["not hexadecimal"]),
        (["get", "ns.c.e"], ["expected ns.comp.ep/<instance id in hex>"]),
        (["list", "a.b.c.d"], ["a.b.c.d"]),
        (["list", "--backend", "zookeeper"], ["'zookeeper' is not one of"]),
        (["--backend", "zookeeper", "list"], ["'zookeeper' is not one of"]),
        (["--backend", "file", "--endpoints", "http://x:1", "list"], ["DYN_FILE_KV"]),
        (["watch", "--live", "--json"], ["do not go together"]),
        (["kube", "manifests"], ["--namespace is required"]),
        (["frobnicate"], ["No such command 'frobnicate'"]),
    ],
)
def test_a_usage_mistake_is_a_short_message_and_exit_2(args: list[str], says: list[str]) -> None:
    assert_clean(run(*args) if args[0] == "--backend" else run("--backend", "memory", *args), 2, *says)


def test_an_unreachable_etcd_fails_within_wait_and_says_it_is_waiting() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = run("--endpoints", url, "--wait", "3", "list")
    assert_clean(result, 1, f"etcd at {url}", "did not answer within 3s", "--wait 60")
    assert f"waiting for etcd at {url} (ETCD_ENDPOINTS)" in result.stderr


def test_a_missing_client_library_names_the_extra_on_every_path() -> None:
    # What a user without nats-py installed sees: the library, the command and doctor say the same line.
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "from dyndisc.cli import main\n"
        "main(sys.argv[1:], prog_name='dyndisc')\n"
    )
    for args in (["--backend", "nats", "list"], ["--backend", "nats", "doctor"]):
        result = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert_clean(result, 1, "pip install 'dyndisc[nats]'")


def test_version_and_help() -> None:
    version = run("--version")
    assert_clean(version, 0, "dyndisc ")
    for flag in ("-h", "--help"):
        assert_clean(run(flag), 0, "Usage: dyndisc", "list", "watch", "register")
    assert_clean(run("list", "-h"), 0, "--json")


def test_manifests_print_without_a_kubernetes_client() -> None:
    code = (
        "import sys; sys.modules['kubernetes_asyncio'] = None; sys.modules['aiohttp'] = None\n"
        "from dyndisc.cli import main\n"
        "main(sys.argv[1:], prog_name='dyndisc')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "kube", "manifests", "--only", "crd"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "kind: CustomResourceDefinition" in result.stdout


# -- the happy path, in real processes sharing the file backend ---------------------------------------------
@pytest.fixture
def file_env(tmp_path: Path) -> dict[str, str]:
    return {"DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(tmp_path), "DYN_LEASE_TTL": "2"}


@pytest.fixture
def registered(file_env: dict[str, str]) -> Iterator[str]:
    """A ``dyndisc register`` process holding one instance; yields its ``ns.comp.ep/<id>``."""
    process = subprocess.Popen(
        [*DYNDISC, "register", "ns.comp.ep", "--transport", "tcp://127.0.0.1:9000", "--metadata", '{"m":1}'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **file_env},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until it registered (or died: then the assert says why)
        assert line.startswith("registered "), line + (process.stderr.read() if process.stderr else "")
        yield line.split()[1].split(" ")[0]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_list_get_and_watch_show_what_register_holds(file_env: dict[str, str], registered: str) -> None:
    reference = registered  # ns.comp.ep/<hex id>
    table = run("list", env=file_env)
    assert_clean(table, 0, "ENDPOINT", "ID", "STATE", "TRANSPORT", "AGE", "METADATA")
    header, row = table.stdout.splitlines()
    assert row.split()[:4] == ["ns.comp.ep", reference.split("/")[1], "ready", "tcp://127.0.0.1:9000"]
    assert header.index("AGE") == row.index(row.split()[4])  # columns line up under their headers
    lines = run("list", "--json", env=file_env).stdout.splitlines()
    (record,) = (json.loads(line) for line in lines)
    assert record["instance_id"] == reference.split("/")[1]
    assert record["registered_at"].endswith("+00:00")
    got = run("get", reference, env=file_env)
    assert_clean(got, 0)
    assert json.loads(got.stdout) == record
    decimal = f"ns.comp.ep/{int(record['instance_id'], 16)}"
    by_decimal = run("get", decimal, env=file_env)  # an id as the reference runtime logs it
    assert_clean(by_decimal, 0, "as a decimal id")
    assert json.loads(by_decimal.stdout) == record


def test_watch_json_is_one_event_per_line(file_env: dict[str, str], registered: str) -> None:
    process = subprocess.Popen(
        [*DYNDISC, "watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **file_env},
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert first["event"] == "resync"
    assert first["at"].endswith("+00:00")
    assert [i["endpoint"] + "/" + i["instance_id"] for i in first["instances"]] == [registered]
