"""The benchmark cases. Each returns a flat dict of figures; ratios are ours / raw (lower is better)."""

from __future__ import annotations

import gc
import os
import signal
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio

from benchmarks.raw import RawClient
from benchmarks.targets import Target
from dyndisc import Added, DistributedRuntime, InstanceQuery, KvDiscovery, Lease, Removed, Resync
from dyndisc.testing import CrashableBackend
from dyndisc.testing.hosting import RuntimeHost

Figures = dict[str, Any]

#: Changes timed in the scale case's fan-out, after the first (reported apart).
FANOUT_ROUNDS = 50


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _ns() -> str:
    return f"b{uuid.uuid4().hex[:10]}"


async def propagation(target: Target, count: int, blocks: int = 5) -> Figures:
    """register() returning in one runtime -> Added in another runtime's watch; raw: put -> watch event.

    Ours and raw alternate in ``blocks`` blocks, so load from elsewhere on the machine hits both alike.
    """
    ours: list[float] = []
    raw: list[float] = []
    block_ratios: list[float] = []
    # From register()/put() being called (the write's round trip included) to the event: end to end.
    ours_whole: list[float] = []
    raw_whole: list[float] = []
    size = max(1, count // blocks)
    for _ in range(blocks):
        mine = await _propagation_ours(target, size, ours_whole)
        ours += mine
        if target.raw is not None:
            theirs = await _propagation_raw(target.raw, size, raw_whole)
            raw += theirs
            block_ratios.append(percentile(mine, 50) / max(percentile(theirs, 50), 1e-9))
    figures: Figures = {
        "count": len(ours),
        "p50_ms": _ms(percentile(ours, 50)),
        "p99_ms": _ms(percentile(ours, 99)),
        "e2e_p50_ms": _ms(percentile(ours_whole, 50)),
        "e2e_p99_ms": _ms(percentile(ours_whole, 99)),
    }
    if raw:
        figures |= {"raw_p50_ms": _ms(percentile(raw, 50)), "raw_p99_ms": _ms(percentile(raw, 99))}
        figures["ratio_p50"] = round(percentile(ours, 50) / max(percentile(raw, 50), 1e-9), 2)
        figures["ratio_p99"] = round(percentile(ours, 99) / max(percentile(raw, 99), 1e-9), 2)
        figures["ratio_p50_median_of_blocks"] = round(statistics.median(block_ratios), 2)
        for q in (50, 99):
            figures[f"raw_e2e_p{q}_ms"] = _ms(percentile(raw_whole, q))
        for q in (50, 99):
            limit = max(percentile(raw_whole, q), 1e-9)
            figures[f"ratio_e2e_p{q}"] = round(percentile(ours_whole, q) / limit, 2)
    return figures


async def _propagation_ours(target: Target, count: int, whole: list[float]) -> list[float]:
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
            called = time.perf_counter()
            await worker.endpoint(f"{ns}.c.e{n}").register("tcp://127.0.0.1:1")
            started = time.perf_counter()
            with anyio.fail_after(10):
                event = await sub.next()
            ours.append(time.perf_counter() - started)
            whole.append(time.perf_counter() - called)
            assert isinstance(event, Added), event
            assert event.instance.endpoint == f"e{n}", event
        source.unsubscribe(sub)
    return ours


async def _propagation_raw(raw_client: RawClient, count: int, whole: list[float]) -> list[float]:
    ns = _ns()
    raw: list[float] = []
    lease = await raw_client.grant(30)
    async with raw_client.watch_puts(ns) as keys:
        for n in range(count):
            called = time.perf_counter()
            await raw_client.put(ns, n, lease)
            started = time.perf_counter()
            with anyio.fail_after(10):
                key = await anext(keys)
            raw.append(time.perf_counter() - started)
            whole.append(time.perf_counter() - called)
            assert key == n, (key, n)
    return raw


async def run_bounded(count: int, concurrency: int, one: Any) -> float:
    """``await one(n)`` for ``n`` in ``range(count)``, ``concurrency`` at a time; the seconds it took."""
    started = time.perf_counter()
    limiter = anyio.CapacityLimiter(concurrency)

    async def limited(n: int) -> None:
        async with limiter:
            await one(n)

    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(limited, n)
    return time.perf_counter() - started


async def throughput(target: Target, count: int, concurrency: int, repeats: int = 3) -> Figures:
    """``count`` endpoints registered on one lease, sequentially and with bounded concurrency.

    Each is measured ``repeats`` times, ours and raw alternating; the figures are medians.
    """
    figures: Figures = {"count": count, "repeats": repeats}
    for label, width in (("seq", 1), (f"c{concurrency}", concurrency)):
        ours: list[float] = []
        raw: list[float] = []
        for _ in range(repeats):
            ns = _ns()
            async with DistributedRuntime(target.new_backend(), lease_ttl=30) as worker:

                async def register(n: int, ns: str = ns, worker: DistributedRuntime = worker) -> None:
                    await worker.endpoint(f"{ns}.c.e{n}").register("tcp://127.0.0.1:1")

                ours.append(await run_bounded(count, width, register))
            if target.raw is not None:
                raw_client = target.raw
                lease = await raw_client.grant(30)

                async def put(
                    n: int, ns: str = ns, lease: int = lease, raw_client: RawClient = raw_client
                ) -> None:
                    await raw_client.put(ns, n, lease)

                raw.append(await run_bounded(count, width, put))
        figures[f"{label}_per_s"] = round(count / statistics.median(ours))
        if raw:
            figures[f"raw_{label}_per_s"] = round(count / statistics.median(raw))
            figures[f"ratio_{label}"] = round(statistics.median(ours) / statistics.median(raw), 2)
    return figures


async def scale(target: Target, instances: int, watchers: int) -> Figures:
    """``instances`` live instances, ``watchers`` runtimes watching them: snapshot time, fan-out, memory."""
    ns = _ns()
    backend = target.new_backend()
    assert isinstance(backend, KvDiscovery), "scale is measured on key-value backends"
    lease = await backend.grant_lease(60)
    async with DistributedRuntime(backend, lease_ttl=60) as seeder:
        template = await seeder.endpoint(f"{ns}.c.e").register("tcp://127.0.0.1:1")
        await _seed(backend, lease, template.replace(instance_id=lease.id), instances - 1)
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
            raw_snapshot = await _raw_snapshot(target, backend.prefix_for(InstanceQuery(ns, "c", "e")))
            clients = [first] + [await r.endpoint(f"{ns}.c.e").client() for r in runtimes[1:]]
            # The first change is reported on its own: it is the first Added every watcher handles (the
            # interpreter and caches warm up on it), and it would otherwise be the p99 of 50 rounds.
            fanout: list[float] = []
            for round_ in range(FANOUT_ROUNDS + 1):
                started = time.perf_counter()
                await seeder.endpoint(f"{ns}.c.e").register("tcp://127.0.0.1:1", {"round": round_})
                with anyio.fail_after(30):
                    for client in clients:
                        while client.direct(seeder.instance_id).metadata.get("round") != round_:
                            await client._source.wait_changed()
                fanout.append(time.perf_counter() - started)
            first, fanout = fanout[0], fanout[1:]
            # The raw fan-out runs while our watchers and their instances are alive, so both sides share a
            # process holding the same objects (the collector's work grows with them).
            raw = await _raw_fanout(target, watchers) if target.new_raw is not None else None
    await backend.revoke_lease(lease)
    await backend.aclose()
    figures: Figures = {
        "instances": instances,
        "watchers": watchers,
        "snapshot_ms": _ms(snapshot),
        "fanout_first_ms": _ms(first),
        "fanout_p50_ms": _ms(percentile(fanout, 50)),
        "fanout_p99_ms": _ms(percentile(fanout, 99)),
        "bytes_per_instance": round(retained / instances),
    }
    if raw_snapshot is not None:
        raw_seconds, raw_bytes = raw_snapshot
        figures |= {
            "raw_snapshot_ms": _ms(raw_seconds),
            "ratio_snapshot": round(snapshot / max(raw_seconds, 1e-9), 2),
            "raw_bytes_per_instance": round(raw_bytes / instances),
        }
    if raw:
        figures |= {
            "raw_fanout_p50_ms": _ms(percentile(raw, 50)),
            "raw_fanout_p99_ms": _ms(percentile(raw, 99)),
        }
        figures["ratio_fanout_p99"] = round(percentile(fanout, 99) / max(percentile(raw, 99), 1e-9), 2)
    return figures


async def _raw_snapshot(target: Target, prefix: str) -> tuple[float, int] | None:
    """The raw client's first snapshot of ``prefix``: its time, then (in a second one, traced) the bytes it
    holds. ``None`` where the raw client cannot list."""
    if target.new_raw is None:
        return None
    client = target.new_raw()
    try:
        try:
            await client.snapshot("/warm-up/")  # the connection exists before the timing, as ours does
        except NotImplementedError:
            return None
        started = time.perf_counter()
        await client.snapshot(prefix)
        seconds = time.perf_counter() - started
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        held = await client.snapshot(prefix)
        retained = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del held
        return seconds, retained
    finally:
        await client.aclose()


async def _raw_fanout(target: Target, watchers: int) -> list[float]:
    """One put reaching ``watchers`` raw watch streams (each its own client): the limit of the fan-out."""
    assert target.new_raw is not None
    assert target.raw is not None
    ns = _ns()
    clients = [target.new_raw() for _ in range(watchers)]
    lease = await target.raw.grant(60)
    times: list[float] = []
    try:
        async with AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(c.watch_puts(ns)) for c in clients]
            for round_ in range(FANOUT_ROUNDS + 1):
                started = time.perf_counter()
                await target.raw.put(ns, round_, lease)
                with anyio.fail_after(30):
                    for stream in streams:
                        seen = await anext(stream)
                        assert seen == round_, (seen, round_)
                times.append(time.perf_counter() - started)
    finally:
        for client in clients:
            await client.aclose()
    return times[1:]  # as for ours, the first change is a warm-up


