"""The dyndisc pytest plugin (registered through the ``pytest11`` entry point).

Every fixture carries the ``dyndisc_`` prefix, so none shadows or surprises a project's own. In-memory
discovery for your unit tests:

* ``dyndisc_store`` - a fresh :class:`~dyndisc.MemoryStore` per test, in a
  :class:`~dyndisc.testing.FaultyStore` (faults on demand);
* ``dyndisc_make_runtime`` - ``await dyndisc_make_runtime(lease_ttl=1)`` starts another runtime on that
  store, each with its own lease (pass ``backend=`` to use another backend); all are stopped at teardown;
* ``dyndisc_runtime`` - one runtime on that store.

The async fixtures work under pytest-asyncio (auto mode, or strict mode with ``@pytest.mark.asyncio`` on the
test) and under anyio's own plugin alone (``@pytest.mark.anyio``): a test marked for anyio gets runtimes
started in anyio's event loop, any other test gets them from pytest-asyncio.

Real servers on loopback: ``dyndisc_etcd_server``, ``dyndisc_nats_server``, ``dyndisc_kube_apiserver``,
``dyndisc_kube_cluster`` (session-scoped), ``dyndisc_etcd_cluster``, ``dyndisc_private_servers`` and the
``dyndisc_tcp_proxy`` factory (one test's own). Their kit (:mod:`dyndisc.testing.server_fixtures`, process
management, TLS, the Kubernetes build) is imported by the first test that uses one, never at pytest's
start. In CI (``CI=true``) a server that cannot start fails the test; elsewhere the test is skipped with the
reason. The old unprefixed names still work for one release, with a :class:`DeprecationWarning`
(:mod:`dyndisc.testing.fixture_aliases`).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from dyndisc.backends.memory import MemoryStore
from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.faults import FaultyStore
from dyndisc.testing.fixture_aliases import (
    etcd_cluster,
    etcd_server,
    kube_apiserver,
    kube_cluster,
    make_runtime,
    nats_server,
    private_servers,
    tcp_proxy,
)
from dyndisc.testing.hosting import MakeRuntime, RuntimeHost

if TYPE_CHECKING:
    from dyndisc.testing.server_fixtures import PrivateServers, TcpProxyFactory
    from dyndisc.testing.servers import EtcdCluster, EtcdServer, KubeApiServer, KubeCluster, NatsServer

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures below then explain what is missing
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = [
    "dyndisc_etcd_cluster",
    "dyndisc_etcd_server",
    "dyndisc_kube_apiserver",
    "dyndisc_kube_cluster",
    "dyndisc_make_runtime",
    "dyndisc_nats_server",
    "dyndisc_private_servers",
    "dyndisc_runtime",
    "dyndisc_store",
    "dyndisc_tcp_proxy",
    # The deprecated names, registered with the plugin until the next release.
    "etcd_cluster",
    "etcd_server",
    "kube_apiserver",
    "kube_cluster",
    "make_runtime",
    "nats_server",
    "private_servers",
    "tcp_proxy",
]

_SERVER_FIXTURES = "dyndisc.testing.server_fixtures"


_NO_ASYNC_PLUGIN = (
    "dyndisc's async fixtures need an async test plugin: install pytest-asyncio (and set asyncio_mode = "
    "'auto', or mark the test @pytest.mark.asyncio), or mark the test @pytest.mark.anyio to use anyio's "
    "plugin; see the 'Testing with dyndisc' page"
)


def _for_this_test(request: pytest.FixtureRequest, name: str) -> Any:
    """The variant of fixture ``name`` for the async plugin that runs this test (anyio's or
    pytest-asyncio's), so the runtimes live in the test's own event loop."""
    if "anyio_backend" in request.fixturenames:
        return request.getfixturevalue(f"_{name}_anyio")
    if pytest_asyncio is None or not request.config.pluginmanager.has_plugin("asyncio"):
        pytest.fail(_NO_ASYNC_PLUGIN)
    return request.getfixturevalue(f"_{name}_asyncio")


def _both_variants(name: str, fn: Any) -> tuple[Any, Any]:
    """``fn`` as fixture ``_<name>_anyio``, a plain async fixture (anyio's plugin runs those), and as
    ``_<name>_asyncio``, a pytest-asyncio fixture."""
    anyio_variant = pytest.fixture(name=f"_{name}_anyio")(fn)
    if pytest_asyncio is None:
        return anyio_variant, None
    return anyio_variant, pytest_asyncio.fixture(name=f"_{name}_asyncio")(fn)


# -- in-memory discovery ---------------------------------------------------------------------------------
@pytest.fixture
def dyndisc_store() -> FaultyStore:
    """A fresh in-memory store for this test: leases expire on the clock, and faults come on demand
    (``await dyndisc_store.expire_lease(id)``, ``break_watches()``, ``take_down()`` / ``bring_back()``)."""
    return FaultyStore(MemoryStore())


@pytest.fixture
def dyndisc_make_runtime(request: pytest.FixtureRequest) -> MakeRuntime:
    """A factory of running runtimes on ``dyndisc_store`` (or ``backend=``), stopped at teardown:
    ``worker = await dyndisc_make_runtime(lease_ttl=1)``."""
    found: MakeRuntime = _for_this_test(request, "dyndisc_make_runtime")
    return found


@pytest.fixture
def dyndisc_runtime(request: pytest.FixtureRequest) -> DistributedRuntime:
    """A running runtime on ``dyndisc_store``."""
    found: DistributedRuntime = _for_this_test(request, "dyndisc_runtime")
    return found


async def _start_runtimes(dyndisc_store: FaultyStore) -> AsyncIterator[MakeRuntime]:
    hosts: list[RuntimeHost] = []

    async def factory(backend: Any = None, **kwargs: Any) -> DistributedRuntime:
        runtime = DistributedRuntime(dyndisc_store if backend is None else backend, **kwargs)
        host = await RuntimeHost.start(runtime)
        hosts.append(host)
        return runtime

    yield factory
    errors: list[BaseException] = []
    for host in reversed(hosts):
        try:
            await host.stop()
        except Exception as exc:  # report every failure, after stopping everything
            errors.append(exc)
    if errors:
        raise errors[0]


async def _start_one_runtime(dyndisc_make_runtime: MakeRuntime) -> DistributedRuntime:
    return await dyndisc_make_runtime()


_make_runtime_anyio, _make_runtime_asyncio = _both_variants("dyndisc_make_runtime", _start_runtimes)
_runtime_anyio, _runtime_asyncio = _both_variants("dyndisc_runtime", _start_one_runtime)


# -- real servers: each imports the server kit when a test first uses it -------------------------------
@pytest.fixture(scope="session")
def dyndisc_etcd_server() -> Iterator[EtcdServer]:
    """A session-wide single-member etcd on 127.0.0.1 (no TLS, no auth). Don't kill it: make your own.

    ``DYNDISC_TEST_ETCD_URL`` points the tests at an etcd you run instead; ``DYNDISC_TEST_SERVERS=containers``
    runs it in Docker through testcontainers.
    """
    from dyndisc.testing.server_fixtures import etcd_server_for_session

    yield from etcd_server_for_session()


@pytest.fixture(scope="session")
def dyndisc_nats_server() -> Iterator[NatsServer]:
    """A session-wide nats-server with JetStream on 127.0.0.1 (no auth).

    ``DYNDISC_TEST_NATS_URL`` points the tests at a nats-server (>= 2.11, JetStream on) you run instead;
    ``DYNDISC_TEST_SERVERS=containers`` runs it in Docker through testcontainers.
    """
    from dyndisc.testing.server_fixtures import nats_server_for_session

    yield from nats_server_for_session()


@pytest.fixture(scope="session")
def dyndisc_kube_apiserver() -> Iterator[KubeApiServer]:
    """A session-wide kube-apiserver (RBAC, admin and restricted tokens) on its own etcd.

    No controllers run against it: tests write EndpointSlices themselves. The first use may build the binary
    (many minutes); CI builds it beforehand with ``tools/kubernetes/build.sh``.
    """
    from dyndisc.testing.server_fixtures import kube_apiserver_for_session

    yield from kube_apiserver_for_session()


@pytest.fixture(scope="session")
def dyndisc_kube_cluster() -> Iterator[KubeCluster]:
    """A session-wide kube-apiserver of its own with the real kube-controller-manager running against it.

    Its EndpointSlice controller and garbage collector act on the whole cluster, which is why this is not
    the ``dyndisc_kube_apiserver`` of the tests that write EndpointSlices themselves. dyndisc's CRD is
    installed. Nothing plays kubelet: tests create a Node, Pods bound to it, and write the Pods' status. Both
    binaries are built on first use when missing (many minutes); CI builds them beforehand.
    """
    from dyndisc.testing.server_fixtures import kube_cluster_for_session

    yield from kube_cluster_for_session()


@pytest.fixture
def dyndisc_etcd_cluster() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster of this test's own (kill its leader, lose quorum, restart members); closed at
    teardown. ``cluster.endpoints`` is the value for ``ETCD_ENDPOINTS``."""
    from dyndisc.testing.server_fixtures import etcd_cluster_for_test

    yield from etcd_cluster_for_test()


@pytest.fixture
def dyndisc_tcp_proxy() -> Iterator[TcpProxyFactory]:
    """Factory: ``dyndisc_tcp_proxy(target_host, target_port)`` returns a started
    :class:`~dyndisc.testing.servers.TcpProxy`. Every proxy made is stopped at teardown."""
    from dyndisc.testing.server_fixtures import tcp_proxies_for_test

    yield from tcp_proxies_for_test()


@pytest.fixture
def dyndisc_private_servers() -> Iterator[PrivateServers]:
    """A :class:`~dyndisc.testing.server_fixtures.PrivateServers` factory for this test: servers to kill,
    restart or start with TLS or auth (``dyndisc_private_servers(EtcdServer, tls=True)``), closed at
    teardown."""
    from dyndisc.testing.server_fixtures import private_servers_for_test

    yield from private_servers_for_test()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the log tails of the servers this session started to a failed test's report."""
    report = yield
    # No server kit loaded: no server was started, and loading it here would cost every failing test.
    if report.failed and _SERVER_FIXTURES in sys.modules:
        from dyndisc.testing.server_fixtures import server_log_sections

        report.sections.extend(server_log_sections())
    return report
