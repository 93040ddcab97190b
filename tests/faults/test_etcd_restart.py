"""Scenario 1: etcd SIGKILLed and restarted on the same data dir while 200 endpoints are registered (20
worker runtimes x 10 endpoints) and 10 watchers (each on its own connection) follow them.

* a restart shorter than the TTL (6 s): every worker keeps its instance id and nothing moves;
* an outage longer than the TTL (2 s, etcd down 4 s): etcd restores its leases with a fresh TTL when it comes
  back, and only the server decides that a lease is lost, so again every worker keeps its instance id, nothing
  is re-registered, and no watcher sees an old id beside a new one (before: every worker re-registered under
  a new id and both were listed for about one more TTL).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
from fault_targets import MakeTarget
from faultkit import PROMPT, assert_converged, registrations, unique_namespace, watching

from dyndisc import InstanceQuery, LeaseChange
from dyndisc.testing import RuntimeHost
from dyndisc.testing.servers import EtcdServer

WORKERS, ENDPOINTS, WATCHERS = 20, 10, 10


async def start_workers(make: Callable[[], Awaitable[RuntimeHost]], ns: str, count: int) -> list[RuntimeHost]:
    """``count`` worker runtimes with :data:`ENDPOINTS` endpoints each, registered concurrently."""
    hosts = [await make() for _ in range(count)]
    async with anyio.create_task_group() as tg:
        for w, host in enumerate(hosts):
            for e in range(ENDPOINTS):
                tg.start_soon(
                    host.runtime.endpoint(f"{ns}.w{w}.e{e}").register, f"tcp://10.0.{w}.1:{9000 + e}"
                )
    return hosts


@pytest.mark.slow
@pytest.mark.parametrize(("outage", "ttl"), [("shorter", 6.0), ("longer", 2.0)])
async def test_etcd_killed_and_restarted_under_200_endpoints(
    make_target: MakeTarget, outage: str, ttl: float
) -> None:
    target = make_target("etcd", private_server=True)
    server = target.server
    assert isinstance(server, EtcdServer)
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    changes: list[LeaseChange] = []
    hosts = await start_workers(
        lambda: target.start(lease_ttl=ttl, on_lease_change=changes.append), ns, WORKERS
    )
    live = lambda: registrations([h.runtime for h in hosts], query)  # noqa: E731
    assert len(live()) == WORKERS * ENDPOINTS
    old_ids = {h.runtime.instance_id for h in hosts}

    async with watching([target.backend() for _ in range(WATCHERS)], query) as watchers:
        first = await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        events = [w.events for w in watchers]
        killed = time.monotonic()
        await anyio.to_thread.run_sync(server.kill)
        if outage == "longer":
            await anyio.sleep(2 * ttl)  # the outage itself: longer than every lease's TTL
        await anyio.to_thread.run_sync(server.start)
        restarted = time.monotonic()
        down = restarted - killed
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        took = time.monotonic() - restarted
        if outage == "shorter":
            assert down < ttl / 2, f"etcd was down {down:.1f}s: not a restart shorter than the TTL"
        else:
            assert down > ttl, f"etcd was down {down:.1f}s: not an outage longer than the TTL"
        # etcd restores leases with a fresh TTL; the keep-alive loops pick up again, so after a further full
        # TTL (a lease nobody renews would be gone by then) every id is unchanged and nothing moved.
        await anyio.sleep(ttl)
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        assert {h.runtime.instance_id for h in hosts} == old_ids, "every worker kept its id"
        assert changes == [], "nothing was re-registered"
        assert [w.events for w in watchers] == events, "no watcher saw a worker leave or come back"
        assert all(len(w.instances) == WORKERS * ENDPOINTS for w in watchers)
        assert not any(h.done for h in hosts)
    print(
        f"etcd restart {outage} than the TTL ({ttl}s; down {down:.1f}s): {len(watchers)} watchers x "
        f"{WORKERS * ENDPOINTS} endpoints converged {took:.2f}s after the restart (first sync {first:.2f}s)"
    )
