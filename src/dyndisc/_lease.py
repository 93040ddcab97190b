"""The keep-alive loop: hold one lease open, renewing well before it expires."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from dyndisc._errors import LeaseNotFoundError
from dyndisc._metrics import metrics
from dyndisc._retry import Backoff
from dyndisc.backends.base import DiscoveryBackend, Lease

log = logging.getLogger("dyndisc.lease")

#: Retry backoff bounds after a failed renewal (always capped by half the time left).
RETRY_MIN, RETRY_MAX = 0.05, 2.0
#: Retry backoff bounds while granting a replacement lease.
REGRANT_MIN, REGRANT_MAX = 0.05, 5.0


@dataclass(frozen=True)
class LeaseChange:
    """Told to ``on_lease_change`` after the runtime replaced a lost lease and re-registered its endpoints."""

    old_instance_id: int
    new_instance_id: int
    reason: str


class LeaseExpired(Exception):
    """Internal: the lease could not be kept; carries why."""


async def keep_lease_alive(
    backend: DiscoveryBackend, lease: Lease, clock: Callable[[], float] = time.monotonic
) -> None:
    """Renew ``lease`` until cancelled; raise :class:`LeaseExpired` once it is lost.

    The next renewal is due at half the time left (as the reference runtime does), so a failed renewal
    leaves time for retries, with backoff, before the deadline.
    """
    recorder = metrics()
    deadline = clock() + lease.ttl
    backoff = Backoff(RETRY_MIN, RETRY_MAX)
    next_renewal = clock() + lease.ttl / 2
    while True:
        await anyio.sleep(max(next_renewal - clock(), 0.0))
        left = deadline - clock()
        if left <= 0:
            raise LeaseExpired(
                f"lease {lease.id:x} expired: no successful keep-alive within its {lease.ttl}s TTL"
            )
        started = clock()
        try:
            with anyio.fail_after(left):
                ttl = await backend.keep_alive(lease)
        except LeaseNotFoundError as exc:
            raise LeaseExpired(str(exc)) from exc
        except Exception as exc:
            recorder.keep_alive_failed(backend.name)
            left = deadline - clock()
            delay = backoff.next_delay(limit=max(left / 2, RETRY_MIN))
            log.warning(
                "keep-alive of lease %x failed (%s: %s); %.2fs left, retrying in %.2fs",
                lease.id,
                type(exc).__name__,
                exc,
                left,
                delay,
            )
            next_renewal = clock() + delay
            continue
        if ttl <= 0:
            raise LeaseExpired(f"lease {lease.id:x} expired or was revoked (the server answered TTL {ttl})")
        deadline = started + ttl
        if recorder.enabled:
            recorder.keep_alive_succeeded(backend.name, clock() - started)
        backoff.reset()
        next_renewal = clock() + (deadline - clock()) / 2
        log.debug("lease %x renewed: %.2fs left", lease.id, deadline - clock())


async def retry_forever(what: str, attempt: Callable[[], Awaitable[Lease]]) -> Lease:
    """Call ``attempt`` until it succeeds, with backoff, logging each failure."""
    backoff = Backoff(REGRANT_MIN, REGRANT_MAX)
    while True:
        try:
            return await attempt()
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning("%s failed (%s: %s); retrying in %.2fs", what, type(exc).__name__, exc, delay)
            await anyio.sleep(delay)