async def _seed(backend: KvDiscovery, lease: Lease, template: Any, count: int) -> None:
    async def one(n: int) -> None:
        await backend.register(template.replace(instance_id=n + 1), lease)

    await run_bounded(count, 64, one)


async def keepalive_cost(target: Target, endpoint_counts: Sequence[int], ttl: float) -> Figures:
    """Keep-alive requests per second from one runtime holding 1, 100, 1,000 endpoints.

    Counted by the server where it keeps a count (etcd: gRPC messages received; NATS: messages in),
    else as calls to the backend's ``keep_alive``. Only this runtime talks to the server meanwhile.
    """
    window = 3 * ttl
    figures: Figures = {"ttl_s": ttl, "window_s": window}
    figures["counted"] = "server" if target.server_requests is not None else "keep_alive calls"
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
            await run_bounded(
                count, 64, lambda n, ns=ns: runtime.endpoint(f"{ns}.c.e{n}").register("tcp://127.0.0.1:1")
            )
            await anyio.sleep(ttl)  # let writes of the registrations settle out of the window
            calls = 0
            before = await target.server_requests() if target.server_requests is not None else 0
            await anyio.sleep(window)  # a measurement window, not a wait for a condition
            after = await target.server_requests() if target.server_requests is not None else calls
        await backend.aclose()
        figures[f"{count}_endpoints_req_per_s"] = round((after - before) / window, 2)
    return figures


