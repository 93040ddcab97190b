"""What the pytest plugin's real-server fixtures do: etcd, nats-server (JetStream; alone, or a 3-server
cluster), kube-apiserver (alone, or with kube-controller-manager), TCP proxies, servers of a test's own.

The fixtures themselves (``dyndisc_etcd_server`` ...) are in :mod:`dyndisc.testing.pytest_plugin`, which
imports this module only when a test uses one of them: a session that uses none never loads the server kit.
Each generator here is one fixture's body. A server that cannot start fails the test in CI (``CI`` is
``true``/``1``) and skips it elsewhere, with the reason either way. :func:`server_log_sections` gives the log
tails of every server started here, for failure reports.
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
    NatsCluster,
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
    "etcd_cluster_for_test",
    "etcd_server_for_session",
    "in_ci",
    "kube_apiserver_for_session",
    "kube_cluster_for_session",
    "nats_cluster_for_session",
    "nats_server_for_session",
    "private_servers_for_test",
    "server_log_sections",
    "server_unavailable",
    "tcp_proxies_for_test",
]

TcpProxyFactory = Callable[[str, int], TcpProxy]


class _HasLogTail(Protocol):
    def log_tail(self, lines: int = 50) -> str: ...


class _Owned(Protocol):
    """What a test's own server (or cluster of servers) offers: started, then closed at teardown."""

    def start(self) -> object: ...

    def close(self) -> None: ...


_S = TypeVar("_S", bound=_HasLogTail)
_B = TypeVar("_B", bound=ServerBase)
_O = TypeVar("_O", bound=_Owned)

# Every server started here in this process, by display name, for failure reports.
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


def etcd_server_for_session() -> Iterator[EtcdServer]:
    """The body of ``dyndisc_etcd_server``: yours (``DYNDISC_TEST_ETCD_URL``), in Docker, or started here."""
    yield from _session_server("etcd", "DYNDISC_TEST_ETCD_URL", ExternalEtcd, etcd_container, EtcdServer)


def nats_server_for_session() -> Iterator[NatsServer]:
    """The body of ``dyndisc_nats_server``: yours (``DYNDISC_TEST_NATS_URL``), in Docker, or started here."""
    yield from _session_server(
        "nats-server", "DYNDISC_TEST_NATS_URL", ExternalNats, nats_container, NatsServer
    )


def nats_cluster_for_session() -> Iterator[NatsCluster]:
    """The body of ``dyndisc_nats_cluster``: three nats-servers with JetStream in one cluster."""
    cluster = _started("nats cluster", lambda: NatsCluster(3).start())
    try:
        yield cluster
    finally:
        cluster.close()


def kube_apiserver_for_session() -> Iterator[KubeApiServer]:
    """The body of ``dyndisc_kube_apiserver``: a kube-apiserver on its own etcd, no controllers."""
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

    # Audited, so that a test can check what its clients asked the API server for (their label selectors).
    cluster = KubeCluster(crds=[manifest("crd.yaml")], audit=True)
    _STARTED["kube-cluster apiserver"] = cluster.apiserver
    _STARTED["kube-cluster etcd"] = cluster.apiserver.etcd
    _STARTED["kube-controller-manager"] = cluster.controller_manager
    try:
        return cluster.start()
    except BaseException:
        cluster.close()
        raise


def kube_cluster_for_session() -> Iterator[KubeCluster]:
    """The body of ``dyndisc_kube_cluster``: a kube-apiserver of its own with kube-controller-manager."""
    try:
        cluster = _start_cluster()
    except ServerUnavailable as exc:
        server_unavailable(f"kube-cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


def etcd_cluster_for_test() -> Iterator[EtcdCluster]:
    """The body of ``dyndisc_etcd_cluster``: a 3-member etcd cluster, closed at teardown."""
    cluster = _started("etcd cluster", lambda: EtcdCluster(3).start())
    try:
        yield cluster
    finally:
        cluster.close()
        _STARTED.pop("etcd cluster", None)


def tcp_proxies_for_test() -> Iterator[TcpProxyFactory]:
    """The body of ``dyndisc_tcp_proxy``: a factory of started proxies, every one stopped at teardown."""
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

    ``dyndisc_private_servers(EtcdServer, tls=True)`` starts one; ``start=False`` returns it unstarted;
    ``dyndisc_private_servers(NatsCluster)`` or ``(EtcdCluster)`` a cluster. A server that cannot start fails
    the test in CI and skips it elsewhere, like the session fixtures.
    """

    def __init__(self) -> None:
        self.servers: list[_Owned] = []

    def __call__(self, kind: Callable[..., _O], *, start: bool = True, **kwargs: Any) -> _O:
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


def private_servers_for_test() -> Iterator[PrivateServers]:
    """The body of ``dyndisc_private_servers``: a :class:`PrivateServers` closed at teardown."""
    servers = PrivateServers()
    try:
        yield servers
    finally:
        servers.close()
