"""Scenario 3: one worker cut off from the server (TCP proxy black hole: silence, no reset) for longer than
its TTL. Its instances disappear for everyone else; when the partition heals it re-registers under a new id;
no duplicate survives. Lease TTL 2 s."""

from __future__ import annotations

import time

import anyio
import pytest
from fault_targets import MakeTarget
from faultkit import PROMPT, assert_converged, registrations, unique_namespace, watching

from dyndisc import InstanceQuery


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["etcd", "nats"])
async def test_a_partitioned_worker_leaves_then_comes_back_once(make_target: MakeTarget, kind: str) -> None:
    target = make_target(kind)  # lease TTL 2 s
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    cut_off = await target.start(target.backend(via_proxy=True))
    other = await target.start()
    for ep in ("a", "b"):
        await cut_off.runtime.endpoint(f"{ns}.w.{ep}").register(f"tcp://cut-off/{ep}")
        await other.runtime.endpoint(f"{ns}.w.{ep}").register(f"tcp://other/{ep}")
    both = lambda: registrations([cut_off.runtime, other.runtime], query)  # noqa: E731
    old = cut_off.runtime.instance_id

    async with watching([target.backend(), target.backend(), target.backend()], query) as watchers:
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=both)
        target.proxy.blackhole()
        partitioned = time.monotonic()
        # The server expires the silent worker's lease: gone for everyone within TTL + bound.
        gone = await assert_converged(
            watchers,
            target.fresh,
            query,
            bound=target.ttl + target.bound,
            expected=lambda: registrations([other.runtime], query),
            what="removal of the partitioned worker",
        )
        # Hold the partition well past the TTL, then heal it (no event to wait on: this is the fault itself).
        await anyio.sleep(max(0.0, 2 * target.ttl - (time.monotonic() - partitioned)))
        target.proxy.restore()
        healed = time.monotonic()
        # Back under a new id, and both endpoints registered again under it (the id changes first: checking
        # convergence in between would hold the watchers to the endpoints not written yet).
        mine = lambda: registrations([cut_off.runtime], query)  # noqa: E731
        with anyio.fail_after(PROMPT * 2):
            while cut_off.runtime.instance_id == old or len(mine()) < 2:  # noqa: ASYNC110 - no change event
                await anyio.sleep(0.05)
        reregistered = time.monotonic() - healed
        back = await assert_converged(watchers, target.fresh, query, bound=PROMPT * 2, expected=both)
        assert not cut_off.done, "the partitioned worker must ride it out (policy reregister)"
        new_ids = {key[1] for key in watchers[0].instances}
        assert new_ids == {cut_off.runtime.instance_id, other.runtime.instance_id}, "no duplicate, no old id"
    print(
        f"{kind}: partitioned worker gone for others {gone:.2f}s after the black hole (TTL {target.ttl}s); "
        f"re-registered under a new id {reregistered:.2f}s after healing, "
        f"watchers converged {back:.2f}s later"
    )