class _Bell:
    """Rung by every watcher on every event; waiters re-check their condition after each ring."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def ring(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class _Watcher:
    """One watching runtime's view: which instance ids are present, and when each was seen leaving."""

    def __init__(self, bell: _Bell) -> None:
        self.present: set[int] = set()
        self.removed_at: dict[int, float] = {}
        self.bell = bell

    async def follow(self, source: Any) -> None:
        sub = source.subscribe()
        try:
            async for event in sub:  # ends when the runtime leaves
                now = time.perf_counter()
                if isinstance(event, Resync):
                    ids = {i.instance_id for i in event.instances}
                    for gone in self.present - ids:
                        self.removed_at[gone] = now
                    self.present = ids
                elif isinstance(event, Added):
                    self.present.add(event.instance.instance_id)
                elif isinstance(event, Removed):
                    self.present.discard(event.instance_id)
                    self.removed_at[event.instance_id] = now
                self.bell.ring()
        finally:
            source.unsubscribe(sub)


async def _until(views: list[_Watcher], done: Any, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not all(done(w) for w in views):
            await views[0].bell.wait()


async def failure_detection(
    target: Target, ttls: Sequence[float], workers: int, watchers: int, clean_rounds: int
) -> Figures:
    """SIGKILL workers (subprocesses): time until every watcher sees Removed, per TTL; and a clean exit.

    Each kill is timed from the SIGKILL to the last of ``watchers`` watching runtimes seeing that worker
    leave. Where workers cannot be processes (memory), the worker's runtime is abandoned in-process instead
    (keep-alives stop, nothing is revoked): the same thing for the store.
    """
    figures: Figures = {"workers": workers, "watchers": watchers}
    ns = _ns()
    async with AsyncExitStack() as stack:
        views: list[_Watcher] = []
        bell = _Bell()
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        for _ in range(watchers):
            runtime = await stack.enter_async_context(DistributedRuntime(target.new_backend(), lease_ttl=30))
            view = _Watcher(bell)
            views.append(view)
            tg.start_soon(view.follow, await runtime.instance_set(InstanceQuery(namespace=ns)))
        for ttl in ttls:
            if target.worker_env is not None:
                times = await _kill_processes(target, ns, ttl, workers, views)
                figures["crash"] = "SIGKILL of a worker process"
            elif target.key_value:
                times = await _abandon_runtimes(target, ns, ttl, workers, views)
                figures["crash"] = "in-process runtime abandoned"
            else:
                figures[f"ttl{ttl:g}_s"] = "n/a: no TTL (a pod leaves when it stops being ready)"
                continue
            figures[f"ttl{ttl:g}_p50_s"] = round(percentile(times, 50), 3)
            figures[f"ttl{ttl:g}_max_s"] = round(max(times), 3)
        clean: list[float] = []
        for round_ in range(clean_rounds):
            host = await RuntimeHost.start(DistributedRuntime(target.new_backend(), lease_ttl=30))
            instance = await host.runtime.endpoint(f"{ns}.c.clean{round_}").register("tcp://127.0.0.1:1")
            await _until(views, lambda w, i=instance.instance_id: i in w.present, 30)
            started = time.perf_counter()
            await host.stop()
            await _until(views, lambda w, i=instance.instance_id: i in w.removed_at, 30)
            clean.append(max(w.removed_at[instance.instance_id] for w in views) - started)
        figures["clean_p50_ms"] = _ms(percentile(clean, 50))
        figures["clean_max_ms"] = _ms(max(clean))
    return figures


async def _kill_processes(
    target: Target, ns: str, ttl: float, workers: int, views: list[_Watcher]
) -> list[float]:
    assert target.worker_env is not None
    env = {**os.environ, **target.worker_env}
    procs = []
    ids: list[int] = []
    try:
        for n in range(workers):
            procs.append(
                await anyio.open_process(
                    [sys.executable, "-m", "benchmarks.worker", f"{ns}.c.w{ttl:g}x{n}", str(ttl)],
                    env=env,
                    stderr=None,
                )
            )
        with anyio.fail_after(60):
            for proc in procs:
                assert proc.stdout is not None
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive(64)
                    line += chunk
                ids.append(int(line.split()[1], 16))
        await _until(views, lambda w: all(i in w.present for i in ids), 30)
        killed_at: dict[int, float] = {}
        for proc, instance_id in zip(procs, ids, strict=True):
            proc.send_signal(signal.SIGKILL)
            killed_at[instance_id] = time.perf_counter()
        await _until(views, lambda w: all(i in w.removed_at for i in ids), ttl * 2 + 15)
        return [max(w.removed_at[i] for w in views) - killed_at[i] for i in ids]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def _abandon_runtimes(
    target: Target, ns: str, ttl: float, workers: int, views: list[_Watcher]
) -> list[float]:
    hosts = []
    for n in range(workers):
        backend = CrashableBackend(target.new_backend())
        host = await RuntimeHost.start(DistributedRuntime(backend, lease_ttl=ttl))
        await host.runtime.endpoint(f"{ns}.c.w{ttl:g}x{n}").register("tcp://127.0.0.1:1")
        hosts.append(host)
    ids = [h.runtime.instance_id for h in hosts]
    await _until(views, lambda w: all(i in w.present for i in ids), 30)
    killed_at: dict[int, float] = {}
    for host, instance_id in zip(hosts, ids, strict=True):
        await host.crash()
        killed_at[instance_id] = time.perf_counter()
    await _until(views, lambda w: all(i in w.removed_at for i in ids), ttl * 2 + 15)
    return [max(w.removed_at[i] for w in views) - killed_at[i] for i in ids]
