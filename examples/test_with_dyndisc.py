"""Testing your own code with dyndisc's pytest fixtures (installed with dyndisc, no
conftest needed).

pytest examples/test_with_dyndisc.py

``dyndisc_make_runtime`` starts runtimes on the test's in-memory store
(``dyndisc_store``), each with its own lease; ``await dyndisc_store.expire_lease(id)``
makes a worker vanish as if it had crashed (the store injects faults on demand:
``dyndisc.testing.FaultyStore``). For a real server use the same tests with a backend
from the ``dyndisc_etcd_server`` / ``dyndisc_nats_server`` fixtures.

The tests are marked for anyio's pytest plugin, which comes with dyndisc: they run as
written with or without pytest-asyncio, in its strict mode (its default) or auto mode.
"""

import anyio
import pytest

from dyndisc import Client, DistributedRuntime, Removed
from dyndisc.testing import FaultyStore, MakeRuntime

pytestmark = pytest.mark.anyio


class Router:
    """The code under test: picks the next worker of an endpoint for each request."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    async def start(cls, runtime: DistributedRuntime) -> "Router":
        client = await runtime.endpoint("ns.backend.generate").client()
        await client.wait_for_instances(timeout=5)
        return cls(client)

    def pick(self) -> int:
        return self.client.round_robin().instance_id


async def test_router_picks_every_worker_in_turn(
    dyndisc_make_runtime: MakeRuntime,
) -> None:
    workers = [await dyndisc_make_runtime(lease_ttl=1) for _ in range(2)]  # TTL 1 s
    for worker in workers:
        await worker.endpoint("ns.backend.generate").register("tcp://127.0.0.1:9000")
    router = await Router.start(await dyndisc_make_runtime())
    await router.client.wait_for(2, timeout=5)
    picks = [router.pick() for _ in range(4)]
    assert set(picks) == {w.instance_id for w in workers}
    assert picks[:2] == picks[2:], "round-robin: the same order every cycle"


async def test_a_crashed_worker_leaves_the_router(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    crashed, alive = (
        await dyndisc_make_runtime(lease_ttl=1),
        await dyndisc_make_runtime(lease_ttl=1),
    )  # TTL 1 s
    for worker in (crashed, alive):
        await worker.endpoint("ns.backend.generate").register("tcp://127.0.0.1:9000")
    router = await dyndisc_make_runtime()
    client = await router.endpoint("ns.backend.generate").client()
    await client.wait_for(2, timeout=5)
    async with router.endpoint("ns.backend.generate").watch() as events:
        assert (await anext(events)).type == "resync"
        await dyndisc_store.expire_lease(
            crashed.instance_id
        )  # as if its process had been killed
        with anyio.fail_after(5):
            removed = await anext(events)
    assert isinstance(removed, Removed)
    assert removed.instance_id == crashed.instance_id
    assert client.instance_ids() == [alive.instance_id]
    assert (await Router.start(router)).pick() == alive.instance_id
