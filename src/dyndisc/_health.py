"""The health of a runtime's lease, for applications and for Kubernetes probes.

The runtime keeps one :class:`RuntimeHealth` current (``runtime.health()``): whether it holds its lease, when
the server last renewed it, since when the server has not answered and why. ``live`` and ``ready`` are what a
liveness and a readiness probe should answer (see :mod:`dyndisc._probe`).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, replace


class LeaseState(enum.StrEnum):
    """Where the runtime's lease stands."""

    #: The lease is being granted (the runtime is starting, or waiting for its server to answer).
    STARTING = "starting"
    #: The server renewed the lease at its last keep-alive.
    HELD = "held"
    #: Keep-alives get no answer: an outage. The lease is kept (the server decides when it is lost).
    OUTAGE = "outage"
    #: The server said the lease is gone: a new one is being granted and every endpoint registered again.
    REPLACING = "replacing"
    #: A permanent error (refused credentials, denied access, a bug) stopped the runtime.
    FAILED = "failed"
    #: The runtime has left its ``async with`` (the lease was revoked).
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RuntimeHealth:
    """A snapshot of the runtime's lease. Times are ``time.time()`` (seconds since the epoch)."""

    state: LeaseState
    #: The instance id (the lease id), once granted.
    instance_id: int | None = None
    #: The TTL the server last answered, seconds.
    ttl: float | None = None
    #: When the server last renewed (or granted) the lease.
    renewed_at: float | None = None
    #: When the server would let the lease go if no renewal reaches it (``renewed_at + ttl``).
    expires_at: float | None = None
    #: Since when keep-alives get no answer (the start of the current outage), else ``None``.
    stale_since: float | None = None
    #: Why: the last error of the outage, or the permanent error that stopped the runtime.
    reason: str | None = None
    #: Endpoints the application registered and not unregistered.
    registered: int = 0
    #: Of those, how many are not yet written under the current lease (waiting for a replacement lease).
    pending: int = 0

    @property
    def live(self) -> bool:
        """Whether the runtime still works (a liveness probe): false once it failed or closed."""
        return self.state not in (LeaseState.FAILED, LeaseState.CLOSED)

    @property
    def ready(self) -> bool:
        """Whether every registration is visible to watchers now (a readiness probe)."""
        return self.state is LeaseState.HELD and self.pending == 0

    def to_dict(self) -> dict[str, object]:
        """JSON-native fields, with ``live`` and ``ready``."""
        return {
            "state": self.state.value,
            "live": self.live,
            "ready": self.ready,
            "instance_id": None if self.instance_id is None else f"{self.instance_id:x}",
            "ttl": self.ttl,
            "renewed_at": self.renewed_at,
            "expires_at": self.expires_at,
            "stale_since": self.stale_since,
            "reason": self.reason,
            "registered": self.registered,
            "pending": self.pending,
        }


class HealthRecorder:
    """The runtime's current :class:`RuntimeHealth`, updated by its keep-alive loop and registrations."""

    def __init__(self) -> None:
        self.current = RuntimeHealth(LeaseState.STARTING)

    def granted(self, instance_id: int, ttl: float) -> None:
        """A lease was granted: held, fresh."""
        now = time.time()
        self.current = replace(
            self.current,
            state=LeaseState.HELD,
            instance_id=instance_id,
            ttl=ttl,
            renewed_at=now,
            expires_at=now + ttl,
            stale_since=None,
            reason=None,
        )

    def renewed(self, ttl: float) -> None:
        """The server renewed the lease for ``ttl`` seconds."""
        now = time.time()
        if self.current.state is LeaseState.OUTAGE:
            self.current = replace(self.current, state=LeaseState.HELD, stale_since=None, reason=None)
        self.current = replace(self.current, ttl=ttl, renewed_at=now, expires_at=now + ttl)

    def outage(self, reason: str) -> None:
        """A keep-alive got no answer."""
        since = self.current.stale_since or time.time()
        state = LeaseState.OUTAGE if self.current.state is LeaseState.HELD else self.current.state
        self.current = replace(self.current, state=state, stale_since=since, reason=reason)

    def replacing(self, reason: str) -> None:
        """The server said the lease is gone."""
        self.current = replace(self.current, state=LeaseState.REPLACING, reason=reason)

    def failed(self, reason: str) -> None:
        """A permanent error stopped the runtime."""
        self.current = replace(self.current, state=LeaseState.FAILED, reason=reason)

    def closed(self, revoked: bool) -> None:
        """The runtime left its ``async with`` (``revoked``: its lease is gone on the server)."""
        reason = "revoked" if revoked else "left without revoking its lease: it expires on its own"
        self.current = replace(self.current, state=LeaseState.CLOSED, reason=reason)

    def registrations(self, registered: int, pending: int) -> None:
        """How many endpoints are registered, and how many wait for a lease."""
        if (registered, pending) != (self.current.registered, self.current.pending):
            self.current = replace(self.current, registered=registered, pending=pending)
