"""Many watchers through etcd's own fan-out: each its own connection, directly and through etcd's grpc-proxy.

    python -m benchmarks.fanout [--watchers 200] [--instances 10000] [--big-watchers 20]
                                [--big-instances 100000] [--processes 8] [--proxies 1] [--rounds 20]
                                [--idle 10] [--runs 3] [--modes direct,proxy] [--request-timeout S]
                                [--json out.json] [--quick]
    python -m benchmarks.fanout --report out.json      # the markdown tables of docs/performance.md

One etcd holds two endpoints: ``--instances`` instances of one, ``--big-instances`` of the other. Watchers
run in ``--processes`` worker processes (several per process, each with a store and a gRPC connection of its
own, so etcd sees one client per watcher, as it would from separate frontends). Each watcher is what a
frontend holds: a ``DistributedRuntime`` (its lease and keep-alive included) and a ``Client`` of the
endpoint. The raw limit, in the same worker processes: aetcd's generated stubs doing the least etcd allows,
a ``Range`` of the prefix into a dict of bytes and a ``Watch`` from the revision it read.

For each mode (``direct``: every watcher dials etcd; ``proxy``: every watcher dials one of ``--proxies``
``etcd grpc-proxy`` processes, which dial etcd) and each side (ours, raw), every run measures:

* **tier restart**: ``--watchers`` watchers start at once on the ``--instances`` endpoint (the worker
  processes are up with their imports done; the clock starts when they are told to go). Time until every
  watcher holds every instance (the last; and the median watcher), etcd's peak memory (``VmHWM``: etcd is
  restarted on its data before each measurement, so the peak is this one's), its requests (gRPC calls
  started, from its ``/metrics``) and their rate (over the whole sync, and the peak over 0.5 s windows), the
  calls that failed (timed out and retried), the bytes it sent. Then the same with ``--big-watchers``
  watchers on the ``--big-instances`` endpoint.
* **steady state**, the ``--watchers`` watchers still running: etcd's watches and watch streams (its
  ``etcd_debugging_mvcc_watcher_total`` / ``..._watch_stream_total``), TCP connections to it, its CPU and
  memory over ``--idle`` seconds with nothing changing, the proxy's; then ``--rounds`` changes (a new
  instance each, under a lease of its own, written straight to etcd by this process), each timed from the
  write to the last watcher seeing it (convergence), and etcd's CPU per change; then as many departures (each
  of those leases revoked, with no marker: every watcher asks etcd why it ended), timed the same, with etcd's
  calls and CPU per departure. Watchers stamp what they see with ``time.monotonic()`` (one clock for every
  process on Linux) and report it over a pipe.

Figures are medians of the runs; each ratio (ours / raw) is the median of the runs' own ratios. etcd, the
proxies and the workers share the machine: the workers run ``WORKER_NICE`` levels below etcd and the
proxies, and the whole benchmark belongs under ``nice`` on a shared machine. Every server and worker is
stopped when the run ends, fails or is interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream

NAMESPACE, COMPONENT = "fanout", "c"
SMALL, BIG = "small", "big"
#: Instance ids of the changes written in the steady state: above every seeded one.
ROUND_BASE = 0x10000000
#: etcd's default limit of operations in one transaction (``--max-txn-ops``).
TXN_OPS = 128
#: How much lower the worker processes run than etcd and the proxies: on one machine, watchers decoding their
#: snapshots would otherwise starve the servers being measured, which separate hosts would not.
WORKER_NICE = 5
#: Every watcher's own gRPC connection: without this, gRPC shares one connection between the channels of a
#: process that dial the same address (its global subchannel pool), and etcd would see a few clients.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
MAX_RECEIVE = ("grpc.max_receive_message_length", 2**31 - 1)
Figures = dict[str, Any]
#: Where ``python -m benchmarks.fanout`` finds this module: the workers start there.
ROOT = Path(__file__).resolve().parent.parent

QUICK: dict[str, Any] = {
    "watchers": 6,
    "instances": 300,
    "big_watchers": 2,
    "big_instances": 1000,
    "processes": 1,
    "rounds": 3,
    "gap": 0.02,
    "idle": 0.2,
    "runs": 1,
}
FULL: dict[str, Any] = {
    "watchers": 200,
    "instances": 10_000,
    "big_watchers": 20,
    "big_instances": 100_000,
    "processes": 8,
    "rounds": 20,
    "gap": 0.1,
    "idle": 10.0,
    "runs": 3,
}


def prefix(endpoint: str) -> str:
    """The key prefix of one endpoint's instances."""
    return f"/services/{NAMESPACE}/{COMPONENT}/{endpoint}/"


