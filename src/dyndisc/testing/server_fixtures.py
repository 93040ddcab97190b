"""pytest fixtures for real servers on loopback: etcd, nats-server (JetStream), kube-apiserver (alone, or with
kube-controller-manager), TCP proxy.

Re-export them with ``from dyndisc.testing.server_fixtures import *``. A server that cannot start fails
the test in CI (``CI`` is ``true``/``1``) and skips it elsewhere, with the reason either way.
:func:`server_log_sections` gives the log tails of every server these fixtures started, for failure
reports.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Protocol, TypeVar

import pytest

from dyndisc.testing.servers import (
    EtcdCluster,
    EtcdServer,
    KubeApiServer,
    KubeCluster,
    NatsServer,
    ServerBase,
    ServerUnavailable,
    TcpProxy,
)
from dyndisc.testing.servers.containers import ContainerServer, etcd_container, nats_container, servers_mode
from dyndisc.testing.servers.external import ExternalEtcd, ExternalNats

__all__ = [
    "PrivateServers",
    "TcpProxyFactory",
    "etcd_cluster",
    "etcd_server",
    "in_ci",
    "kube_apiserver",
    "kube_cluster",
    "nats_server",
    "private_servers",
    "server_log_sections",
    "server_unavailable",
    "tcp_proxy",
]

TcpProxyFactory = Callable[[str, int], TcpProxy]


class _HasLogTail(Protocol):
    def log_tail(self, lines: int = 50) -> str: ...


_S = TypeVar("_S", bound=_HasLogTail)
_B = TypeVar("_B", bound=ServerBase)

# Every server started by these fixtures in this process, by display name, for failure reports.
_STARTED: dict[str, _HasLogTail] = {}


def in_ci() -> bool:
    """Whether the ``CI`` environment variable says we run in CI (``true``/``1``/``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def server_unavailable(reason: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) the current test because a server could not start."""
    if in_ci():
        pytest.fail(f"test server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"test server unavailable: {reason}")


def server_log_sections(lines: int = 60) -> list[tuple[str, str]]:
    """``(title, log tail)`` for every server the fixtures started in this session.

    Call it from a ``pytest_runtest_makereport`` hook to attach logs to a failed test's report, e.g.
    ``for title, text in server_log_sections(): report.sections.append((title, text))``.
    """
    return [(f"{name} log (last {lines} lines)", server.log_tail(lines)) for name, server in _STARTED.items()]


def _launch(make: Callable[[], _B]) -> _B:
    server = make()
    try:
        server.start()
    except BaseException:
        server.close()  # don't leak the temp dir (or a half-started private etcd)
        raise
    return server


def _started(name: str, factory: Callable[[], _S]) -> _S:
    try:
        server = factory()
    except ServerUnavailable as exc:
        server_unavailable(f"{name}: {exc}")
    _STARTED[name] = server
    return server


def _session_server(
    name: str,
    url_variable: str,
    external: Callable[[str], Any],
    in_container: Callable[[], ContainerServer],
    local: Callable[[], ServerBase],
) -> Iterator[Any]:
    """A session server: yours (``url_variable``), in Docker (``DYNDISC_TEST_SERVERS=containers``), or
    started here from a local binary."""
    url = os.environ.get(url_variable)
    if url:
        yield _started(name, lambda: external(url))
        return
    try:
        containers = servers_mode() == "containers"
    except ServerUnavailable as exc:
        server_unavailable(str(exc))
    server: ContainerServer | ServerBase = (
        _started(name, in_container) if containers else _started(name, lambda: _launch(local))
    )
    try:
        yield server.handle if isinstance(server, ContainerServer) else server
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """A session-wide single-member etcd on 127.0.0.1 (no TLS, no auth). Don't kill it: make your own.

    ``DYNDISC_TEST_ETCD_URL`` points the tests at an etcd you run instead; ``DYNDISC_TEST_SERVERS=containers``
    runs it in Docker through testcontainers.
    """
    yield from _session_server("etcd", "DYNDISC_TEST_ETCD_URL", ExternalEtcd, etcd_container, EtcdServer)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A session-wide nats-server with JetStream on 127.0.0.1 (no auth).

    ``DYNDISC_TEST_NATS_URL`` points the tests at a nats-server (>= 2.11, JetStream on) you run instead;
    ``DYNDISC_TEST_SERVERS=containers`` runs it in Docker through testcontainers.
    """
    yield from _session_server(
        "nats-server", "DYNDISC_TEST_NATS_URL", ExternalNats, nats_container, NatsServer
    )


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeApiServer]:
    """A session-wide kube-apiserver (RBAC, admin and restricted tokens) on its own etcd.

    No controllers run against it: tests write EndpointSlices themselves. The first use may build the binary
    (many minutes); CI builds it beforehand with ``tools/kubernetes/build.sh``.
    """
    server = _started("kube-apiserver", lambda: _launch(KubeApiServer))
    _STARTED["kube-apiserver etcd"] = server.etcd
    try:
        yield server
    finally:
        server.close()


