"""The health of a runtime's lease, for applications and for Kubernetes probes.

The runtime keeps one :class:`RuntimeHealth` current (``runtime.health()``): whether it holds its lease, when
the server last renewed it, since when the server has not answered and why. ``live`` and ``ready`` are what a
liveness and a readiness probe should answer, and :func:`serve_probes` answers them over HTTP (off by
default).

``DYN_HEALTH_PORT`` (or ``DistributedRuntime(health_port=...)``) turns the probe endpoint on;
``DYN_HEALTH_HOST`` is where it listens (default ``0.0.0.0``: a kubelet probes the pod's address). It
answers ``GET`` only:

* ``/live``: 200 while the runtime works, 503 once a permanent error stopped it (restart the container);
* ``/ready``: 200 while the lease is held and every registration is written, 503 during an outage or a lease
  replacement (take the pod out of service, do not restart it);
* ``/health``: 200 with the whole :class:`RuntimeHealth` as JSON (also the body of the others).

It is a few lines over anyio's sockets rather than a web framework: it serves three fixed answers.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace

import anyio
from anyio.abc import SocketStream, TaskStatus

log = logging.getLogger("dyndisc.probe")

#: The longest request line and headers read (probes send a few hundred bytes).
MAX_REQUEST_BYTES = 8192


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

    def carrying(self, instance_id: int, ttl: float) -> None:
        """A replacement lease was granted; the registrations are being written under it."""
        now = time.time()
        self.current = replace(
            self.current, instance_id=instance_id, ttl=ttl, renewed_at=now, expires_at=now + ttl
        )

    def replaced(self) -> None:
        """Every registration is written under the replacement lease."""
        if self.current.state is LeaseState.REPLACING:
            self.current = replace(self.current, state=LeaseState.HELD, stale_since=None, reason=None)

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


async def serve_probes(
    health: Callable[[], RuntimeHealth],
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the probe endpoint until cancelled; report the port it listens on once listening."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        log.info("health probes on http://%s:%d (/live, /ready, /health)", host, bound)
        task_status.started(bound)
        await listener.serve(lambda client: _answer(client, health))


async def _answer(client: SocketStream, health: Callable[[], RuntimeHealth]) -> None:
    async with client:
        request = b""
        with anyio.move_on_after(5):
            while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
                try:
                    request += await client.receive(4096)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
        method, _, rest = request.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("ascii", "replace")
        now = health()
        body: dict[str, object]
        if method != b"GET":
            status, body = 405, {"error": "only GET"}
        elif path in ("/live", "/livez"):
            status, body = (200 if now.live else 503), now.to_dict()
        elif path in ("/ready", "/readyz"):
            status, body = (200 if now.ready else 503), now.to_dict()
        elif path in ("/health", "/"):
            status, body = 200, now.to_dict()
        else:
            status, body = 404, {"error": f"no {path}: try /live, /ready or /health"}
        payload = json.dumps(body).encode()
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # the prober went away
            await client.send(head.encode() + payload)
