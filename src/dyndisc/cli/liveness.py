"""Whether a view of the fleet is current: the backend's own word (``stale_since``) and a probe that must
answer in time.

A watch hears nothing from a server that froze (stopped, or behind a partition that drops packets): gRPC's
keep-alive notices only after 15 s, and ``dyndisc watch`` said nothing during a 14 s etcd freeze. A person
looking at ``dyndisc watch``, ``dyndisc events`` or the UI is told within seconds instead: each probes the
server once a second with the cheapest read there is (a lease's time left) and counts its view stale from
the first probe that did not answer within :data:`PROBE_TIMEOUT`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from dyndisc.backends.base import DiscoveryBackend

#: Seconds between probes.
PROBE_INTERVAL = 1.0
#: A probe unanswered for this long makes the view stale (from when it was sent).
PROBE_TIMEOUT = 2.0
#: A probe is given up (and counted failed) after this long, and the next one sent.
PROBE_GIVE_UP = 30.0
#: The lease the probe asks about: any id will do, the answer is not used.
PROBE_LEASE = 1


@dataclass(frozen=True)
class Change:
    """The view became stale (``stale`` true, since ``since``, monotonic) or current again (after
    ``lasted`` seconds)."""

    stale: bool
    since: float
    lasted: float = 0.0

    @property
    def since_wall(self) -> float:
        """:attr:`since` as wall time."""
        return time.time() - (time.monotonic() - self.since)


class Liveness:
    """The staleness of views over ``backend``: run :meth:`probe` in a task, read :attr:`stale_since`, or
    :meth:`change` for the transitions."""

    def __init__(self, backend: DiscoveryBackend, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock
        self._in_flight_since: float | None = None
        self._failing_since: float | None = None
        self._reported: float | None = None
        #: Set by a view's own evidence (its watch broke), cleared by it (a resync arrived).
        self.broken_since: float | None = None

    @property
    def stale_since(self) -> float | None:
        """``clock()`` since when the view may be out of date, else ``None``."""
        found = [
            t for t in (self.backend.stale_since, self._failing_since, self.broken_since) if t is not None
        ]
        started = self._in_flight_since
        if started is not None and self.clock() - started >= PROBE_TIMEOUT:
            found.append(started)
        return min(found) if found else None

    async def probe(self) -> None:
        """Probe the server once a second, until cancelled."""
        while True:
            self._in_flight_since = self.clock()
            answered = False
            with anyio.move_on_after(PROBE_GIVE_UP):
                try:
                    await self.backend.lease_time_left(PROBE_LEASE)
                    answered = True
                except Exception:  # whatever the cause, the server did not answer: the view may be stale
                    pass
            if answered:
                self._failing_since = None
            elif self._failing_since is None:
                self._failing_since = self._in_flight_since
            self._in_flight_since = None
            await anyio.sleep(PROBE_INTERVAL)

    def change(self) -> Change | None:
        """The transition since the last call: stale, current again, or ``None`` for no change."""
        since = self.stale_since
        if since is not None and self._reported is None:
            self._reported = since
            return Change(stale=True, since=since)
        if since is None and self._reported is not None:
            began, self._reported = self._reported, None
            return Change(stale=False, since=began, lasted=self.clock() - began)
        return None
