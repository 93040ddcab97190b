"""``dyndisc doctor``: check the configured backend end to end and say what is wrong and how to fix it.

Checks, in order (a failed step that later steps depend on stops the run):

1. settings: the backend and its settings load;
2. Kubernetes only: credentials (who the API server says we are), the ``DynamoWorkerMetadata`` CRD is
   served, every right of the shipped Role is granted in the namespace, the API server's clock;
3. connectivity and auth: a list of every instance answers;
4. lease round trip: grant a short lease, renew it, measure the renewal;
5. access scope (etcd, NATS): who the credentials are, what they can read, which namespace they can write
   and whether they are kept out of the others, asked without writing anything;
6. watch round trip: a watch starts, sees a probe registration arrive and leave (in the namespace the
   credentials may write; with read-only credentials the watch alone);
7. clock skew hints: whether expiry depends on this host's clock, and how far off it is where measurable.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from dyndisc._errors import ConfigurationError, MissingExtraError
from dyndisc._events import Added, Removed, Resync
from dyndisc._models import Instance, InstanceQuery
from dyndisc._settings import canonical_backend_name
from dyndisc.backends import DiscoveryBackend, create_backend
from dyndisc.backends.base import Lease
from dyndisc.backends.diagnosis import BackendDoctor, Report, Status
from dyndisc.backends.kv import KvDiscovery
from dyndisc.backends.kv.scope_check import PROBE_NAMESPACE, check_scope
from dyndisc.cli.layouts import layout_hint

T = TypeVar("T")

#: Seconds a backend may take to answer its first call: the doctor reports an outage, it does not wait one.
STARTUP_WAIT = 5.0
#: The share of a check's time the backend's own first contact may take: it gives up (saying why: refused,
#: no route, TLS) before the check's deadline would cut it short without a cause.
STARTUP_SHARE = 0.8


def _failure(report: Report, doctor: BackendDoctor, name: str, exc: BaseException, timeout: float) -> None:
    if isinstance(exc, TimeoutError):
        report.add(name, Status.FAIL, f"no answer within {timeout:g}s", doctor.reach_fix)
    else:
        message = str(exc) or type(exc).__name__
        report.add(name, Status.FAIL, message, doctor.fix_for(message))


async def _timed(timeout: float, call: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    started = time.monotonic()
    with anyio.fail_after(timeout):
        result = await call()
    return result, time.monotonic() - started


async def run_doctor(
    backend: str | DiscoveryBackend | None = None,
    *,
    ttl: float = 2.0,
    timeout: float = 10.0,
    namespace: str | None = None,
) -> Report:
    """Run every check against ``backend`` (a name, default ``DYN_DISCOVERY_BACKEND``, or a backend);
    ``namespace`` is the one a worker's credentials must write (default: what they say, else none)."""
    if isinstance(backend, DiscoveryBackend):
        report = Report(backend.name)
        await _check_backend(report, backend, ttl, timeout, namespace)
        return report
    raw = backend if backend is not None else os.environ.get("DYN_DISCOVERY_BACKEND", "etcd")
    report = Report(raw)
    try:
        name = canonical_backend_name(raw)
        report.backend = name
        wait = min(timeout * STARTUP_SHARE, STARTUP_WAIT)
        made = create_backend(name, startup_timeout=wait, startup_timeout_name="the doctor's wait")
    except MissingExtraError as exc:
        report.add("settings", Status.FAIL, str(exc), exc.install)
        return report
    except ConfigurationError as exc:
        report.add("settings", Status.FAIL, str(exc), "fix the setting named above")
        return report
    report.add("settings", Status.OK, _describe(made))
    try:
        await _check_backend(report, made, ttl, timeout, namespace)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await made.aclose()
    return report


def _describe(backend: DiscoveryBackend) -> str:
    store = getattr(backend, "store", None)
    layout = getattr(backend, "layout", None)
    # A store's repr says where it is (etcd, NATS: URLs; file: its directory).
    where = f" {store!r}" if store is not None else ""
    keys = f", key layout {layout.name} under {layout.root}/" if layout is not None else ""
    return f"{backend.name} backend{where}{keys}"


