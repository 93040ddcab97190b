"""The benchmark cases. Each returns a flat dict of figures; ratios are ours / raw (lower is better)."""

from __future__ import annotations

import gc
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio

from benchmarks.targets import Target
from dyndisc import Added, DistributedRuntime, InstanceQuery, KvDiscovery, Lease

Figures = dict[str, Any]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _ns() -> str:
    return f"b{uuid.uuid4().hex[:10]}"


async def propagation(target: Target, count: int) -> Figures:
    """register() returning in one runtime -> Added in another runtime's watch; raw: put -> watch event."""
    ns = _ns()
    ours: list[float] = []
    async with (
        DistributedRuntime(target.new_backend(), lease_ttl=30) as worker,
        DistributedRuntime(target.new_backend(), lease_ttl=30) as frontend,
    ):
        source = await frontend.instance_set(InstanceQuery(namespace=ns))
        sub = source.subscribe()
        await sub.next()  # the initial Resync
        for n in range(count):
            await worker.endpoint(f"{ns}.c.e{n}").register("tcp://127.0.0.1:1")
            started = time.perf_counter()
            with anyio.fail_after(10):
                event = await sub.next()
            ours.append(time.perf_counter() - started)
            assert isinstance(event, Added)
            assert event.instance.endpoint == f"e{n}"
        source.unsubscribe(sub)
    figures: Figures = {
        "count": count,
        "p50_ms": _ms(percentile(ours, 50)),
        "p99_ms": _ms(percentile(ours, 99)),
    }
    if target.raw is not None:
        raw: list[float] = []
        prefix = f"/raw/{ns}/"
        lease = await target.raw.grant(30)
        async with target.raw.watch_puts(prefix) as keys:
            for n in range(count):
                await target.raw.put(f"{prefix}{n}", b'{"x":1}', lease)
                started = time.perf_counter()
                with anyio.fail_after(10):
                    key = await anext(keys)
                raw.append(time.perf_counter() - started)
                assert key == f"{prefix}{n}"
        figures |= {"raw_p50_ms": _ms(percentile(raw, 50)), "raw_p99_ms": _ms(percentile(raw, 99))}
        figures["ratio_p50"] = round(percentile(ours, 50) / max(percentile(raw, 50), 1e-9), 2)
    return figures


async def _run_bounded(count: int, concurrency: int, one: Any) -> float:
    started = time.perf_counter()
    limiter = anyio.CapacityLimiter(concurrency)

    async def limited(n: int) -> None:
        async with limiter:
            await one(n)

    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(limited, n)
    return time.perf_counter() - started


async def throughput(target: Target, count: int, concurrency: int) -> Figures:
    """``count`` endpoints registered on one lease, sequentially and with bounded concurrency."""
    figures: Figures = {"count": count}
    for label, width in (("seq", 1), (f"c{concurrency}", concurrency)):
        ns = _ns()
        async with DistributedRuntime(target.new_backend(), lease_ttl=30) as worker:

            async def register(n: int, ns: str = ns, worker: DistributedRuntime = worker) -> None:
                await worker.endpoint(f"{ns}.c.e{n}").register("tcp://127.0.0.1:1")

            ours = await _run_bounded(count, width, register)
        figures[f"{label}_per_s"] = round(count / ours)
        if target.raw is not None:
            raw_client = target.raw
            lease = await raw_client.grant(30)

            async def put(n: int, ns: str = ns, lease: int = lease, raw_client: Any = raw_client) -> None:
                await raw_client.put(f"/raw/{ns}/{n}", b'{"x":1}', lease)

            raw = await _run_bounded(count, width, put)
            figures[f"raw_{label}_per_s"] = round(count / raw)
            figures[f"ratio_{label}"] = round(ours / raw, 2)
    return figures


async def scale(target: Target, instances: int, watchers: int) -> Figures:
    """``instances`` live instances, ``watchers`` runtimes watching them: snapshot time, fan-out, memory."""
    ns = _ns()
    backend = target.new_backend()
    assert isinstance(backend, KvDiscovery), "scale is measured on key-value backends"
    lease = await backend.grant_lease(60)
    async with DistributedRuntime(backend, lease_ttl=60) as seeder:
        template = await seeder.endpoint(f"{ns}.c.e").register("tcp://127.0.0.1:1")
        await _seed(backend, lease, template.model_copy(update={"instance_id": lease.id}), instances - 1)
        runtimes = [DistributedRuntime(target.new_backend(), lease_ttl=60) for _ in range(watchers)]
        async with AsyncExitStack() as stack:
            for runtime in runtimes:
                await stack.enter_async_context(runtime)
            started = time.perf_counter()
            first = await runtimes[0].endpoint(f"{ns}.c.e").client()
            snapshot = time.perf_counter() - started
            assert len(first.instances()) == instances, len(first.instances())
            # Memory is measured on a second watcher: tracemalloc would distort the timing above.
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            second = await runtimes[1 % watchers].endpoint(f"{ns}.c.e").client()
            second.instances()
            retained = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            clients = [first] + [await r.endpoint(f"{ns}.c.e").client() for r in runtimes[1:]]
            fanout: list[float] = []
            for round_ in range(20):
                started = time.perf_counter()
                await seeder.endpoint(f"{ns}.c.e").register("tcp://127.0.0.1:1", {"round": round_})
                with anyio.fail_after(30):
                    for client in clients:
                        while client.direct(seeder.instance_id).metadata.get("round") != round_:
                            await client._source.wait_changed()
                fanout.append(time.perf_counter() - started)
    await backend.revoke_lease(lease)
    await backend.aclose()
    return {
        "instances": instances,
        "watchers": watchers,
        "snapshot_ms": _ms(snapshot),
        "fanout_p50_ms": _ms(percentile(fanout, 50)),
        "fanout_p99_ms": _ms(percentile(fanout, 99)),
        "bytes_per_instance": round(retained / instances),
    }


async def _seed(backend: KvDiscovery, lease: Lease, template: Any, count: int) -> None:
    async def one(n: int) -> None:
        await backend.register(template.model_copy(update={"instance_id": n + 1}), lease)

    await _run_bounded(count, 64, one)


async def keepalive_cost(target: Target, endpoint_counts: Sequence[int], ttl: float) -> Figures:
    """Keep-alive requests per second from one runtime holding 1, 100, 1,000 endpoints."""
    figures: Figures = {"ttl_s": ttl}
    for count in endpoint_counts:
        backend = target.new_backend()
        calls = 0
        original = backend.keep_alive

        async def counting(lease: Lease, original: Any = original) -> float:
            nonlocal calls
            calls += 1
            return float(await original(lease))

        backend.keep_alive = counting  # type: ignore[method-assign]
        ns = _ns()
        async with DistributedRuntime(backend, lease_ttl=ttl) as runtime:
            await _run_bounded(
                count, 64, lambda n, ns=ns: runtime.endpoint(f"{ns}.c.e{n}").register("tcp://127.0.0.1:1")
            )
            calls = 0
            window = 4 * ttl
            await anyio.sleep(window)  # a measurement window, not a wait for a condition
        await backend.aclose()
        figures[f"{count}_endpoints_req_per_s"] = round(calls / window, 2)
    return figures