def _address(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


# -- the worker processes ---------------------------------------------------------------------------------
def _report(*fields: object) -> None:
    print(*fields, flush=True)


async def _ours(index: int, url: str, endpoint: str, expected: int) -> None:
    """A frontend: a runtime of its own and a client of the endpoint; reports when it holds every instance,
    then every change it sees."""
    from dyndisc import BackendUnavailableError, DistributedRuntime, InstanceNotFoundError, KvDiscovery
    from dyndisc.backends.etcd import EtcdSettings, EtcdStore

    settings = EtcdSettings.load(endpoints=url)
    async with DistributedRuntime(KvDiscovery(EtcdStore(settings))) as runtime:
        handle = runtime.endpoint(f"{NAMESPACE}.{COMPONENT}.{endpoint}")
        while True:
            try:
                client = await handle.client()
                break
            except BackendUnavailableError as exc:  # as a frontend would, ask again
                _report("retry", index, str(exc).replace("\n", " ")[:200])
        await client.wait_for(expected)
        _report("synced", index, time.monotonic())
        seen = gone = 0  # the changes seen; of them, those gone again (in order)

        def live(round_: int) -> bool:
            try:
                client.direct(ROUND_BASE + round_)
            except InstanceNotFoundError:
                return False
            return True

        while True:
            while live(seen):
                _report("seen", index, seen, time.monotonic())
                seen += 1
            while gone < seen and not live(gone):
                _report("gone", index, gone, time.monotonic())
                gone += 1
            await client.wait_changed()


async def _raw(index: int, url: str, endpoint: str, expected: int) -> None:
    """The raw limit: one ``Range`` into a dict of bytes, one ``Watch`` from its revision, on a connection of
    its own; reports the same as :func:`_ours`."""
    from aetcd import rpc
    from aetcd.utils import prefix_range_end

    channel = rpc.insecure_channel(_address(url), options=[MAX_RECEIVE, OWN_CONNECTION])
    kv, watch = rpc.KVStub(channel), rpc.WatchStub(channel)
    key = prefix(endpoint).encode()
    call = None
    try:
        reply = await kv.Range(rpc.RangeRequest(key=key, range_end=prefix_range_end(key)))
        items = {bytes(item.key): bytes(item.value) for item in reply.kvs}
        call = watch.Watch()
        create = rpc.WatchCreateRequest(
            key=key, range_end=prefix_range_end(key), start_revision=reply.header.revision + 1
        )
        await call.write(rpc.WatchRequest(create_request=create))
        assert (await call.read()).created
        assert len(items) >= expected, (len(items), expected)
        _report("synced", index, time.monotonic())
        while True:
            answer = await call.read()
            for event in answer.events:
                number = int(event.kv.key[len(key) :], 16)
                if event.type != 0:  # a delete
                    items.pop(bytes(event.kv.key), None)
                else:
                    items[bytes(event.kv.key)] = bytes(event.kv.value)
                if number >= ROUND_BASE:
                    seen = "seen" if event.type == 0 else "gone"
                    _report(seen, index, number - ROUND_BASE, time.monotonic())
    finally:
        if call is not None:
            call.cancel()
        await channel.close()


async def _worker(side: str, url: str, endpoint: str, expected: int, first: int, count: int) -> None:
    """``count`` watchers (``first``, ...): "ready" once imported, start on "go", stop at the end of stdin."""
    os.nice(WORKER_NICE)
    # Imported before "ready": the clock starts at "go".
    import aetcd.rpc  # noqa: F401

    if side == "ours":
        import dyndisc  # noqa: F401
        from dyndisc.backends.etcd import connection

        connection._CHANNEL_OPTIONS = (*connection._CHANNEL_OPTIONS, OWN_CONNECTION)  # see OWN_CONNECTION
    run = _ours if side == "ours" else _raw
    _report("ready")
    if (await anyio.to_thread.run_sync(sys.stdin.readline)).strip() != "go":
        return

    async def one(index: int) -> None:
        try:
            await run(index, url, endpoint, expected)
        except Exception as exc:
            _report("error", index, f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300])

    async with anyio.create_task_group() as tg:
        for index in range(first, first + count):
            tg.start_soon(one, index)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the coordinator closes our stdin
        tg.cancel_scope.cancel()


