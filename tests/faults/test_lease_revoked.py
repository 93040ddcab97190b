"""Scenario 6: a lease revoked behind the runtime's back (another client revokes it, as ``etcdctl lease
revoke`` would). The runtime notices at its next keep-alive and recovers by its policy. TTL 2 s."""

from __future__ import annotations

import time

import anyio
import pytest
from fault_targets import MakeTarget
from faultkit import PROMPT, assert_converged, registrations, unique_namespace, watching

from dyndisc import InstanceQuery, LeaseChange, LeaseLostError

KINDS = ("memory", "etcd", "nats", "file")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_revoked_lease_is_replaced_and_every_watcher_follows(
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

    victim = await target.start(on_lease_change=on_change)
    other = await target.start()
    for ep in ("a", "b", "c"):
        await victim.runtime.endpoint(f"{ns}.w.{ep}").register(f"tcp://victim/{ep}")
    await other.runtime.endpoint(f"{ns}.w.a").register("tcp://other/a")
    live = lambda: registrations([victim.runtime, other.runtime], query)  # noqa: E731

    async with watching([target.backend(), target.backend()], query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        old = victim.runtime.instance_id
        await target.raw.revoke(old)
        revoked = time.monotonic()
        with anyio.fail_after(target.ttl + PROMPT):
            await changed.wait()
        noticed = time.monotonic() - revoked
        assert changes[0].old_instance_id == old
        assert victim.runtime.instance_id == changes[0].new_instance_id != old
        took = await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=live)
        assert all(key[1] != old for w in watchers for key in w.instances), "the old id must be gone"
        assert sum(key[1] == victim.runtime.instance_id for key in watchers[0].instances) == 3
    print(
        f"{kind}: revoked lease replaced {noticed:.2f}s after the revoke; "
        f"watchers converged {took:.2f}s later"
    )


@pytest.mark.parametrize("kind", ["etcd", "nats"])
async def test_the_shutdown_policy_ends_the_runtime_and_its_instances_leave(
    make_target: MakeTarget, kind: str
) -> None:
    target = make_target(kind)  # lease TTL 2 s
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    victim = await target.start(lease_loss_policy="shutdown")
    other = await target.start()
    await victim.runtime.endpoint(f"{ns}.w.a").register("tcp://victim")
    await other.runtime.endpoint(f"{ns}.w.a").register("tcp://other")
    async with watching([target.backend()], query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT)
        await target.raw.revoke(victim.runtime.instance_id)
        with anyio.fail_after(target.ttl + PROMPT), pytest.raises(LeaseLostError):
            await victim.wait()
        await assert_converged(
            watchers,
            target.fresh,
            query,
            bound=PROMPT,
            expected=lambda: registrations([other.runtime], query),
        )
