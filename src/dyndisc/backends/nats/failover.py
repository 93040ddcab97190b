"""Leaving a nats-server that is cut off from the rest of its cluster.

nats-py moves to another server only when its connection breaks. A server partitioned from its cluster keeps
its clients' connections open and answers none of their JetStream requests (a publish finds no stream, an API
request times out or is refused as "temporarily unavailable"): its clients would stay on it, stuck, for as
long as the partition lasts. A stream whose leader is being elected looks the same to a publish for a few
seconds, so one failed request is no reason to leave.

:class:`ServerProbe` tells them apart. When a request goes unanswered (or nats-py could not re-create a
watch's consumer) it asks for the account's JetStream information, which only the meta leader answers,
through whichever server the client is on. Unanswered (or refused as unavailable) twice in a row: this server
is cut off. Answered, but requests have found no stream for longer than any election takes
(:data:`STUCK_AFTER`): this server is the old meta leader on the wrong side of a partition, which answers
until it notices it lost its quorum (about 20 s measured). Either way the client moves to another one of the
servers it was given (``NATS_SERVER``), through nats-py's reconnection, after which every watch resyncs as
after any reconnection.

It asks one question at a time, at most once per :data:`PROBE_INTERVAL`, and only when there is another
server to go to; a connection with open watches also asks every :data:`WATCH_PROBE_INTERVAL`, as a watcher
makes no request that could fail: its consumer, on a server cut off with it, may go on sending heartbeats
and nothing else. A whole cluster without a meta leader (lost quorum, or its election) fails the probe
everywhere: clients then move from server to server at the pace of a growing, jittered backoff, not in a
loop.
"""

from __future__ import annotations

import json
import logging
import time

import nats.errors
from nats.aio.client import Client
from nats.js import api

from dyndisc._retry import Backoff

log = logging.getLogger("dyndisc.nats")

#: Least seconds between two probes of one connection after failures.
PROBE_INTERVAL = 1.0
#: Seconds between the probes a connection with open watches makes while nothing fails: a consumer on a
#: server cut off from the others may go on sending heartbeats with no news, so nothing else would tell.
WATCH_PROBE_INTERVAL = 5.0
#: Seconds a probe's question may take.
PROBE_TIMEOUT = 1.0
#: Probes unanswered in a row that make a connection leave its server.
MISSES = 2
#: Seconds of requests finding no stream, on a server that still answers the probe, after which the client
#: leaves it anyway: longer than a stream leader's election (4-9 s in nats-server; 6-7 s measured here).
STUCK_AFTER = 12.0
#: Bounds of the backoff between moves while no server answers (reset by an answered probe).
MOVE_MIN, MOVE_MAX = 4.0, 60.0


class ServerProbe:
    """Whether the server a connection is on still reaches its cluster, and the move to another server when
    not (see the module docstring). One per connection."""

    def __init__(self, servers: int) -> None:
        #: How many servers the client was given: with one, there is nowhere to go and nothing is asked.
        self.servers = servers
        self._probing = False
        self._last_probe = -PROBE_INTERVAL
        self._next_move = 0.0
        self._backoff = Backoff(MOVE_MIN, MOVE_MAX)
        #: Since when requests on this server have found nobody to answer them (``time.monotonic()``).
        self._failing_since: float | None = None
        #: Probes unanswered in a row on this server.
        self._misses = 0
        #: Moves made (a diagnostic, and what the cluster tests count).
        self.moves = 0

    def succeeded(self) -> None:
        """A request was answered."""
        self._failing_since = None

    def failed(self) -> None:
        """A request (or a consumer's re-creation) found nobody to answer it."""
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def reconnected(self) -> None:
        """The connection is on a server again: its failures so far were another server's."""
        self._failing_since = None
        self._misses = 0

    async def check(self, nc: Client, *, routine: bool = False) -> None:
        """After a failure (or, ``routine``, every :data:`WATCH_PROBE_INTERVAL` while watches are open): ask
        once whether the server the connection is on reaches its cluster, and move to another server when it
        has not, :data:`MISSES` times in a row. Returns at once if a probe is running, ran lately, or cannot
        help."""
        now = time.monotonic()
        interval = WATCH_PROBE_INTERVAL if routine and not self._misses else PROBE_INTERVAL
        if self.servers < 2 or self._probing or now - self._last_probe < interval or not nc.is_connected:
            return
        self._probing = True
        try:
            self._last_probe = now
            answered = await self._answered(nc)
            now = time.monotonic()
            self._misses = 0 if answered else self._misses + 1
            stuck = self._failing_since is not None and now - self._failing_since >= STUCK_AFTER
            if answered and not stuck:
                self._backoff.reset()
                self._next_move = 0.0
                return
            if (not stuck and self._misses < MISSES) or now < self._next_move or not nc.is_connected:
                return
            self._next_move = now + self._backoff.next_delay()
            self.moves += 1
            self._failing_since, self._misses = None, 0
            server = nc.connected_url.netloc if nc.connected_url is not None else "?"
            why = (
                f"has found no stream for {STUCK_AFTER:g}s"
                if answered
                else "answers no JetStream request (cut off from its cluster, or it has no meta leader)"
            )
            log.warning("nats-server %s %s: moving to another server of NATS_SERVER", server, why)
            await nc.force_reconnect()
        finally:
            self._probing = False

    @staticmethod
    async def _answered(nc: Client) -> bool:
        """Whether the account's JetStream information comes back: an error answer counts as an answer,
        except "temporarily unavailable", which a server cut off from its meta leader gives."""
        try:
            reply = await nc.request(f"{api.DEFAULT_PREFIX}.INFO", b"", timeout=PROBE_TIMEOUT)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False
        except nats.errors.Error:
            return True  # closed or reconnecting: nats-py is moving already
        return not _unavailable(reply.data)


def _unavailable(data: bytes) -> bool:
    """Whether a JetStream API answer is a 503 ("JetStream system temporarily unavailable")."""
    try:
        error = json.loads(data).get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and error.get("code") == 503