# -- what etcd says about itself ----------------------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$", re.MULTILINE)


def _metrics(url: str, path: str = "/metrics") -> dict[str, float]:
    """The counters this benchmark reports, from etcd's ``/metrics`` (a proxy's own: ``/proxy/metrics``)."""
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as answer:
        text = answer.read().decode()
    found = {
        "requests": 0.0,
        "messages_in": 0.0,
        "failed": 0.0,
        "ranges": 0.0,
        "sent_bytes": 0.0,
        "watchers": 0.0,
        "watch_streams": 0.0,
    }
    for name, labels, value in _SAMPLE.findall(text):
        number = float(value)
        if name == "grpc_server_started_total":
            found["requests"] += number
            if 'grpc_method="Range"' in (labels or ""):
                found["ranges"] += number
        elif name == "grpc_server_msg_received_total":
            found["messages_in"] += number
        elif name == "grpc_server_handled_total" and 'grpc_code="OK"' not in (labels or ""):
            found["failed"] += number
        elif name == "etcd_network_client_grpc_sent_bytes_total":
            found["sent_bytes"] += number
        elif name == "etcd_debugging_mvcc_watcher_total":
            found["watchers"] = number
        elif name == "etcd_debugging_mvcc_watch_stream_total":
            found["watch_streams"] = number
    return found


def _status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (the peak resident set) of a process, bytes."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0]) * 1024
    return found


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connections(port: int) -> int:
    """Established TCP connections to ``port`` on this host (IPv4)."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "01":
                count += 1
    return count


def _mib(size: float) -> float:
    return round(size / 2**20, 1)


# -- the coordinator ----------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the watchers reported: when each synced, when each saw each change, retries and errors."""

    ready: int = 0
    synced: dict[int, float] = field(default_factory=dict)
    seen: dict[int, dict[int, float]] = field(default_factory=dict)
    gone: dict[int, dict[int, float]] = field(default_factory=dict)
    retries: int = 0
    #: Why the first watcher that had to ask again was refused.
    first_retry: str = ""
    errors: list[str] = field(default_factory=list)

    def take(self, line: str) -> None:
        kind, *rest = line.split(" ", 3)
        if kind == "ready":
            self.ready += 1
        elif kind == "synced":
            self.synced[int(rest[0])] = float(rest[1])
        elif kind in ("seen", "gone"):
            found = self.seen if kind == "seen" else self.gone
            found.setdefault(int(rest[1]), {})[int(rest[0])] = float(rest[2])
        elif kind == "retry":
            self.retries += 1
            self.first_retry = self.first_retry or " ".join(rest[1:])
        elif kind == "error":
            self.errors.append(" ".join(rest))


async def _wait(check: Callable[[], bool], timeout: float, tally: Tally, what: str) -> bool:
    """Sample ``check`` until it holds (True) or ``timeout`` passes (False); a watcher's error stops it."""
    with anyio.move_on_after(timeout):
        while not check():  # sampling: the figures come from the watchers' own timestamps
            if tally.errors:
                raise RuntimeError(f"{what}: a watcher failed: {tally.errors[0]}")
            await anyio.sleep(0.01)
        return True
    return False


