"""A retrying loop logs an outage in two lines, however many attempts fail: when it starts (with its cause)
and when it ends (with how long it lasted); the attempts between are DEBUG."""

from __future__ import annotations

import logging

import pytest

from dyndisc._outage import OutageLog, duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_when_it_breaks_and_one_when_it_is_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = logging.getLogger("dyndisc.test.outage")
    outage = OutageLog(log, "etcd watch of '/services/'", clock=clock)
    caplog.set_level(logging.DEBUG, logger=log.name)
    assert outage.recovered() is None  # no outage, nothing to say
    for _ in range(40):
        outage.failed(ConnectionRefusedError("connection refused"))
        clock.now += 0.5
    assert outage.recovered() == pytest.approx(20.0)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in loud] == [
        "etcd watch of '/services/': connection refused; retrying (one line when it is back)",
        "etcd watch of '/services/': back after 20s (40 failed attempts)",
    ]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 39
    caplog.clear()
    outage.failed("refused", level=logging.ERROR)  # a new outage starts a new count
    clock.now += 0.25
    outage.recovered()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "etcd watch of '/services/': refused; retrying (one line when it is back)"),
        (logging.WARNING, "etcd watch of '/services/': back after 0.2s (1 failed attempt)"),
    ]


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0.24, "0.2s"), (9.96, "10.0s"), (12.7, "12s"), (192, "3m12s"), (7500, "2h05m")]
)
def test_durations_read_as_a_person_says_them(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown
