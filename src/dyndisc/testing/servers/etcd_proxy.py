"""etcd's own gRPC proxy (``etcd grpc-proxy start``) in front of a test etcd, for fan-out measurements.

The proxy is a mode of the etcd binary the tests already build
(:func:`~dyndisc.testing.servers.etcd.find_etcd_binary`), so it is always the same release as the server. It
serves etcd's gRPC API to its clients over one connection to the cluster and coalesces their watches: every
watcher of the same key range (from a revision it can still serve) shares one watch on etcd. Key-value reads
are passed on (a linearizable ``Range`` reaches etcd every time); so are leases, each kept alive by the proxy
itself (every TTL/3) while its client keeps it alive.

Its ``--max-send-bytes`` and ``--max-recv-bytes`` are the limits of the proxy's own client towards etcd
(a request of at most 1.5 MiB, etcd's own limit; answers of any size): what it sends its clients is not
capped, so a listing of 100,000 instances passes through it as it comes from etcd.

Plaintext only, both to its clients and to etcd: enough for the benchmarks (TLS would be the proxy's
``--cert-file``/``--key-file`` and ``--cacert``/``--cert``/``--key``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dyndisc.testing.servers._process import LOOPBACK, ServerBase, free_ports, http_request
from dyndisc.testing.servers.etcd import find_etcd_binary

__all__ = ["EtcdGrpcProxy"]


class EtcdGrpcProxy(ServerBase):
    """``etcd grpc-proxy start`` on 127.0.0.1, forwarding to ``endpoints`` (``host:port`` or client URLs).

    Use as ``with EtcdGrpcProxy(etcd.endpoints) as proxy: ...``; clients dial :attr:`endpoint` (or
    :attr:`client_url`) as they would etcd. Its HTTP endpoints share the port: ``/proxy/metrics`` are the
    proxy's own figures (:meth:`metrics`), ``/metrics`` and ``/health`` are etcd's, fetched through it.
    """

    kind = "etcd-grpc-proxy"

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        binary: Path | str | None = None,
        ready_timeout: float = 30.0,
        base_dir: Path | None = None,
        port: int | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("the proxy needs at least one etcd endpoint")
        self.binary = Path(binary) if binary is not None else find_etcd_binary()
        super().__init__(ready_timeout=ready_timeout, base_dir=base_dir)
        self.host = LOOPBACK
        self.port = port if port is not None else free_ports(1)[0]
        #: The etcd members it forwards to, as ``host:port``.
        self.upstream = [e.split("://", 1)[-1].rstrip("/") for e in endpoints]

    @property
    def endpoint(self) -> str:
        """``host:port`` the proxy listens on (what gRPC clients dial)."""
        return f"{self.host}:{self.port}"

    @property
    def client_url(self) -> str:
        """The proxy as an etcd client URL (``ETCD_ENDPOINTS``), e.g. ``http://127.0.0.1:23790``."""
        return f"http://{self.endpoint}"

    @property
    def endpoints(self) -> list[str]:
        """The client URLs as a list (one proxy)."""
        return [self.client_url]

    def _argv(self) -> list[str]:
        return [
            str(self.binary),
            "grpc-proxy",
            "start",
            f"--endpoints={','.join(self.upstream)}",
            f"--listen-addr={self.endpoint}",
            f"--advertise-client-url={self.endpoint}",
            f"--data-dir={self.base_dir / 'data'}",
        ]

    def _ready(self) -> bool:
        # The proxy's /health reads a key from etcd through it: ready means it reaches etcd.
        status, _ = http_request(f"{self.client_url}/health", timeout=2)
        return status == 200

    def metrics(self) -> str:
        """The proxy's own Prometheus text (``/proxy/metrics``): ``etcd_grpc_proxy_*``, and the
        ``grpc_server_*`` series of the calls its clients made (once they made some)."""
        status, body = http_request(f"{self.client_url}/proxy/metrics", timeout=5)
        if status != 200:
            raise RuntimeError(f"the grpc-proxy's /proxy/metrics answered HTTP {status}")
        return body.decode()
