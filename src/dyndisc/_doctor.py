"""``dyndisc doctor``: check the configured backend end to end and say what is wrong and how to fix it.

Checks, in order (a failed step that later steps depend on stops the run):

1. settings: the backend and its settings load;
2. Kubernetes only: credentials (who the API server says we are), the ``DynamoWorkerMetadata`` CRD is
   served, every right of the shipped Role is granted in the namespace, the API server's clock;
3. connectivity and auth: a list of every instance answers;
4. lease round trip: grant a short lease, renew it, measure the renewal;
5. watch round trip: a watch starts, sees a probe registration arrive and leave;
6. clock skew hints: whether expiry depends on this host's clock, and how far off it is where measurable.
"""

from __future__ import annotations

import enum
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio

from dyndisc._errors import ConfigurationError
from dyndisc._models import Added, Instance, InstanceQuery, Removed, Resync
from dyndisc._settings import canonical_backend_name
from dyndisc.backends import DiscoveryBackend, create_backend
from dyndisc.backends.base import Lease

T = TypeVar("T")

#: Namespace of the probe registration of the watch round trip (never a real workload's).
PROBE_NAMESPACE = "dyndisc-doctor"
#: Clock difference from which a skew is reported.
SKEW_WARNING = 1.0


class Status(enum.StrEnum):
    """The outcome of one check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass
class Check:
    """One line of the report: what was checked, how it went, and what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class Report:
    """Every check of one ``doctor`` run."""

    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return all(c.status is not Status.FAIL for c in self.checks)

    def add(self, name: str, status: Status, detail: str, fix: str | None = None) -> Check:
        """Record a check and return it."""
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check

    def find(self, name: str) -> Check | None:
        """The check called ``name``, if it ran."""
        return next((c for c in self.checks if c.name == name), None)

    def render(self) -> str:
        """The human-readable report."""
        lines = [f"dyndisc doctor: {self.backend} backend"]
        for c in self.checks:
            lines.append(f"[{c.status.value:^4}] {c.name}: {c.detail}")
            if c.fix:
                lines.append(f"       fix: {c.fix}")
        failed = sum(c.status is Status.FAIL for c in self.checks)
        warned = sum(c.status is Status.WARN for c in self.checks)
        lines.append(
            "all checks passed" if not failed and not warned else f"{failed} failed, {warned} warning(s)"
        )
        return "\n".join(lines)


# -- fixes for the errors backends raise --------------------------------------------------------------------
_FIXES: tuple[tuple[str, str], ...] = (
    (
        "refused the password",
        "set ETCD_AUTH_USERNAME / ETCD_AUTH_PASSWORD to a user etcd knows; an admin can reset it with "
        "'etcdctl user passwd <user>'",
    ),
    ("requires authentication", "etcd has auth enabled: set ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD"),
    (
        "denied user",
        "grant the user's role readwrite on the key prefix: 'etcdctl role grant-permission <role> "
        "--prefix=true readwrite /services/' (and v1/instances/ for DYN_KV_LAYOUT=dynamo-v1)",
    ),
    ("TLS handshake", "check ETCD_AUTH_CA (the CA of the server) and ETCD_AUTH_CLIENT_CERT / _KEY"),
    ("Authorization Violation", "check NATS_AUTH_* / the credentials of NATS_SERVER"),
    ("rejected our credentials", "the Kubernetes token is missing, wrong or expired: refresh KUBECONFIG"),
    ("forbidden", "dyndisc kube manifests --namespace <namespace> | kubectl apply -f -"),
    (
        "did not answer",
        "start etcd or point ETCD_ENDPOINTS at it; check firewalls between this host and the server",
    ),
    (
        "unreachable",
        "start the server or point the backend at it (ETCD_ENDPOINTS, NATS_SERVER, KUBECONFIG)",
    ),
)


def fix_for(message: str) -> str | None:
    """The fix for a backend error message, when one is known."""
    return next((fix for pattern, fix in _FIXES if pattern in message), None)


def _failure(report: Report, name: str, exc: BaseException, timeout: float) -> None:
    if isinstance(exc, TimeoutError):
        report.add(
            name,
            Status.FAIL,
            f"no answer within {timeout:g}s",
            "check that the server is up and reachable from here (ETCD_ENDPOINTS, NATS_SERVER, KUBECONFIG)",
        )
    else:
        message = str(exc) or type(exc).__name__
        report.add(name, Status.FAIL, message, fix_for(message))


async def _timed(timeout: float, call: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    started = time.monotonic()
    with anyio.fail_after(timeout):
        result = await call()
    return result, time.monotonic() - started


def _make_backend(name: str, timeout: float) -> DiscoveryBackend:
    """The backend from the environment, with startup waits shortened so an outage shows at once."""
    if name == "etcd":
        from dyndisc.backends.etcd import EtcdSettings, EtcdStore
        from dyndisc.backends.kv import KvDiscovery

        overrides: dict[str, Any] = {}
        if "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS" not in os.environ:
            overrides["startup_connect_timeout_seconds"] = min(timeout, 5.0)
        return KvDiscovery(EtcdStore(EtcdSettings.load(**overrides)))
    return create_backend(name)


async def run_doctor(
    backend: str | DiscoveryBackend | None = None, *, ttl: float = 2.0, timeout: float = 10.0
) -> Report:
    """Run every check against ``backend`` (a name, default ``DYN_DISCOVERY_BACKEND``, or a backend)."""
    if isinstance(backend, DiscoveryBackend):
        report = Report(backend.name)
        await _check_backend(report, backend, ttl, timeout)
        return report
    raw = backend if backend is not None else os.environ.get("DYN_DISCOVERY_BACKEND", "etcd")
    report = Report(raw)
    try:
        name = canonical_backend_name(raw)
        report.backend = name
        made = _make_backend(name, timeout)
    except ConfigurationError as exc:
        report.add("settings", Status.FAIL, str(exc), fix_for(str(exc)) or "fix the setting named above")
        return report
    report.add("settings", Status.OK, _describe(made))
    try:
        await _check_backend(report, made, ttl, timeout)
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


async def _check_backend(report: Report, backend: DiscoveryBackend, ttl: float, timeout: float) -> None:
    from_kube = backend.name == "kubernetes"
    if from_kube:
        from dyndisc._doctor_kube import check_kubernetes

        if not await check_kubernetes(report, backend, timeout):
            return
    try:
        found, took = await _timed(timeout, lambda: backend.list(InstanceQuery()))
    except Exception as exc:
        _failure(report, "connectivity", exc, timeout)
        return
    report.add("connectivity", Status.OK, f"listed {len(found)} live instance(s) in {took * 1000:.0f} ms")

    lease = await _check_lease(report, backend, ttl, timeout)
    try:
        await _check_watch(report, backend, lease, timeout)
    finally:
        if lease is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
                await backend.revoke_lease(lease)
    if not from_kube:
        await _check_clock(report, backend)


async def _check_lease(report: Report, backend: DiscoveryBackend, ttl: float, timeout: float) -> Lease | None:
    name = "lease round trip"
    if (
        backend.name == "kubernetes"
        and getattr(backend, "identity", None) is None
        and not os.environ.get("POD_NAME")
    ):
        report.add(name, Status.SKIP, "no POD_NAME: this is not a worker pod, so it holds no lease")
        return None
    try:
        lease, granted = await _timed(timeout, lambda: backend.grant_lease(ttl))
    except Exception as exc:
        _failure(report, name, exc, timeout)
        return None
    try:
        left, renewed = await _timed(timeout, lambda: backend.keep_alive(lease))
    except Exception as exc:
        _failure(report, name, exc, timeout)
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
    report: Report, backend: DiscoveryBackend, lease: Lease | None, timeout: float
) -> None:
    name = "watch round trip"
    component = f"probe-{secrets.token_hex(4)}"
    query = InstanceQuery(namespace=PROBE_NAMESPACE, component=component)
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
                probe = Instance(
                    namespace=PROBE_NAMESPACE,
                    component=component,
                    endpoint="check",
                    instance_id=lease.id,
                    transport="tcp://doctor.invalid:1",
                )
                sent = time.monotonic()
                await backend.register(probe, lease)
                async for event in events:
                    if isinstance(event, Added) and event.instance.key == probe.key:
                        break
                added = time.monotonic() - sent
                sent = time.monotonic()
                await backend.unregister(probe)
                async for event in events:
                    if isinstance(event, Removed) and event.key == probe.key:
                        break
                removed = time.monotonic() - sent
    except Exception as exc:
        _failure(report, name, exc, timeout)
        return
    report.add(
        name,
        Status.OK,
        f"watch established in {ready * 1000:.0f} ms; a registration arrived in {added * 1000:.0f} ms "
        f"and its removal in {removed * 1000:.0f} ms",
    )


async def _check_clock(report: Report, backend: DiscoveryBackend) -> None:
    name = "clock"
    if backend.name in ("etcd", "nats"):
        report.add(
            name,
            Status.OK,
            f"{backend.name} times leases on the server: this host's clock does not affect expiry",
        )
        return
    if backend.name == "memory":
        report.add(name, Status.OK, "in-process leases: one clock")
        return
    store = getattr(backend, "store", None)
    root = getattr(store, "root", None)
    if backend.name == "file" and isinstance(root, Path):
        skew = await anyio.to_thread.run_sync(_file_clock_skew, root)
        detail = f"{root} stamps files {skew:+.2f}s from this host's clock"
        if abs(skew) >= SKEW_WARNING:
            report.add(
                name,
                Status.WARN,
                detail + "; file leases expire by mtime, so every host sharing it must agree",
                "synchronise the clocks of the hosts and the file server (chrony / NTP)",
            )
        else:
            report.add(name, Status.OK, detail)
        return
    report.add(name, Status.SKIP, f"no clock check for the {backend.name} backend")


def _file_clock_skew(root: Path) -> float:
    with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-") as probe:
        now = time.time()
        return os.fstat(probe.fileno()).st_mtime - now


def server_clock_skew(date_header: str | None) -> float | None:
    """Seconds the server's HTTP ``Date`` is ahead of this host (``None`` if absent or unreadable)."""
    if not date_header:
        return None
    try:
        return parsedate_to_datetime(date_header).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


__all__ = ["Check", "Report", "Status", "run_doctor"]
