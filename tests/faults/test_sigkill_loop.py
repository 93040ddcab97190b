"""Scenario 5: a worker process SIGKILLed 30 times (a real subprocess each time): every one disappears
within TTL + bound for every watcher, and the p50/p99 detection time is printed. Lease TTL 2 s."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream
from fault_targets import MakeTarget, Target
from faultkit import PROMPT, Watcher, assert_converged, figure, unique_namespace, watching

from dyndisc import InstanceQuery

WORKER = Path(__file__).with_name("fault_worker.py")
KILLS = 30
#: Workers alive at once: the kills overlap so 30 of them fit the suite's time budget on 2 cores.
LANES = 5
ENDPOINTS = 2
TTL = 2.0


async def kill_one(target: Target, ns: str, watcher: Watcher, detections: list[float]) -> None:
    """Start a worker process, wait until the watcher sees it, SIGKILL it, time until the watcher drops it."""
    process = await anyio.open_process(
        [sys.executable, str(WORKER), ns, str(ENDPOINTS)], env=target.env(ttl=TTL), stderr=None
    )
    try:
        assert process.stdout is not None
        text, buffer = TextReceiveStream(process.stdout), ""
        with anyio.fail_after(PROMPT * 3):  # interpreter start-up on a busy machine
            while "\n" not in buffer:
                try:
                    buffer += await text.receive()
                except anyio.EndOfStream:
                    raise AssertionError(f"worker {process.pid} exited ({process.returncode})") from None
        instance_id = json.loads(buffer.split("\n", 1)[0])["instance_id"]
        mine = lambda w: {k for k in w.instances if k[1] == instance_id}  # noqa: E731
        await watcher.wait_for(
            lambda w: len(mine(w)) == ENDPOINTS, PROMPT, f"worker {instance_id:x} to appear"
        )
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await process.wait()
        bound = TTL + target.bound
        await watcher.wait_for(lambda w: not mine(w), bound, f"SIGKILLed worker {instance_id:x} to leave")
        detections.append(
            max(watcher.removed_at[k] for k in watcher.removed_at if k[1] == instance_id) - killed
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["etcd", "nats", "file"])
async def test_every_sigkilled_worker_leaves_within_ttl_and_bound(make_target: MakeTarget, kind: str) -> None:
    target = make_target(kind)
    ns = unique_namespace()
    query = InstanceQuery(namespace=ns)
    detections: list[float] = []
    async with watching([target.backend(), target.backend()], query) as watchers:

        async def lane(runs: int) -> None:
            for _ in range(runs):
                await kill_one(target, ns, watchers[0], detections)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for n in range(LANES):
                tg.start_soon(lane, KILLS // LANES + (n < KILLS % LANES))
        await assert_converged(watchers, target.fresh, query, bound=PROMPT, expected=dict)
    assert len(detections) == KILLS
    assert max(detections) <= TTL + target.bound
    print(
        figure(f"{kind}: SIGKILL -> removed (TTL {TTL}s, bound {target.bound}s)", detections)
        + f" in {time.monotonic() - started:.0f}s"
    )