@contextlib.asynccontextmanager
async def _workers(
    side: str, urls: list[str], endpoint: str, expected: int, watchers: int, processes: int, log: Path
) -> AsyncIterator[tuple[list[anyio.abc.Process], Tally]]:
    """The worker processes, started (not yet told to go) and read by a task each; always stopped after."""
    tally = Tally()
    processes = max(1, min(processes, watchers))
    shares = [watchers // processes + (1 if p < watchers % processes else 0) for p in range(processes)]
    procs: list[anyio.abc.Process] = []
    with open(log, "ab") as errors:  # noqa: ASYNC230 - the workers' stderr, opened once
        try:
            first = 0
            for p, share in enumerate(shares):
                argv = [sys.executable, "-m", "benchmarks.fanout", "--worker", side, urls[p % len(urls)]]
                argv += [endpoint, str(expected), str(first), str(share)]
                procs.append(await anyio.open_process(argv, stderr=errors, cwd=ROOT))
                first += share

            async def read(proc: anyio.abc.Process) -> None:
                assert proc.stdout is not None
                lines = BufferedByteReceiveStream(proc.stdout)
                with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
                    while True:
                        tally.take((await lines.receive_until(b"\n", 1 << 16)).decode())

            async with anyio.create_task_group() as tg:
                for proc in procs:
                    tg.start_soon(read, proc)
                yield procs, tally
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for proc in procs:
                    if proc.stdin is not None:
                        with contextlib.suppress(Exception):
                            await proc.stdin.aclose()
                for proc in procs:
                    with anyio.move_on_after(15):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()


@contextlib.asynccontextmanager
async def _etcd_kv(url: str) -> AsyncIterator[Any]:
    """aetcd's KV stub on a channel of its own to ``url`` (its ``lease`` stub beside it), connected before it
    is given (no timing pays for the connection), closed after."""
    from aetcd import rpc

    channel = rpc.insecure_channel(_address(url))
    try:
        kv = rpc.KVStub(channel)
        kv.lease = rpc.LeaseStub(channel)
        await kv.Range(rpc.RangeRequest(key=b"/warm-up"))
        yield kv
    finally:
        await channel.close()


async def _write(kv: Any, endpoint: str, numbers: range, delete: bool = False, lease: int = 0) -> None:
    """Write (or delete) instances ``numbers`` of ``endpoint`` as dyndisc writes them (under ``lease``),
    straight to etcd."""
    from aetcd import rpc

    from dyndisc import Instance

    limiter = anyio.CapacityLimiter(16)

    async def batch(start: int) -> None:
        ops = []
        for n in range(start, min(start + TXN_OPS, numbers.stop)):
            key = f"{prefix(endpoint)}{n:x}".encode()
            if delete:
                ops.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
                continue
            record = Instance(
                NAMESPACE, COMPONENT, endpoint, n, f"tcp://10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}:9"
            )
            put = rpc.PutRequest(key=key, value=record.to_json(), lease=lease)
            ops.append(rpc.RequestOp(request_put=put))
        async with limiter:
            await kv.Txn(rpc.TxnRequest(success=ops))

    async with anyio.create_task_group() as tg:
        for start in range(numbers.start, numbers.stop, TXN_OPS):
            tg.start_soon(batch, start)


async def _sample_rates(url: str, peak: list[float], interval: float = 0.5) -> None:
    """The highest rate of requests etcd started over any ``interval`` window, into ``peak[0]``."""
    last = await anyio.to_thread.run_sync(_metrics, url)
    when = time.monotonic()
    while True:
        await anyio.sleep(interval)
        now_counts = await anyio.to_thread.run_sync(_metrics, url)
        now = time.monotonic()
        peak[0] = max(peak[0], (now_counts["requests"] - last["requests"]) / (now - when))
        last, when = now_counts, now


async def phase(
    etcd: Any,
    mode: str,
    side: str,
    endpoint: str,
    expected: int,
    watchers: int,
    args: argparse.Namespace,
    steady: bool,
) -> Figures:
    """One tier restart of ``watchers`` watchers on ``endpoint`` (and, if ``steady``, the steady state
    after it): etcd restarted first, so its peak memory is this phase's."""
    from dyndisc.testing.servers.etcd_proxy import EtcdGrpcProxy

    log = Path(args.log_dir) / f"workers-{mode}-{side}-{endpoint}.log"
    async with contextlib.AsyncExitStack() as stack:
        # Ports now, the proxies' processes once etcd is back: the workers dial only when told to go.
        proxies = [EtcdGrpcProxy(etcd.endpoints) for _ in range(args.proxies if mode == "proxy" else 0)]
        for proxy in proxies:
            stack.callback(proxy.close)
        urls = [p.client_url for p in proxies] or [etcd.client_url]
        # The workers import while etcd restarts.
        procs, tally = await stack.enter_async_context(
            _workers(side, urls, endpoint, expected, watchers, args.processes, log)
        )
        await anyio.to_thread.run_sync(etcd.restart)
        for proxy in proxies:
            await anyio.to_thread.run_sync(proxy.start)
        if not await _wait(lambda: tally.ready == len(procs), 120, tally, "workers starting"):
            raise RuntimeError(f"the workers did not start; see {log}")
        etcd_pid = etcd.pid
        rss_before = _status(etcd_pid)["VmRSS"]
        counts_before = await anyio.to_thread.run_sync(_metrics, etcd.client_url)
        cpu_before = _cpu(etcd_pid)
        proxy_before = [
            await anyio.to_thread.run_sync(_metrics, p.client_url, "/proxy/metrics") for p in proxies
        ]
        proxy_cpu_before = sum(_cpu(p.pid) for p in proxies)
        peak_rate = [0.0]
        async with anyio.create_task_group() as sampler:
            sampler.start_soon(_sample_rates, etcd.client_url, peak_rate)
            go = time.monotonic()
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.send(b"go\n")
            synced = await _wait(lambda: len(tally.synced) == watchers, args.timeout, tally, "syncing")
            sampler.cancel_scope.cancel()
        counts_after = await anyio.to_thread.run_sync(_metrics, etcd.client_url)
        if not synced:
            raise RuntimeError(
                f"{mode} {side}: {len(tally.synced)} of {watchers} watchers synced in {args.timeout} s"
            )
        last = max(tally.synced.values()) - go
        figures: Figures = {
            "watchers": watchers,
            "instances": expected,
            "sync_all_s": round(last, 3),
            "sync_median_s": round(statistics.median(t - go for t in tally.synced.values()), 3),
            "etcd_rss_before_mib": _mib(rss_before),
            "etcd_peak_rss_mib": _mib(_status(etcd_pid)["VmHWM"]),
            "etcd_peak_extra_mib": _mib(_status(etcd_pid)["VmHWM"] - rss_before),
            "etcd_cpu_sync_s": round(_cpu(etcd_pid) - cpu_before, 2),
            "etcd_requests": int(counts_after["requests"] - counts_before["requests"]),
            "etcd_requests_per_s": round((counts_after["requests"] - counts_before["requests"]) / last, 1),
            "etcd_peak_requests_per_s": round(peak_rate[0], 1),
            "etcd_ranges": int(counts_after["ranges"] - counts_before["ranges"]),
            "etcd_failed_requests": int(counts_after["failed"] - counts_before["failed"]),
            "etcd_sent_mib": _mib(counts_after["sent_bytes"] - counts_before["sent_bytes"]),
            "watcher_retries": tally.retries,
            "first_retry": tally.first_retry,
            "workers_rss_mib": _mib(sum(_status(p.pid)["VmRSS"] for p in procs)),
        }
        if proxies:
            proxy_after = [
                await anyio.to_thread.run_sync(_metrics, p.client_url, "/proxy/metrics") for p in proxies
            ]
            served = sum(
                a["requests"] - b["requests"] for a, b in zip(proxy_after, proxy_before, strict=True)
            )
            figures["proxy_requests"] = int(served)
            figures["proxy_cpu_sync_s"] = round(sum(_cpu(p.pid) for p in proxies) - proxy_cpu_before, 2)
            figures["proxy_peak_rss_mib"] = _mib(sum(_status(p.pid)["VmHWM"] for p in proxies))
        if steady:
            figures |= await _steady(etcd, proxies, tally, watchers, endpoint, args)
    return figures


async def _steady(
    etcd: Any, proxies: list[Any], tally: Tally, watchers: int, endpoint: str, args: argparse.Namespace
) -> Figures:
    """The synced watchers at rest, then ``args.rounds`` changes: etcd's (and the proxies') cost and the
    time for a change to reach every watcher."""
    await anyio.sleep(min(1.0, args.idle))  # the sync's last answers leave etcd's counters
    pids = [etcd.pid, *(p.pid for p in proxies)]
    cpu = [_cpu(pid) for pid in pids]
    counts = await anyio.to_thread.run_sync(_metrics, etcd.client_url)
    started = time.monotonic()
    await anyio.sleep(args.idle)  # a measurement window with nothing changing
    window = time.monotonic() - started
    idle_cpu = [_cpu(pid) - before for pid, before in zip(pids, cpu, strict=True)]
    idle_counts = await anyio.to_thread.run_sync(_metrics, etcd.client_url)
    figures: Figures = {
        "etcd_watchers": int(idle_counts["watchers"]),
        "etcd_watch_streams": int(idle_counts["watch_streams"]),
        "etcd_connections": _connections(etcd.client_port),
        "etcd_rss_mib": _mib(_status(etcd.pid)["VmRSS"]),
        "etcd_idle_cpu_pct": round(100 * idle_cpu[0] / window, 2),
        "etcd_idle_requests_per_s": round((idle_counts["messages_in"] - counts["messages_in"]) / window, 1),
    }
    if proxies:
        figures["proxy_rss_mib"] = _mib(sum(_status(p.pid)["VmRSS"] for p in proxies))
        figures["proxy_idle_cpu_pct"] = round(100 * sum(idle_cpu[1:]) / window, 2)
        figures["proxy_connections"] = sum(_connections(p.port) for p in proxies)
    from aetcd import rpc

    converged: list[float] = []
    latencies: list[float] = []
    departed: list[float] = []
    async with _etcd_kv(etcd.client_url) as kv:  # the writer: a worker registering, straight to etcd
        # Each change is a new instance under a lease of its own (granted outside the timing), as a new
        # worker's; revoking those leases afterwards is each one's departure.
        leases = [(await kv.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=600))).ID for _ in range(args.rounds)]
        cpu = [_cpu(pid) for pid in pids]
        for round_, lease in enumerate(leases):
            written = time.monotonic()
            await _write(kv, endpoint, range(ROUND_BASE + round_, ROUND_BASE + round_ + 1), lease=lease)
            seen = lambda round_=round_: len(tally.seen.get(round_, ())) == watchers  # noqa: E731
            if not await _wait(seen, 30, tally, "a change reaching every watcher"):
                raise RuntimeError(f"change {round_} reached {len(tally.seen.get(round_, ()))} of {watchers}")
            times = [t - written for t in tally.seen[round_].values()]
            converged.append(max(times))
            latencies += times
            await anyio.sleep(args.gap)  # between changes
        change_cpu = [_cpu(pid) - before for pid, before in zip(pids, cpu, strict=True)]
        cpu = [_cpu(pid) for pid in pids]
        calls = await anyio.to_thread.run_sync(_metrics, etcd.client_url)
        for round_, lease in enumerate(leases):
            revoked = time.monotonic()
            # A raw revoke leaves no marker: every watcher asks etcd why the lease ended (removal reasons).
            await kv.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease))
            gone = lambda round_=round_: len(tally.gone.get(round_, ())) == watchers  # noqa: E731
            if not await _wait(gone, 30, tally, "a departure reaching every watcher"):
                raise RuntimeError(
                    f"departure {round_} reached {len(tally.gone.get(round_, ()))} of {watchers}"
                )
            departed.append(max(t - revoked for t in tally.gone[round_].values()))
            await anyio.sleep(args.gap)
        departure_cpu = [_cpu(pid) - before for pid, before in zip(pids, cpu, strict=True)]
        after = await anyio.to_thread.run_sync(_metrics, etcd.client_url)
    figures |= {
        "rounds": args.rounds,
        "converge_median_ms": round(1000 * statistics.median(converged), 2),
        "converge_max_ms": round(1000 * max(converged), 2),
        "watcher_latency_median_ms": round(1000 * statistics.median(latencies), 2),
        "etcd_cpu_ms_per_change": round(1000 * change_cpu[0] / args.rounds, 2),
        "departure_median_ms": round(1000 * statistics.median(departed), 2),
        "departure_max_ms": round(1000 * max(departed), 2),
        "etcd_calls_per_departure": round((after["requests"] - calls["requests"]) / args.rounds, 1),
        "etcd_cpu_ms_per_departure": round(1000 * departure_cpu[0] / args.rounds, 2),
    }
    if proxies:
        figures["proxy_cpu_ms_per_change"] = round(1000 * sum(change_cpu[1:]) / args.rounds, 2)
        figures["proxy_cpu_ms_per_departure"] = round(1000 * sum(departure_cpu[1:]) / args.rounds, 2)
    return figures