async def _check_backend(
    report: Report, backend: DiscoveryBackend, ttl: float, timeout: float, namespace: str | None
) -> None:
    doctor = backend.doctor()
    if not await doctor.preflight(report, timeout):
        return
    try:
        found, took = await _timed(timeout, lambda: backend.list(InstanceQuery()))
    except Exception as exc:
        _failure(report, doctor, "connectivity", exc, timeout)
        return
    report.add("connectivity", Status.OK, f"listed {len(found)} live instance(s) in {took * 1000:.0f} ms")
    # Always, not only when nothing was found: workers split between layouts are worth a warning too.
    if (hint := await layout_hint(backend, InstanceQuery())) is not None:
        report.add("key layout", Status.WARN, hint.removeprefix("hint: "), hint.rsplit(": ", 1)[1])
    await doctor.check_server(report, timeout)

    lease = await _check_lease(report, doctor, backend, ttl, timeout)
    probe: tuple[str, bool] | None = None
    if isinstance(backend, KvDiscovery):
        probe = await check_scope(report, backend, namespace, timeout)
    try:
        await _check_watch(report, doctor, backend, lease, timeout, probe)
    finally:
        if lease is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
                await backend.revoke_lease(lease)
    await doctor.check_clock(report)


async def _check_lease(
    report: Report, doctor: BackendDoctor, backend: DiscoveryBackend, ttl: float, timeout: float
) -> Lease | None:
    name = "lease round trip"
    skipped = doctor.no_lease_reason()
    if skipped is not None:
        report.add(name, Status.SKIP, skipped)
        return None
    try:
        lease, granted = await _timed(timeout, lambda: backend.grant_lease(ttl))
    except Exception as exc:
        _failure(report, doctor, name, exc, timeout)
        return None
    try:
        left, renewed = await _timed(timeout, lambda: backend.keep_alive(lease))
    except Exception as exc:
        _failure(report, doctor, name, exc, timeout)
        return lease
    if left <= 0:
        report.add(name, Status.FAIL, f"the renewal of lease {lease.id:x} answered TTL {left}")
        return lease
    report.add(
        name,
        Status.OK,
        f"granted lease {lease.id:x} ({lease.ttl:g}s) in {granted * 1000:.0f} ms, renewed in "
        f"{renewed * 1000:.0f} ms ({left:g}s left)",
    )
    return lease


async def _check_watch(
    report: Report,
    doctor: BackendDoctor,
    backend: DiscoveryBackend,
    lease: Lease | None,
    timeout: float,
    probe: tuple[str, bool] | None,
) -> None:
    """``probe``: the namespace the scope check found (and whether the credentials may register there)."""
    name = "watch round trip"
    namespace, writable = probe if probe is not None else (PROBE_NAMESPACE, True)
    # In a worker's own namespace the probe's component says whose it is; watchers of the namespace
    # may see it come and go.
    kind = "probe" if namespace == PROBE_NAMESPACE else "dyndisc-doctor-probe"
    component = f"{kind}-{secrets.token_hex(4)}"
    query = InstanceQuery(namespace=namespace, component=component)
    try:
        with anyio.fail_after(timeout):
            started = time.monotonic()
            async with backend.watch(query) as events:
                first = await anext(events)
                if not isinstance(first, Resync):
                    report.add(name, Status.FAIL, f"the first event was {first.type}, not resync")
                    return
                ready = time.monotonic() - started
                if lease is None:
                    report.add(name, Status.OK, f"watch established in {ready * 1000:.0f} ms")
                    return
                if not writable:
                    report.add(
                        name,
                        Status.OK,
                        f"watch established in {ready * 1000:.0f} ms; no registration round trip: these "
                        f"credentials may not write namespace {namespace!r}",
                    )
                    return
                instance = Instance(
                    namespace=namespace,
                    component=component,
                    endpoint="check",
                    instance_id=lease.id,
                    transport="tcp://doctor.invalid:1",
                )
                sent = time.monotonic()
                await backend.register(instance, lease)
                async for event in events:
                    if isinstance(event, Added) and event.instance.key == instance.key:
                        break
                added = time.monotonic() - sent
                sent = time.monotonic()
                await backend.unregister(instance)
                async for event in events:
                    if isinstance(event, Removed) and event.key == instance.key:
                        break
                removed = time.monotonic() - sent
    except Exception as exc:
        _failure(report, doctor, name, exc, timeout)
        return
    report.add(
        name,
        Status.OK,
        f"watch established in {ready * 1000:.0f} ms; a registration arrived in {added * 1000:.0f} ms "
        f"and its removal in {removed * 1000:.0f} ms",
    )


__all__ = ["run_doctor"]
