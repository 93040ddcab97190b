"""Permission violations, which nats-server reports as an error on the connection, never as an answer.

A publish (a KV write, a JetStream request) whose subject the user may not publish to gets no reply: the
server drops it and sends ``-ERR 'Permissions Violation for Publish to "<subject>"'``, which nats-py hands to
the connection's error callback (lower-cased). Left alone, the request would time out and look like an
outage. :class:`Denials` matches the violation to the requests in flight on that subject and ends them at
once, and keeps the last violations so that a request that timed out can say it was refused.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio

#: How nats-py words a violation (it lower-cases the server's error).
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.IGNORECASE)
#: Violations remembered for requests that time out.
_REMEMBERED = 64


@dataclass(frozen=True)
class Violation:
    """One violation: ``kind`` is ``publish`` or ``subscription``; ``subject`` as the server said it
    (lower-cased by nats-py); ``at`` is ``time.monotonic()``."""

    kind: str
    subject: str
    at: float


@dataclass
class _Waiter:
    subject: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    denied: Violation | None = None


class Denials:
    """Requests in flight by subject, and the permission violations the server reported."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[_Waiter]] = {}
        self._reported: deque[Violation] = deque(maxlen=_REMEMBERED)

    def report(self, error: BaseException) -> Violation | None:
        """Take an error of the connection: a violation ends the publishes in flight on its subject."""
        found = _VIOLATION.search(str(error))
        if found is None:
            return None
        violation = Violation(found[1].lower(), found[2].lower(), time.monotonic())
        self._reported.append(violation)
        if violation.kind == "subscription":
            # Our inbox refused: no request will get its reply.
            waiters = [w for each in self._waiting.values() for w in each]
        else:
            waiters = self._waiting.get(violation.subject, [])
            # nats-py lower-cases the subject: end the requests only when they all spell it the same, so a
            # request on a subject differing only in case is never ended by another's refusal (it times out
            # instead, and then finds the violation: see since()).
            if len({w.subject for w in waiters}) != 1:
                waiters = []
        for waiter in waiters:
            waiter.denied = violation
            waiter.scope.cancel()
        return violation

    @contextmanager
    def watching(self, subject: str) -> Iterator[_Waiter]:
        """Run a publish on ``subject`` inside: a violation on it cancels the block and sets ``denied``."""
        waiter = _Waiter(subject)
        key = subject.lower()
        self._waiting.setdefault(key, []).append(waiter)
        try:
            with waiter.scope:
                yield waiter
        finally:
            waiters = self._waiting[key]
            waiters.remove(waiter)
            if not waiters:
                del self._waiting[key]

    def since(self, started: float, subject: str) -> Violation | None:
        """The last violation reported since ``started`` on ``subject`` (or under it, for a subject ending
        with ``.``), or of a subscription, which leaves every request without its reply."""
        wanted = subject.lower()
        for violation in reversed(self._reported):
            if violation.at < started:
                return None
            if violation.kind == "subscription" or violation.subject == wanted:
                return violation
            if wanted.endswith(".") and violation.subject.startswith(wanted):
                return violation
        return None