#: Figures compared as ours / raw (every run's own ratio; the median of those is reported).
RATIOS = ("sync_all_s", "sync_median_s", "etcd_peak_rss_mib", "etcd_requests", "converge_median_ms")


async def measure(args: argparse.Namespace) -> tuple[dict[str, Any], list[Figures]]:
    """The medians (with ratios) by mode, endpoint and side; and every phase's own figures."""
    from dyndisc.testing.servers import EtcdServer

    modes = [m for m in args.modes.split(",") if m]
    samples: dict[tuple[str, str, str], list[Figures]] = {}
    every: list[Figures] = []
    # etcd's own raft timing: the tests' default ticks every 10 ms, which costs CPU this measures (and
    # restarts faster: the smoke run keeps it).
    with EtcdServer(election_ms=(10, 100) if args.quick else (100, 1000)) as etcd:
        async with _etcd_kv(etcd.client_url) as kv:
            await _write(kv, SMALL, range(1, args.instances + 1))
            if args.big_watchers:
                await _write(kv, BIG, range(1, args.big_instances + 1))
        for run in range(args.runs):
            # Alternate which mode and which side go first: the machine's load drifts.
            for mode in modes if run % 2 == 0 else modes[::-1]:
                sizes = [(SMALL, args.instances, args.watchers, True)]
                if args.big_watchers:
                    sizes.append((BIG, args.big_instances, args.big_watchers, False))
                for endpoint, instances, watchers, steady in sizes:
                    for side in ("ours", "raw") if run % 2 == 0 else ("raw", "ours"):
                        began = time.monotonic()
                        found = await phase(etcd, mode, side, endpoint, instances, watchers, args, steady)
                        found["phase_s"] = round(time.monotonic() - began, 1)
                        samples.setdefault((mode, endpoint, side), []).append(found)
                        every.append({"run": run, "mode": mode, "endpoint": endpoint, "side": side, **found})
                        print(json.dumps(every[-1]), file=sys.stderr, flush=True)
    results: dict[str, Any] = {}
    for (mode, endpoint, side), runs in samples.items():
        results.setdefault(mode, {}).setdefault(endpoint, {})[side] = _medians(runs)
    for mode, endpoints in results.items():
        for endpoint, sides in endpoints.items():
            ours, raw = samples.get((mode, endpoint, "ours")), samples.get((mode, endpoint, "raw"))
            if not (ours and raw):
                continue
            for name in RATIOS:
                ratios = [
                    o[name] / r[name] for o, r in zip(ours, raw, strict=True) if name in o and r.get(name)
                ]
                if ratios:
                    sides[f"ratio_{name}"] = round(statistics.median(ratios), 2)
    return results, every


