"""The dyndisc pytest plugin (registered through the ``pytest11`` entry point).

In-memory discovery for your unit tests:

* ``dyndisc_store`` - a fresh :class:`~dyndisc.MemoryStore` per test, in a
  :class:`~dyndisc.testing.FaultyStore` (faults on demand);
* ``make_runtime`` - ``await make_runtime(lease_ttl=1)`` starts another runtime on that store, each with its
  own lease (pass ``backend=`` to use another backend); all are stopped at teardown;
* ``dyndisc_runtime`` - one runtime on that store.

Real servers on loopback (session-scoped): ``etcd_server``, ``nats_server``, ``kube_apiserver``,
``kube_cluster`` (another kube-apiserver, with kube-controller-manager), and the ``tcp_proxy`` factory for
partition tests. In CI (``CI=true``) a server that cannot start fails the test;
elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import pytest

from dyndisc._runtime import DistributedRuntime
from dyndisc.backends.memory import MemoryStore
from dyndisc.testing.faults import FaultyStore
from dyndisc.testing.hosting import RuntimeHost

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

MakeRuntime = Callable[..., Awaitable[DistributedRuntime]]


def _async_fixture(fn: Any) -> Any:
    if pytest_asyncio is None:

        @pytest.fixture(name=fn.__name__)
        def _missing() -> None:
            pytest.fail("dyndisc's async fixtures need pytest-asyncio: pip install 'dyndisc[test]'")

        return _missing
    return pytest_asyncio.fixture(fn)


@pytest.fixture
def dyndisc_store() -> FaultyStore:
    """A fresh in-memory store for this test: leases expire on the clock, and faults come on demand
    (``await dyndisc_store.expire_lease(id)``, ``break_watches()``, ``take_down()`` / ``bring_back()``)."""
    return FaultyStore(MemoryStore())


@_async_fixture
async def make_runtime(dyndisc_store: FaultyStore) -> AsyncIterator[MakeRuntime]:
    """A factory of running runtimes on ``dyndisc_store`` (or ``backend=``), stopped at teardown."""
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


@_async_fixture
async def dyndisc_runtime(make_runtime: MakeRuntime) -> DistributedRuntime:
    """A running runtime on ``dyndisc_store``."""
    return await make_runtime()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the log tails of the servers this session started to a failed test's report."""
    report = yield
    if report.failed:
        report.sections.extend(server_log_sections())
    return report
