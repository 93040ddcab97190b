"""The keep-alive loop: hold one lease open, and let only the server say that it is lost.

A renewal that gets no answer (the server is down, an election, a partition) is an outage, not a loss: the
loop keeps renewing the same lease, a jittered second or less apart, until the server answers. etcd restores
its leases with a fresh TTL when it comes back, so an outage of any length ends with the same lease, the
same instance id and no re-registration. Only when the server answers that it no longer knows the lease
(it expired there, or someone revoked it) is the lease lost. A permanent error (refused credentials, denied
access, a bug) stops the loop at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import anyio

from dyndisc._concurrency import Wake
from dyndisc._errors import AccessDeniedError, BackendUnavailableError, ConfigurationError, LeaseNotFoundError
from dyndisc._health import HealthRecorder
from dyndisc._metrics import metrics
from dyndisc._retry import Backoff
from dyndisc.backends.base import DiscoveryBackend, Lease

log = logging.getLogger("dyndisc.lease")

T = TypeVar("T")

#: Backoff between renewals during an outage: capped at a second, so the lease is renewed within about a
#: second of the server answering again, and a fleet's retries are spread out (full jitter).
OUTAGE_RETRY_MIN, OUTAGE_RETRY_MAX = 0.05, 1.0
#: Seconds after which a renewal that neither succeeded nor failed is given up as an outage.
HUNG_RENEWAL = 30.0
#: Seconds between log lines while an outage lasts (the first failure is logged at once).
OUTAGE_LOG_EVERY = 30.0
#: Seconds a clean exit may spend revoking the lease (retried within it) before leaving it to expire.
REVOKE_BUDGET = 5.0


@dataclass(frozen=True)
class LeaseChange:
    """Told to ``on_lease_change`` after the runtime replaced a lost lease and re-registered its endpoints."""

    old_instance_id: int
    new_instance_id: int
    reason: str


class LeaseLost(Exception):
    """Internal: the server said the lease is gone; carries why."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the server could not be asked (ride it out), rather than that it refused us or
    that something is wrong here (stop)."""
    if isinstance(exc, AccessDeniedError | ConfigurationError | PermissionError):
        return False
    return isinstance(exc, BackendUnavailableError | OSError | TimeoutError)


async def keep_lease_alive(
    backend: DiscoveryBackend,
    lease: Lease,
    health: HealthRecorder,
    renew_now: Wake,
    clock: Callable[[], float] = anyio.current_time,
) -> NoReturn:
    """Renew ``lease`` until cancelled, at half the TTL the server answered (as the reference runtime does).

    Raises :class:`LeaseLost` once the server says the lease is gone; a permanent error propagates as itself;
    an outage is retried for as long as it lasts. ``renew_now`` asks for a renewal at once (a registration
    found the lease gone: the server is asked, not believed on hearsay).
    """
    recorder = metrics()
    backoff = Backoff(OUTAGE_RETRY_MIN, OUTAGE_RETRY_MAX)
    ttl = lease.ttl
    next_renewal = clock() + ttl / 2
    outage_started: float | None = None
    last_logged = 0.0
    while True:
        with anyio.move_on_after(max(next_renewal - clock(), 0.0)):
            await renew_now.wait()
        renew_now.clear()
        started = clock()
        try:
            # Backends bound their own calls; this only catches one that hangs for good (an outage too).
            with anyio.fail_after(HUNG_RENEWAL):
                answered = await backend.keep_alive(lease)
        except LeaseNotFoundError as exc:
            raise LeaseLost(str(exc)) from exc
        except Exception as exc:
            if not is_outage(exc):
                raise
            now = clock()
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            recorder.keep_alive_failed(backend.name)
            health.outage(reason)
            delay = backoff.next_delay()
            if outage_started is None:
                outage_started = last_logged = now
                log.warning(
                    "keep-alive of lease %x got no answer (%s); keeping the lease and retrying (the server "
                    "decides when it is lost)",
                    lease.id,
                    reason,
                )
            elif now - last_logged >= OUTAGE_LOG_EVERY:
                last_logged = now
                log.warning(
                    "keep-alive of lease %x: still no answer after %.0fs (%s)",
                    lease.id,
                    now - outage_started,
                    reason,
                )
            next_renewal = now + delay
            continue
        if answered <= 0:
            raise LeaseLost(f"lease {lease.id:x} expired or was revoked (the server answered TTL {answered})")
        if outage_started is not None:
            log.warning("lease %x renewed after %.1fs without an answer", lease.id, clock() - outage_started)
            outage_started = None
        ttl = answered
        backoff.reset()
        health.renewed(answered)
        if recorder.enabled:
            recorder.keep_alive_succeeded(backend.name, clock() - started)
        next_renewal = started + answered / 2
        log.debug("lease %x renewed: %.2fs left", lease.id, answered)


async def ride_out_outages(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Call ``attempt`` until it succeeds, retrying outages (and a lease found gone) with backoff; a
    permanent error propagates."""
    backoff = Backoff(OUTAGE_RETRY_MIN, OUTAGE_RETRY_MAX)
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not (is_outage(exc) or isinstance(exc, LeaseNotFoundError)):
                raise
            delay = backoff.next_delay()
            log.warning("%s failed (%s: %s); retrying in %.2fs", what, type(exc).__name__, exc, delay)
            await anyio.sleep(delay)


async def revoke_on_exit(backend: DiscoveryBackend, lease: Lease, registrations: int) -> bool:
    """Revoke ``lease`` on a clean exit, retrying outages within :data:`REVOKE_BUDGET` (shielded from the
    exit's cancellation); if it cannot, say at WARNING what stays behind and for how long. Whether it did."""
    backoff = Backoff(OUTAGE_RETRY_MIN, OUTAGE_RETRY_MAX)
    error: BaseException | None = None
    with anyio.CancelScope(shield=True), anyio.move_on_after(REVOKE_BUDGET):
        while True:
            try:
                with anyio.fail_after(max(REVOKE_BUDGET / 4, 0.5)):
                    await backend.revoke_lease(lease)
            except Exception as exc:
                error = exc
                if not is_outage(exc):
                    break
                await backoff.sleep()
            else:
                log.info("revoked lease %x: every registration of this runtime is gone", lease.id)
                return True
    why = f"{type(error).__name__}: {error}" if error is not None else "no answer"
    log.warning(
        "could not revoke lease %x within %gs (%s): its %d registrations stay visible until %s expires the "
        "lease, within %gs",
        lease.id,
        REVOKE_BUDGET,
        why,
        registrations,
        backend.name,
        lease.ttl,
    )
    return False
