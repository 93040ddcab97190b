"""The pytest plugin's in-memory fixtures, used the way the docs show."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dyndisc import DistributedRuntime
from dyndisc.testing import FaultyStore


async def test_worker_and_frontend_on_the_fixture_store(
    dyndisc_make_runtime: Callable[..., Awaitable[DistributedRuntime]], dyndisc_store: FaultyStore
) -> None:
    worker = await dyndisc_make_runtime(lease_ttl=1)
    frontend = await dyndisc_make_runtime()
    assert worker.instance_id != frontend.instance_id
    await worker.endpoint("ns.backend.generate").register("tcp://127.0.0.1:9000")
    client = await frontend.endpoint("ns.backend.generate").client()
    (instance,) = await client.wait_for_instances(timeout=1)
    assert instance.instance_id == worker.instance_id
    assert worker.instance_id in dyndisc_store.inner.lease_ids


async def test_dyndisc_runtime_is_running(dyndisc_runtime: DistributedRuntime) -> None:
    assert dyndisc_runtime.backend.name == "memory"
    assert await dyndisc_runtime.list() == []
