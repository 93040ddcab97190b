"""Servers you run yourself, for the session fixtures: ``DYNDISC_TEST_ETCD_URL``, ``DYNDISC_TEST_NATS_URL``.

They expose the addresses the tests use (``host``, ports, URLs, ``version``) and nothing that would stop,
kill or restart a server the tests do not own: tests that need that start private servers of their own.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from urllib.parse import urlsplit

from dyndisc.testing.servers._process import ServerUnavailable


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    if not parts.hostname:
        raise ServerUnavailable(f"cannot read a host from {url!r}")
    return parts.hostname, parts.port or default_port


class ExternalEtcd:
    """An etcd at ``url`` (plain HTTP, no auth), e.g. ``DYNDISC_TEST_ETCD_URL=http://127.0.0.1:2379``."""

    def __init__(self, url: str) -> None:
        self.host, self.client_port = _host_port(url, 2379)
        self.client_url = f"http://{self.host}:{self.client_port}"
        self.endpoint = f"{self.host}:{self.client_port}"
        self.endpoints = [self.client_url]
        self.version()  # fail now, with the reason, if it is not there

    def version(self) -> str:
        """The server version reported by ``/version``."""
        try:
            with urllib.request.urlopen(f"{self.client_url}/version", timeout=5) as answer:
                return str(json.loads(answer.read())["etcdserver"])
        except (OSError, ValueError, KeyError) as exc:
            raise ServerUnavailable(
                f"no etcd answers at {self.client_url} (DYNDISC_TEST_ETCD_URL): {exc}"
            ) from exc

    def log_tail(self, lines: int = 50) -> str:
        """External servers' logs are yours to read."""
        return f"(external etcd at {self.client_url}: its log is not available here)"


class ExternalNats:
    """A nats-server with JetStream at ``url``, e.g. ``DYNDISC_TEST_NATS_URL=nats://127.0.0.1:4222``."""

    def __init__(self, url: str) -> None:
        self.host, self.port = _host_port(url, 4222)
        self.url = f"nats://{self.host}:{self.port}"
        self.version = self._read_version()

    def _read_version(self) -> str:
        # A NATS server greets every connection with "INFO {json}": no client library needed.
        try:
            with socket.create_connection((self.host, self.port), timeout=5) as sock:
                greeting = sock.makefile("rb").readline().decode()
            return str(json.loads(greeting.removeprefix("INFO "))["version"])
        except (OSError, ValueError, KeyError) as exc:
            raise ServerUnavailable(
                f"no nats-server answers at {self.url} (DYNDISC_TEST_NATS_URL): {exc}"
            ) from exc

    def log_tail(self, lines: int = 50) -> str:
        """External servers' logs are yours to read."""
        return f"(external nats-server at {self.url}: its log is not available here)"
