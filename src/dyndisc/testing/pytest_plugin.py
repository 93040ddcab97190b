"""The dyndisc pytest plugin (registered through the ``pytest11`` entry point).

In-memory discovery for your unit tests:

* ``dyndisc_store`` - a fresh :class:`~dyndisc.MemoryStore` per test, in a
  :class:`~dyndisc.testing.FaultyStore` (faults on demand);
* ``make_runtime`` - ``await make_runtime(lease_ttl=1)`` starts another runtime on that store, each with its
  own lease (pass ``backend=`` to use another backend); all are stopped at teardown;
* ``dyndisc_runtime`` - one runtime on that store.

The async fixtures work under pytest-asyncio (auto mode, or strict mode with ``@pytest.mark.asyncio`` on the
test) and under anyio's own plugin alone (``@pytest.mark.anyio``): a test marked for anyio gets runtimes
started in anyio's event loop, any other test gets them from pytest-asyncio.

Real servers on loopback (session-scoped): ``etcd_server``, ``nats_server``, ``kube_apiserver``,
``kube_cluster`` (another kube-apiserver, with kube-controller-manager), and the ``tcp_proxy`` factory for
partition tests. In CI (``CI=true``) a server that cannot start fails the test;
elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest

from dyndisc.backends.memory import MemoryStore
from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.faults import FaultyStore
from dyndisc.testing.hosting import MakeRuntime, RuntimeHost

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures below then explain what is missing
    pytest_asyncio = None  # type: ignore[assignment]

from dyndisc.testing.server_fixtures import (
    etcd_cluster,
    etcd_server,
    kube_apiserver,
    kube_cluster,
    nats_server,
    private_servers,
    server_log_sections,
    tcp_proxy,
)

__all__ = [
    "dyndisc_runtime",
    "dyndisc_store",
    "etcd_cluster",
    "etcd_server",
    "kube_apiserver",
    "kube_cluster",
    "make_runtime",
    "nats_server",
    "private_servers",
    "tcp_proxy",
]


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


@pytest.fixture
def dyndisc_store() -> FaultyStore:
    """A fresh in-memory store for this test: leases expire on the clock, and faults come on demand
    (``await dyndisc_store.expire_lease(id)``, ``break_watches()``, ``take_down()`` / ``bring_back()``)."""
    return FaultyStore(MemoryStore())


@pytest.fixture
def make_runtime(request: pytest.FixtureRequest) -> MakeRuntime:
    """A factory of running runtimes on ``dyndisc_store`` (or ``backend=``), stopped at teardown:
    ``worker = await make_runtime(lease_ttl=1)``."""
    found: MakeRuntime = _for_this_test(request, "make_runtime")
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


async def _start_one_runtime(make_runtime: MakeRuntime) -> DistributedRuntime:
    return await make_runtime()


_make_runtime_anyio, _make_runtime_asyncio = _both_variants("make_runtime", _start_runtimes)
_dyndisc_runtime_anyio, _dyndisc_runtime_asyncio = _both_variants("dyndisc_runtime", _start_one_runtime)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the log tails of the servers this session started to a failed test's report."""
    report = yield
    if report.failed:
        report.sections.extend(server_log_sections())
    return report