def _start_cluster() -> KubeCluster:
    # dyndisc's CRD exists before the controllers start, so the garbage collector watches
    # DynamoWorkerMetadata from the first moment (it discovers new resource types only every 30 s).
    from dyndisc.backends.kubernetes.manifests import manifest  # no Kubernetes client needed

    cluster = KubeCluster(crds=[manifest("crd.yaml")])
    _STARTED["kube-cluster apiserver"] = cluster.apiserver
    _STARTED["kube-cluster etcd"] = cluster.apiserver.etcd
    _STARTED["kube-controller-manager"] = cluster.controller_manager
    try:
        return cluster.start()
    except BaseException:
        cluster.close()
        raise


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """A session-wide kube-apiserver of its own with the real kube-controller-manager running against it.

    Its EndpointSlice controller and garbage collector act on the whole cluster, which is why this is not
    the ``kube_apiserver`` of the tests that write EndpointSlices themselves. dyndisc's CRD is installed.
    Nothing plays kubelet: tests create a Node, Pods bound to it, and write the Pods' status. Both binaries
    are built on first use when missing (many minutes); CI builds them beforehand.
    """
    try:
        cluster = _start_cluster()
    except ServerUnavailable as exc:
        server_unavailable(f"kube-cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster of this test's own (kill its leader, lose quorum, restart members); closed at
    teardown. ``cluster.endpoints`` is the value for ``ETCD_ENDPOINTS``."""
    cluster = _started("etcd cluster", lambda: EtcdCluster(3).start())
    try:
        yield cluster
    finally:
        cluster.close()
        _STARTED.pop("etcd cluster", None)


@pytest.fixture
def tcp_proxy() -> Iterator[TcpProxyFactory]:
    """Factory: ``tcp_proxy(target_host, target_port)`` returns a started :class:`TcpProxy`.

    Every proxy made is stopped at teardown.
    """
    proxies: list[TcpProxy] = []

    def make(target_host: str, target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_host, target_port).start()
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.stop()


class PrivateServers:
    """Factory of servers owned by one test (to kill, restart, or start with TLS/auth), closed at teardown.

    ``private_servers(EtcdServer, tls=True)`` starts one; ``start=False`` returns it unstarted. A server that
    cannot start fails the test in CI and skips it elsewhere, like the session fixtures.
    """

    def __init__(self) -> None:
        self.servers: list[ServerBase] = []

    def __call__(self, kind: Callable[..., _B], *, start: bool = True, **kwargs: Any) -> _B:
        try:
            server = kind(**kwargs)
            self.servers.append(server)
            if start:
                server.start()
        except ServerUnavailable as exc:
            server_unavailable(f"{getattr(kind, '__name__', kind)}: {exc}")
        return server

    def close(self) -> None:
        """Stop and remove every server made."""
        for server in self.servers:
            server.close()


@pytest.fixture
def private_servers() -> Iterator[PrivateServers]:
    """A :class:`PrivateServers` factory for this test."""
    servers = PrivateServers()
    try:
        yield servers
    finally:
        servers.close()
