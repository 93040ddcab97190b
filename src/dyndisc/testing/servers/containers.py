"""Session servers in Docker, for machines with a Docker engine: ``DYNDISC_TEST_SERVERS=containers``.

The session fixtures ``dyndisc_etcd_server`` and ``dyndisc_nats_server`` then run the official images through
testcontainers (``pip install 'dyndisc[containers]'``) instead of the local binaries, and hand the tests the
same address attributes as :mod:`dyndisc.testing.servers.external`. Tests that kill, restart or reconfigure
a server (TLS, auth, partitions) still start local ones of their own, and the kube-apiserver is always the
local build.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dyndisc.testing.servers._process import ServerUnavailable
from dyndisc.testing.servers.external import ExternalEtcd, ExternalNats

__all__ = ["ETCD_IMAGE", "NATS_IMAGE", "ContainerServer", "etcd_container", "nats_container", "servers_mode"]

#: Images run by default; ``DYNDISC_ETCD_IMAGE`` / ``DYNDISC_NATS_IMAGE`` choose others.
ETCD_IMAGE = "quay.io/coreos/etcd:v3.6.16"
#: Per-message TTLs need nats-server 2.11 or later.
NATS_IMAGE = "nats:2.11-alpine"
#: Values of ``DYNDISC_TEST_SERVERS``.
MODES = ("local", "containers")

_Handle = TypeVar("_Handle", ExternalEtcd, ExternalNats)


def servers_mode() -> str:
    """``DYNDISC_TEST_SERVERS``: ``local`` (default: binaries from the wheels) or ``containers``."""
    mode = os.environ.get("DYNDISC_TEST_SERVERS", "local").strip().lower() or "local"
    if mode not in MODES:
        raise ServerUnavailable(f"DYNDISC_TEST_SERVERS={mode!r}: choose one of {', '.join(MODES)}")
    return mode


class ContainerServer:
    """A running container and the address handle the tests use; :meth:`close` removes the container."""

    def __init__(self, container: Any, handle: ExternalEtcd | ExternalNats) -> None:
        self.container = container
        self.handle = handle

    def log_tail(self, lines: int = 50) -> str:
        """The container's last ``lines`` lines of output."""
        try:
            out, err = self.container.get_logs()
        except Exception as exc:  # the engine went away: say so rather than fail the report
            return f"(container logs unavailable: {exc})"
        text = (out + err).decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Stop and remove the container."""
        self.container.stop()


def _start(image: str, command: list[str], port: int) -> Any:
    try:
        from testcontainers.core.container import DockerContainer
    except ImportError as exc:
        raise ServerUnavailable(
            "DYNDISC_TEST_SERVERS=containers needs testcontainers: pip install 'dyndisc[containers]'"
        ) from exc
    try:  # the client is made (and the engine asked for its version) in the constructor
        container = DockerContainer(image).with_command(command).with_exposed_ports(port)
        container.start()
    except Exception as exc:
        raise ServerUnavailable(
            f"DYNDISC_TEST_SERVERS=containers, but no Docker engine runs {image}: {exc} "
            "(start Docker or unset DYNDISC_TEST_SERVERS to use the local binaries)"
        ) from exc
    return container


def _ready(container: Any, port: int, scheme: str, make: Callable[[str], _Handle], timeout: float) -> _Handle:
    url = f"{scheme}://{container.get_container_host_ip()}:{container.get_exposed_port(port)}"
    deadline = time.monotonic() + timeout
    while True:  # the port is mapped before the server in the container listens: poll it
        try:
            return make(url)
        except ServerUnavailable:
            if time.monotonic() > deadline:
                container.stop()
                raise
            time.sleep(0.2)


def etcd_container(timeout: float = 60.0) -> ContainerServer:
    """Start etcd (``DYNDISC_ETCD_IMAGE``, default :data:`ETCD_IMAGE`) and wait until it answers."""
    image = os.environ.get("DYNDISC_ETCD_IMAGE", ETCD_IMAGE)
    command = [
        "etcd",
        "--listen-client-urls=http://0.0.0.0:2379",
        "--advertise-client-urls=http://127.0.0.1:2379",
        "--data-dir=/tmp/etcd",
    ]
    container = _start(image, command, 2379)
    return ContainerServer(container, _ready(container, 2379, "http", ExternalEtcd, timeout))


def nats_container(timeout: float = 60.0) -> ContainerServer:
    """Start nats-server with JetStream (``DYNDISC_NATS_IMAGE``, default :data:`NATS_IMAGE`)."""
    image = os.environ.get("DYNDISC_NATS_IMAGE", NATS_IMAGE)
    container = _start(image, ["-js", "-p", "4222"], 4222)
    return ContainerServer(container, _ready(container, 4222, "nats", ExternalNats, timeout))
