"""The one retry policy of dyndisc: capped exponential backoff with full jitter, reset after success.

Every loop that retries (the keep-alive, watch resumes, calls to a server, reconnects) draws its delays
from a :class:`Backoff`: the n-th delay is uniform in ``[0, min(cap, initial * 2**n)]`` ("full jitter",
so a fleet that lost its server at one instant does not come back in lock step), and :meth:`Backoff.reset`
after a success starts over, so a watch that broke once an hour does not wait as if it broke every second.

Why not tenacity or stamina: they retry one call, while our loops are long-lived (a watch retries, runs for
an hour, and must reset its delay mid-stream); the keep-alive bounds each delay by the time its lease has
left; and the deterministic simulation (``dyndisc.testing.chaos``) needs the jitter drawn from a seeded
generator. That is a dozen lines here, with anyio's cancellation untouched.
"""

from __future__ import annotations

import random

import anyio

#: The generator of every jitter; the simulation seeds it (:func:`seed_jitter`) so a run replays exactly.
_RANDOM = random.Random()


def seed_jitter(seed: int | None) -> None:
    """Seed the jitter of every :class:`Backoff` (``None``: from the operating system again)."""
    _RANDOM.seed(seed)


class Backoff:
    """Delays for one retrying loop: ``initial`` doubling up to ``cap``, each drawn with full jitter."""

    def __init__(self, initial: float, cap: float) -> None:
        if not 0 < initial <= cap:
            raise ValueError(f"backoff needs 0 < initial <= cap, got {initial} and {cap}")
        self.initial = initial
        self.cap = cap
        self.attempts = 0

    def next_delay(self, limit: float | None = None) -> float:
        """The delay before the next attempt (at most ``limit`` when given); counts one more attempt."""
        ceiling = min(self.cap, self.initial * 2.0 ** min(self.attempts, 62))
        self.attempts += 1
        delay = _RANDOM.uniform(0.0, ceiling)
        return delay if limit is None else max(0.0, min(delay, limit))

    async def sleep(self, limit: float | None = None) -> float:
        """Sleep for :meth:`next_delay` and return how long that was."""
        delay = self.next_delay(limit)
        await anyio.sleep(delay)
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts again from ``initial``."""
        self.attempts = 0