def _medians(runs: list[Figures]) -> Figures:
    figures: Figures = {"runs": len(runs)}
    for name in runs[0]:
        values = [r[name] for r in runs if name in r]
        if isinstance(values[0], str):  # words: the first run's that has any
            figures[name] = next((v for v in values if v), "")
            continue
        median = statistics.median(values)
        figures[name] = round(median, 3) if isinstance(median, float) else median
    return figures


def print_table(results: dict[str, Any]) -> None:
    for mode, endpoints in results.items():
        for endpoint, sides in endpoints.items():
            print(f"\n## {mode}, {endpoint}")
            for side, figures in sides.items():
                if isinstance(figures, dict):
                    print(f"  {side:4s} " + "  ".join(f"{k}={v}" for k, v in figures.items()))
                else:
                    print(f"  {side}={figures}")


#: The rows of the markdown tables (``--report``): (figure, label), per table.
STEADY_ROWS = (
    ("etcd_watchers", "watches on etcd"),
    ("etcd_watch_streams", "watch streams on etcd"),
    ("etcd_connections", "TCP connections to etcd"),
    ("proxy_connections", "TCP connections to the proxy"),
    ("etcd_rss_mib", "etcd RSS, MiB"),
    ("etcd_idle_cpu_pct", "etcd CPU at rest, %"),
    ("etcd_idle_requests_per_s", "messages to etcd at rest, /s"),
    ("proxy_rss_mib", "proxy RSS, MiB"),
    ("proxy_idle_cpu_pct", "proxy CPU at rest, %"),
    ("converge_median_ms", "a change reaches all watchers, median ms"),
    ("converge_max_ms", "... slowest of the changes, ms"),
    ("watcher_latency_median_ms", "a change reaches one watcher, median ms"),
    ("etcd_cpu_ms_per_change", "etcd CPU per change, ms"),
    ("proxy_cpu_ms_per_change", "proxy CPU per change, ms"),
    ("departure_median_ms", "a lease revoked: its instance leaves all watchers, median ms"),
    ("departure_max_ms", "... slowest, ms"),
    ("etcd_calls_per_departure", "calls etcd started per departure"),
    ("etcd_cpu_ms_per_departure", "etcd CPU per departure, ms"),
    ("proxy_cpu_ms_per_departure", "proxy CPU per departure, ms"),
)
RESTART_ROWS = (
    ("sync_all_s", "every watcher synced, s"),
    ("sync_median_s", "median watcher synced, s"),
    ("etcd_peak_rss_mib", "etcd peak RSS, MiB"),
    ("etcd_peak_extra_mib", "... above its RSS before, MiB"),
    ("proxy_peak_rss_mib", "proxy peak RSS, MiB"),
    ("etcd_cpu_sync_s", "etcd CPU, s"),
    ("proxy_cpu_sync_s", "proxy CPU, s"),
    ("etcd_requests", "calls etcd started"),
    ("etcd_requests_per_s", "... per second (the whole sync)"),
    ("etcd_peak_requests_per_s", "... per second (busiest 0.5 s)"),
    ("etcd_ranges", "of them Range calls (ours list in pages)"),
    ("etcd_failed_requests", "calls etcd ended with an error"),
    ("watcher_retries", "watchers that had to ask again"),
    ("etcd_sent_mib", "sent by etcd, MiB"),
    ("workers_rss_mib", "the watchers' processes, RSS MiB"),
)


def markdown(results: dict[str, Any]) -> str:
    """The tables of the performance page: the steady state, then each tier restart; a column per mode and
    side, the ratio ours / raw beside."""
    columns = [(m, s) for m in ("direct", "proxy") if m in results for s in ("ours", "raw")]
    out = []
    for endpoint, rows, steady in (
        (SMALL, STEADY_ROWS, True),
        (SMALL, RESTART_ROWS, False),
        (BIG, RESTART_ROWS, False),
    ):
        present = [(m, s) for m, s in columns if s in results[m].get(endpoint, {})]
        if not present:
            continue
        first = results[present[0][0]][endpoint][present[0][1]]
        what = (
            f"at rest, then {first['rounds']} changes and as many departures"
            if steady
            else "a whole tier restarting at once"
        )
        out.append(f"\n{first['watchers']} watchers x {first['instances']:,} instances: {what}\n")
        names = {"direct": "direct", "proxy": "grpc-proxy"}
        out.append("| | " + " | ".join(f"{names[m]}: {s}" for m, s in present) + " |")
        out.append("|---" * (len(present) + 1) + "|")
        for figure, label in rows:
            cells = [results[m][endpoint][s].get(figure) for m, s in present]
            if all(c is None for c in cells):
                continue
            text = ["—" if c is None else f"{c:,}" if isinstance(c, int) else f"{c:g}" for c in cells]
            out.append(f"| {label} | " + " | ".join(text) + " |")
        ratios = [
            f"{names[m]} {results[m][endpoint][f'ratio_{f}']}"
            for m in dict.fromkeys(m for m, _ in present)
            for f in (("converge_median_ms",) if steady else ("sync_all_s",))
            if f"ratio_{f}" in results[m][endpoint]
        ]
        if ratios:
            out.append(
                f"\nours / raw ({'convergence' if steady else 'every watcher synced'}): {', '.join(ratios)}"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run: a smoke run (seconds)")
    for name, default in FULL.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, type=type(default), default=None, help=f"default {default} (quick: {QUICK[name]})"
        )
    parser.add_argument("--modes", default="direct,proxy", help="comma-separated: direct, proxy")
    parser.add_argument("--proxies", type=int, default=1, help="grpc-proxies in proxy mode (watchers spread)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a tier may take to sync")
    parser.add_argument(
        "--request-timeout",
        type=float,
        help="ETCD_REQUEST_TIMEOUT_SECONDS of our watchers (default: the library's, 5 s)",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--report", metavar="JSON", help="print the markdown tables of a run's results")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as given:
            print(markdown(json.load(given)["results"]))
        return
    if args.worker:
        side, url, endpoint, expected, first, count = args.worker
        anyio.run(_worker, side, url, endpoint, int(expected), int(first), int(count))
        return
    for name, default in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.request_timeout is not None:  # the workers' settings come from their environment
        os.environ["ETCD_REQUEST_TIMEOUT_SECONDS"] = str(args.request_timeout)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dyndisc-fanout-") as logs:
        args.log_dir = logs
        try:
            results, every = anyio.run(measure, args)
        except BaseException:
            for log in sorted(Path(logs).glob("*.log")):
                sys.stderr.write(f"--- {log.name}\n{log.read_text()[-3000:]}\n")
            raise
    meta = {
        "command": " ".join(
            ["python", "-m", "benchmarks.fanout", *(argv if argv is not None else sys.argv[1:])]
        ),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1),
        "sizes": {name: getattr(args, name) for name in FULL}
        | {"proxies": args.proxies, "request_timeout": args.request_timeout},
    }
    print_table(results)
    print(f"\n{meta}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"meta": meta, "results": results, "runs": every}, out, indent=2)


if __name__ == "__main__":
    main()
