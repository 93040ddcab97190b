"""One voice for failures (issue 26): a missing extra names its ``pip install`` from the command line, doctor
and the library alike; a port in use, a mistyped ``--endpoints``, an unreachable server each get a line that
says what to do, with the exit status the command line documents (2 for usage, 1 for a failure), and
messages name the limit that was really in force (``--wait``), never ask to report what is not a bug."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

DYNDISC = [sys.executable, "-m", "dyndisc"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DYNDISC, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


def without(modules: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``dyndisc ARGS`` as it runs where ``modules`` are not installed (an import of one fails)."""
    code = (
        "import sys\n"
        f"for name in {modules!r}: sys.modules[name] = None\n"
        "from dyndisc.cli import main\n"
        "main(sys.argv[1:], prog_name='dyndisc')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


def assert_says(result: subprocess.CompletedProcess[str], status: int, *says: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == status, output
    assert "Traceback" not in output, output
    assert "please report" not in output, output
    for said in says:
        assert said in output, output
    return output


KUBE_CLIENT = ["kubernetes_asyncio", "aiohttp", "yaml"]
KUBE_EXTRA = "pip install 'dyndisc[kubernetes]'"


@pytest.mark.parametrize("missing", [["kubernetes_asyncio"], ["yaml"], KUBE_CLIENT])
def test_the_kubernetes_backend_without_its_extra_names_it(missing: list[str]) -> None:
    listed = without(missing, "--backend", "kubernetes", "list")
    assert_says(listed, 1, "the 'kubernetes' backend", KUBE_EXTRA)
    doctor = assert_says(without(missing, "--backend", "kubernetes", "doctor"), 1, KUBE_EXTRA)
    assert "[FAIL] settings" in doctor  # not "ok", then wrong advice about KUBECONFIG
    assert f"fix: {KUBE_EXTRA}" in doctor
    assert "KUBECONFIG" not in doctor


def test_the_library_says_the_same_line() -> None:
    code = (
        "import sys; sys.modules['kubernetes_asyncio'] = None\n"
        "import anyio\n"
        "from dyndisc import MissingExtraError, create_backend\n"
        "from dyndisc.backends.kubernetes import KubernetesDiscovery\n"
        "try:\n"
        "    create_backend('kubernetes')\n"
        "except MissingExtraError as exc:\n"
        "    print('create_backend:', exc)\n"
        "async def direct():\n"
        "    async with KubernetesDiscovery() as backend:\n"
        "        await backend.api()\n"
        "try:\n"
        "    anyio.run(direct)\n"
        "except MissingExtraError as exc:\n"
        "    print('KubernetesDiscovery:', exc)\n"
    )
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    line = "the 'kubernetes' backend needs 'kubernetes_asyncio': pip install 'dyndisc[kubernetes]'"
    assert done.stdout.splitlines() == [f"create_backend: {line}", f"KubernetesDiscovery: {line}"]


def test_the_ui_without_its_extra_fails_with_the_extra() -> None:
    assert_says(without(["aiohttp"], "--backend", "memory", "ui"), 1, "pip install 'dyndisc[ui]'")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


def test_a_port_in_use_says_so_and_how_to_pick_another(taken_port: int) -> None:
    assert_says(
        run("--backend", "memory", "ui", "--port", str(taken_port)),
        1,
        f"cannot listen on 127.0.0.1:{taken_port}: something else listens there",
        "--port 0 picks a free one",
    )


@pytest.mark.parametrize("command", ["list", "watch", "doctor"])
def test_a_mistyped_endpoints_is_a_usage_error(command: str) -> None:
    assert_says(
        run("--endpoints", "htp:/x", command), 2, "Invalid value for --endpoints", "not an etcd client URL"
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_wait_names_the_option_that_set_it() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = assert_says(run("--endpoints", url, "--wait", "3", "list"), 1, "within 3s (--wait)")
    assert "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS" not in result
    assert "trying for up to 1s more (--wait)" in result
    # Under a second left at the notice time: no "up to 0s more", the failure says it all.
    short = assert_says(run("--endpoints", url, "--wait", "1.8", "list"), 1, "within 1.8s (--wait)")
    assert "0s more" not in short
    assert "waiting for etcd" not in short


def test_doctor_keeps_the_cause_and_gives_the_backends_own_fix() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    output = assert_says(run("--endpoints", url, "doctor", "--timeout", "3"), 1, "[FAIL] connectivity")
    assert "Connection refused" in output  # the cause, not only "no answer within 3s"
    assert "fix: start etcd or point ETCD_ENDPOINTS at it" in output
    assert "dyndisc server etcd" in output
    assert "NATS_SERVER" not in output
    assert "KUBECONFIG" not in output


def test_doctor_on_nats_names_nats_things_only() -> None:
    url = f"nats://127.0.0.1:{closed_port()}"
    output = assert_says(run("--backend", "nats", "--endpoints", url, "doctor", "--timeout", "3"), 1)
    assert "Connect call failed" in output  # the cause
    assert "fix: start nats-server (JetStream on) or point NATS_SERVER at it" in output
    assert "ETCD_ENDPOINTS" not in output
    assert "KUBECONFIG" not in output
