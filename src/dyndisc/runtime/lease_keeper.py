"""The runtime's lease: granted at start, renewed by the keep-alive loop, replaced when lost, revoked on a
clean exit.

Only the server says that a lease is lost. A renewal that gets no answer (the server is down, an election, a
partition) is an outage: the loop keeps renewing the same lease, a jittered second or less apart, until the
server answers. etcd restores its leases with a fresh TTL when it comes back, so an outage of any length
ends with the same lease, the same instance id and no re-registration. Only when the server answers that it
no longer knows the lease (it expired there, or someone revoked it) is the lease lost; then, by policy, a
new lease is granted and kept alive **from the moment it is granted** while everything the old one carried
is written again under it (however long that takes, the new lease never waits for it to be renewed), or the
runtime shuts down. A permanent error (refused credentials, denied access, a bug) stops the loop at once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import NoReturn, TypeVar

import anyio

from dyndisc._concurrency import Wake, background_tasks
from dyndisc._errors import (
    AccessDeniedError,
    BackendUnavailableError,
    ConfigurationError,
    LeaseLostError,
    LeaseNotFoundError,
    RuntimeNotStartedError,
)
from dyndisc._metrics import metrics
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc._settings import LeaseLossPolicy
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.runtime.health import HealthRecorder

log = logging.getLogger("dyndisc.lease")

T = TypeVar("T")

#: Backoff between renewals during an outage: capped at a second, so the lease is renewed within about a
#: second of the server answering again, and a fleet's retries are spread out (full jitter).
OUTAGE_RETRY_MIN, OUTAGE_RETRY_MAX = 0.05, 1.0
#: Seconds after which a renewal that neither succeeded nor failed is given up as an outage.
HUNG_RENEWAL = 30.0
#: Seconds a clean exit may spend revoking the lease (retried within it) before leaving it to expire.
REVOKE_BUDGET = 5.0
_NOT_STARTED = "use the runtime inside 'async with DistributedRuntime(...) as runtime:'"


@dataclass(frozen=True)
class LeaseChange:
    """Told to ``on_lease_change`` after the runtime replaced a lost lease and re-registered its endpoints."""

    old_instance_id: int
    new_instance_id: int
    reason: str


#: What a replacement lease must carry: writes everything the application wants under the lease given.
Carry = Callable[[Lease], Awaitable[None]]


class LeaseLost(Exception):
    """Internal: the server said the lease is gone; carries why."""


class LeaseKeeper:
    """Holds the runtime's one lease: :meth:`grant` it, :meth:`run` the keep-alive loop (which replaces a
    lost lease), :meth:`release` it on a clean exit. Writers read :attr:`lease`, ask for a renewal now
    (:attr:`renew_now`) when a write finds the lease gone, and :meth:`wait_for_another` lease."""

    def __init__(
        self,
        backend: DiscoveryBackend,
        ttl: float,
        policy: LeaseLossPolicy,
        health: HealthRecorder,
        on_change: Callable[[LeaseChange], object] | None = None,
    ) -> None:
        self.backend = backend
        self.ttl = ttl
        self.policy = policy
        self.health = health
        self.on_change = on_change
        #: What stopped the runtime (a permanent error, or a lost lease under the shutdown policy).
        self.failure: BaseException | None = None
        #: Asks the keep-alive loop to renew now (a write found the lease gone: the server decides).
        self.renew_now = Wake()
        #: How many times a lost lease was replaced.
        self.replacements = 0
        self._lease: Lease | None = None
        #: Set (and replaced) whenever the lease changes, the runtime fails or leaves: waiters look again.
        self._changed = anyio.Event()
        #: The replacement under way, told to ``on_change`` once its lease carries everything.
        self._unannounced: LeaseChange | None = None

    # -- state -----------------------------------------------------------------------------------------
    @property
    def lease(self) -> Lease:
        """The lease held now."""
        if self._lease is None:
            raise RuntimeNotStartedError(_NOT_STARTED)
        return self._lease

    @property
    def held(self) -> Lease | None:
        """The lease held now, or ``None`` before the start and after the exit."""
        return self._lease

    def check(self) -> None:
        """Raise what stopped the runtime, if something did."""
        if self.failure is not None:
            raise self.failure

    def fail(self, exc: BaseException) -> None:
        """The runtime stops for ``exc``: tell the health and everyone waiting."""
        self.failure = exc
        self.health.failed(f"{type(exc).__name__}: {exc}")
        self._notify()
        log.error("the runtime stops: %s", exc)

    def _set(self, lease: Lease | None) -> None:
        self._lease = lease
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def wait_for_another(self, lease: Lease) -> None:
        """Wait until ``lease`` is replaced and the replacement carries everything, or the runtime fails (the
        caller then finds :attr:`failure`); raise if it leaves meanwhile."""
        while (self._lease is lease or self._unannounced is not None) and self.failure is None:
            if self._lease is None:
                break
            await self._changed.wait()
        if self._lease is None:
            raise RuntimeNotStartedError("the runtime left its 'async with' during the registration")

    # -- lifecycle -------------------------------------------------------------------------------------
    async def grant(self) -> Lease:
        """Grant the first lease."""
        lease = await self.backend.grant_lease(self.ttl)
        self._set(lease)
        self.health.granted(lease.id, lease.ttl)
        return lease

    async def run(self, carry: Carry) -> NoReturn:
        """Keep the lease alive until cancelled; replace it when the server says it is lost (``carry``
        writes what the new lease must hold, while the new lease is already being kept alive)."""
        backend = self.backend
        try:
            # A backend that watches its leases wakes the loop itself when one changes (Kubernetes).
            async with backend.follow_leases(self.renew_now.set), background_tasks() as revokes:
                while True:
                    lease = self.lease
                    try:
                        async with background_tasks() as carrying:
                            if self._unannounced is not None:
                                carrying.start_soon(self._carry, carry, lease)
                            await keep_lease_alive(backend, lease, self.health, self.renew_now)
                    except LeaseLost as exc:
                        new = await self._replace(lease, str(exc))
                        if lease.id != new.id:  # on Kubernetes a pod's lease keeps its id
                            revokes.start_soon(self._revoke_until_gone, lease)
        except Exception as exc:
            self.fail(exc)
            raise

    async def _replace(self, lost: Lease, reason: str) -> Lease:
        """Grant a lease in place of ``lost`` (or shut down, by policy)."""
        log.error("lost lease %x: %s", lost.id, reason)
        metrics().lease_lost(self.backend.name)
        if self.policy is LeaseLossPolicy.SHUTDOWN:
            raise LeaseLostError(f"runtime shut down: {reason} (lease_loss_policy=shutdown)")
        self.health.replacing(reason)
        new = await ride_out_outages("granting a new lease", partial(self.backend.grant_lease, self.ttl))
        # The new id is ours from now on: writes go under it, and watchers may see it before the
        # replacement has carried everything over.
        first = self._unannounced.old_instance_id if self._unannounced is not None else lost.id
        self._unannounced = LeaseChange(first, new.id, reason)
        self.replacements += 1
        self.health.carrying(new.id, new.ttl)
        self._set(new)
        return new

    async def _carry(self, carry: Carry, lease: Lease) -> None:
        await carry(lease)
        change, self._unannounced = self._unannounced, None
        self.health.replaced()
        self._notify()
        assert change is not None
        log.warning(
            "replaced lost lease %x with %x and registered everything again", change.old_instance_id, lease.id
        )
        if self.on_change is not None:
            try:
                result = self.on_change(change)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # the application's callback must not take the keep-alive loop down
                log.exception("on_lease_change callback failed")

    async def _revoke_until_gone(self, lease: Lease) -> None:
        # Usually gone already, but a server that lost track of it must not keep it (nor its keys).
        await ride_out_outages(
            f"revoking the lost lease {lease.id:x}", partial(self.backend.revoke_lease, lease)
        )

    async def release(self, registrations: int) -> None:
        """Revoke the lease on a clean exit, retried within its budget; say what stays behind if it fails."""
        lease = self._lease
        self._set(None)
        revoked = False
        if lease is not None:  # after a failure too: what it can remove at once need not wait for the TTL
            revoked = await revoke_on_exit(self.backend, lease, registrations)
        self.health.closed(revoked)


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
    an outage is retried for as long as it lasts. ``renew_now`` asks for a renewal at once.
    """
    recorder = metrics()
    backoff = Backoff(OUTAGE_RETRY_MIN, OUTAGE_RETRY_MAX)
    # One line when an outage starts, one when it ends (with how long it lasted): not one per retry.
    outage = OutageLog(
        log, f"keep-alive of lease {lease.id:x} (the lease is kept: the server decides when it is lost)"
    )
    next_renewal = clock() + lease.ttl / 2
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
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            recorder.keep_alive_failed(backend.name)
            health.outage(reason)
            outage.failed(f"no answer ({reason})")
            next_renewal = clock() + backoff.next_delay()
            continue
        if answered <= 0:
            raise LeaseLost(f"lease {lease.id:x} expired or was revoked (the server answered TTL {answered})")
        outage.recovered()
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
