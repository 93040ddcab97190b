"""Scenario 7: a watcher and a worker started **before** the server is up: both wait (with backoff) and
work once it is. Lease TTL 2 s."""

from __future__ import annotations

import time

import anyio
import pytest
from fault_targets import MakeTarget
from faultkit import PROMPT, Watcher, assert_converged, registrations, unique_namespace

from dyndisc import InstanceQuery
from dyndisc.testing import RuntimeHost


@pytest.mark.parametrize("kind", ["etcd", "nats"])
async def test_a_watcher_and_a_worker_started_before_the_server_wait_then_work(
    make_target: MakeTarget, kind: str
) -> None:
    target = make_target(kind, private_server=True, start=False)
    server = target.server
    assert server is not None
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    watcher = Watcher("early-watcher")
    hosts: list[RuntimeHost] = []
    watching = anyio.Event()

    async def worker() -> None:
        host = await target.start()  # grants its lease: waits for the server
        hosts.append(host)
        await host.runtime.endpoint(f"{ns}.w.a").register("tcp://10.0.0.1:1")

    async def watch(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await watcher.run(target.backend(), query, task_status=task_status)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)

        async def started_watch() -> None:
            await tg.start(watch)
            watching.set()

        tg.start_soon(started_watch)
        with anyio.move_on_after(1.5):
            await watching.wait()
        assert not watching.is_set(), "no watch can be established while the server is down"
        assert not hosts, "no lease can be granted while the server is down"
        await anyio.to_thread.run_sync(server.start)
        up = time.monotonic()
        with anyio.fail_after(PROMPT * 2):
            await watching.wait()
            while not hosts or not hosts[0].runtime.registrations:  # noqa: ASYNC110 - no event for it
                await anyio.sleep(0.05)
        await assert_converged(
            [watcher],
            target.fresh,
            query,
            bound=PROMPT,
            expected=lambda: registrations([hosts[0].runtime], query),
        )
        took = time.monotonic() - up
        assert len(watcher.instances) == 1
        tg.cancel_scope.cancel()
    print(f"{kind}: a worker and a watcher started before the server worked {took:.2f}s after it came up")
