"""A lost lease with thousands of endpoints on it: one replacement, not one every TTL for ever.

Found from outside (issue 24): after a lease loss, a runtime with 5,000 endpoints at TTL 10 s re-registered
them one at a time and renewed the new lease only when done, so the new lease expired before the
replacement ended, and the next, for ever (every endpoint vanishing from every watcher each time). The new
lease is now kept alive from its grant while a bounded pool writes the endpoints again.
"""

from __future__ import annotations

import time

import anyio
import pytest
from fault_targets import MakeTarget
from faultkit import unique_namespace

from dyndisc import InstanceQuery, LeaseChange, LeaseState

ENDPOINTS = 10_000


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["etcd", "nats"])
async def test_ten_thousand_endpoints_recover_from_a_lease_loss_in_one_replacement(
    make_target: MakeTarget, kind: str
) -> None:
    target = make_target(kind)  # lease TTL 2 s
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    changes: list[LeaseChange] = []
    changed = anyio.Event()

    def on_change(change: LeaseChange) -> None:
        changes.append(change)
        changed.set()

    worker = await target.start(on_lease_change=on_change)
    endpoints = [worker.runtime.endpoint(f"{ns}.c{n // 100}.e{n % 100}") for n in range(ENDPOINTS)]
    pending = iter(endpoints)

    async def register_some() -> None:
        for endpoint in pending:
            await endpoint.register("tcp://10.0.0.1:9000")

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(register_some)
    registered_in = time.monotonic() - started
    old = worker.runtime.instance_id

    revoked = time.monotonic()
    await target.raw.revoke(old)  # as `etcdctl lease revoke` would: every endpoint goes at once
    with anyio.fail_after(60):
        await changed.wait()
    replaced_in = time.monotonic() - revoked
    new = worker.runtime.instance_id
    assert new != old

    # Three more TTLs with nothing to do but keep the lease: it is renewed all along, and not replaced again
    # (the bug replaced it every TTL). A wait for an absence, hence a sleep.
    renewed = worker.runtime.health().renewed_at
    await anyio.sleep(3 * target.ttl)
    assert worker.runtime.health().renewed_at != renewed, "the new lease is being renewed"
    assert len(changes) == 1, f"{len(changes)} replacements for one loss"
    assert worker.runtime.instance_id == new
    assert worker.runtime.health().state is LeaseState.HELD
    async with target.fresh() as reader:
        listed = await reader.list(query)
    assert len(listed) == ENDPOINTS
    assert {i.instance_id for i in listed} == {new}
    print(
        f"{kind}: {ENDPOINTS} endpoints registered in {registered_in:.1f}s; after a revoke, one replacement "
        f"carried them all in {replaced_in:.1f}s (TTL {target.ttl}s) and the new lease held"
    )
