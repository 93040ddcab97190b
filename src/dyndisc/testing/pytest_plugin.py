"""The dyndisc pytest plugin (registered through the ``pytest11`` entry point).

Every fixture carries the ``dyndisc_`` prefix, so none shadows or surprises a project's own. In-memory
discovery for your unit tests:

* ``dyndisc_store`` - a fresh :class:`~dyndisc.MemoryStore` per test, in a
  :class:`~dyndisc.testing.FaultyStore` (faults on demand);
* ``dyndisc_make_runtime`` - ``await dyndisc_make_runtime(lease_ttl=1)`` starts another runtime on that
  store, each with its own lease (pass ``backend=`` to use another backend); all are stopped at teardown;
* ``dyndisc_runtime`` - one runtime on that store.

The async fixtures run in the event loop of whichever plugin runs the test: anyio's (``@pytest.mark.anyio``;
its plugin comes with dyndisc) or pytest-asyncio's (auto mode, or ``@pytest.mark.asyncio`` in strict mode).
An async test that neither runs fails with a message saying what to mark.

Real servers on loopback: ``dyndisc_etcd_server``, ``dyndisc_nats_server``, ``dyndisc_nats_cluster``,
``dyndisc_kube_apiserver``, ``dyndisc_kube_cluster`` (session-scoped), ``dyndisc_etcd_cluster``,
``dyndisc_private_servers`` and the ``dyndisc_tcp_proxy`` factory (one test's own). Their kit
(:mod:`dyndisc.testing.server_fixtures`, process management, TLS, the Kubernetes build) is imported by the
first test that uses one, never at pytest's start. In CI (``CI=true``) a server that cannot start fails the
test; elsewhere the test is skipped with the reason. The old unprefixed names still work for one release, with
a :class:`DeprecationWarning` (:mod:`dyndisc.testing.fixture_aliases`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

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
    from dyndisc.testing.servers import (
        EtcdCluster,
        EtcdServer,
        KubeApiServer,
        KubeCluster,
        NatsCluster,
        NatsServer,
    )

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
    "dyndisc_nats_cluster",
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
_SEE_DOCS = "see the 'Testing with dyndisc' page of dyndisc's documentation"


def _no_async_plugin(request: pytest.FixtureRequest) -> NoReturn:
    pytest.fail(
        f"{request.node.name} uses a dyndisc runtime fixture, but no async test plugin runs it, so its "
        "runtimes would have no event loop: make it an async test marked @pytest.mark.anyio (anyio's pytest "
        "plugin comes with dyndisc), or, with pytest-asyncio, mark it @pytest.mark.asyncio or set "
        f'asyncio_mode = "auto"; {_SEE_DOCS}',
        pytrace=False,
    )


def _two_plugins(request: pytest.FixtureRequest) -> NoReturn:
    pytest.fail(
        f"{request.node.name} is marked @pytest.mark.anyio, but pytest-asyncio's auto mode runs it too: "
        "anyio would start dyndisc's runtimes in an event loop of its own, not the test's. Under auto mode "
        "leave the anyio mark out (auto mode runs every async test), or use pytest-asyncio's strict mode "
        f"(its default), where the mark works; {_SEE_DOCS}",
        pytrace=False,
    )


def _run_by_pytest_asyncio(item: pytest.Item) -> bool:
    """Whether pytest-asyncio runs ``item`` (auto mode, or its ``asyncio`` mark in strict mode)."""
    if pytest_asyncio is None or not item.config.pluginmanager.has_plugin("asyncio"):
        return False
    is_async_test = getattr(pytest_asyncio, "is_async_test", None)  # pytest-asyncio >= 0.23
    if is_async_test is not None:
        return bool(is_async_test(item))
    return item.get_closest_marker("asyncio") is not None


def _for_this_test(request: pytest.FixtureRequest, name: str) -> Any:
    """The variant of fixture ``name`` for the async plugin that runs this test, so the runtimes live in the
    test's own event loop."""
    by_asyncio = isinstance(request.node, pytest.Item) and _run_by_pytest_asyncio(request.node)
    # anyio's plugin runs every async fixture of a test that has its backend, whoever runs the test.
    by_anyio = "anyio_backend" in request.fixturenames
    if by_asyncio and by_anyio:
        _two_plugins(request)
    if by_asyncio:
        return request.getfixturevalue(f"_{name}_asyncio")
    if by_anyio:
        backend = request.getfixturevalue("anyio_backend")
        if (backend if isinstance(backend, str) else backend[0]) != "asyncio":
            pytest.skip(f"dyndisc's runtime fixtures run on asyncio only, not {backend!r} (anyio_backend)")
        return request.getfixturevalue(f"_{name}_anyio")
    asyncio_installed = pytest_asyncio is not None and request.config.pluginmanager.has_plugin("asyncio")
    if inspect.iscoroutinefunction(getattr(request.node, "obj", None)) or not asyncio_installed:
        _no_async_plugin(request)  # no plugin would ever run this test's coroutine, or ours
    # A plain test: pytest-asyncio starts the runtimes in its loop, which runs only between tests.
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
def dyndisc_nats_cluster() -> Iterator[NatsCluster]:
    """A session-wide cluster of three nats-servers with JetStream on 127.0.0.1 (no auth): its servers reach
    each other through TCP proxies, so one can be partitioned. ``cluster.servers_setting`` is the value for
    ``NATS_SERVER``; set ``NATS_KV_REPLICAS=3`` for a bucket on every server. A test that kills, partitions
    or restarts a server restores it before it ends (``cluster.heal()``, ``cluster.restart()``), or makes a
    :class:`~dyndisc.testing.servers.NatsCluster` of its own.
    """
    from dyndisc.testing.server_fixtures import nats_cluster_for_session

    yield from nats_cluster_for_session()


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
    installed. Nothing plays kubelet: tests create a Node, Pods bound to it, and write the Pods' status. The
    reads of EndpointSlices, Pods and DynamoWorkerMetadata are audited (``cluster.apiserver.audit_events()``:
    what clients really asked for). Both binaries are built on first use when missing (many minutes); CI
    builds them beforehand.
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
