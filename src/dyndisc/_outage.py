"""Logging an outage in two lines, however long it lasts: one when it starts (with its cause), one when it
ends (with how long it lasted and how many attempts failed meanwhile).

A loop that retries every second would otherwise log every attempt: ``dyndisc ui`` with two watches wrote
65 lines in 30 s while etcd was down. The attempts in between are logged at DEBUG (``-vv``), so nothing is
lost to whoever asks for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class OutageLog:
    """The log of one retrying thing (a watch, a connection): :meth:`failed` on every failed attempt,
    :meth:`recovered` on the first success after them."""

    def __init__(
        self, logger: logging.Logger, what: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.what = what
        self.clock = clock
        #: ``clock()`` at the first failure of the outage in progress, else ``None``.
        self.since: float | None = None
        #: Failed attempts in the outage in progress.
        self.failures = 0

    def failed(self, error: object, *, level: int = logging.WARNING) -> None:
        """An attempt failed: the first of an outage is logged at ``level``, the others at DEBUG."""
        self.failures += 1
        if self.since is None:
            self.since = self.clock()
            self.logger.log(level, "%s: %s; retrying (one line when it is back)", self.what, error)
        else:
            self.logger.debug("%s: still failing (%s), attempt %d", self.what, error, self.failures)

    def recovered(self) -> float | None:
        """An attempt succeeded: end the outage in progress with one line saying how long it lasted (and
        return that, in seconds); nothing when there was none."""
        if self.since is None:
            return None
        lasted = self.clock() - self.since
        self.logger.warning(
            "%s: back after %s (%d failed attempt%s)",
            self.what,
            duration(lasted),
            self.failures,
            "" if self.failures == 1 else "s",
        )
        self.since = None
        self.failures = 0
        return lasted


def duration(seconds: float) -> str:
    """A duration as a person reads it: ``0.4s``, ``12s``, ``3m12s``, ``2h5m``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
