"""The timeline a watch's events make (cli/history.py), the ring that keeps it, the staleness of a view
(cli/liveness.py), and the UI's watch retrying with a growing delay (ui/fleet.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from dyndisc import Added, Instance, InstanceQuery, KvDiscovery, MemoryStore, Readiness, Removed, Resync
from dyndisc._events import DiscoveryEvent, RemovalReason
from dyndisc.cli.history import History, Timeline, record_line, worker_of
from dyndisc.cli.liveness import PROBE_TIMEOUT, Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def instance(instance_id: int, port: int = 9000, **fields: Any) -> Instance:
    return Instance(
        namespace="ns",
        component="c",
        endpoint="e",
        instance_id=instance_id,
        transport=fields.pop("transport", f"tcp://10.0.0.5:{port}"),
        **fields,
    )


def kinds(records: list[dict[str, Any]]) -> list[str]:
    return [r["kind"] for r in records]


def test_joins_leaves_and_readiness_changes() -> None:
    clock = Clock()
    timeline = Timeline(InstanceQuery("ns"), clock=clock)
    (started,) = timeline.apply(Resync(instances=(instance(0xA),)))
    assert started["kind"] == "started"
    assert started["live"] == 1  # what was there at the start did not join now
    (joined,) = timeline.apply(Added(instance(0xB, 9001)))
    assert joined | {"at": None} == {
        "at": None,
        "ts": 1_000.0,
        "kind": "joined",
        "endpoint": "ns.c.e",
        "instance_id": "b",
        "key": "ns.c.e/b",
        "transport": "tcp://10.0.0.5:9001",
        "readiness": "ready",
    }
    assert timeline.apply(Added(instance(0xB, 9001))) == []  # written again unchanged: nothing happened
    (draining,) = timeline.apply(Added(instance(0xB, 9001, readiness=Readiness.DRAINING)))
    assert draining["kind"] == "draining"
    (changed,) = timeline.apply(Added(instance(0xB, 9001, readiness="draining", metadata={"m": 1})))
    assert (changed["kind"], changed["fields"]) == ("changed", ["metadata"])
    (left,) = timeline.apply(Removed(instance(0xB).endpoint_id, 0xB, RemovalReason.EXPIRED))
    assert (left["kind"], left["reason"]) == ("left", "expired")
    assert record_line(left, "T") == "T left     ns.c.e b (expired)"


def test_a_lease_replacement_is_one_record_naming_both_ids() -> None:
    clock = Clock()
    timeline = Timeline(InstanceQuery(), clock=clock)
    timeline.apply(Resync(instances=(instance(0xA),)))
    # The reference's TCP path holds the id: the same worker has another address string under a new lease.
    old = instance(0xAA, transport="tcp://10.0.0.5:9000/aa/ns/c/e")
    new = instance(0xBB, transport="tcp://10.0.0.5:9000/bb/ns/c/e")
    assert worker_of(old) == worker_of(new) == ("ns.c.e", "tcp://10.0.0.5:9000/*/ns/c/e")
    timeline.apply(Added(old))
    assert kinds(timeline.apply(Removed(old.endpoint_id, 0xAA, None))) == ["left"]
    clock.now += 3
    (replaced,) = timeline.apply(Added(new))
    assert (replaced["kind"], replaced["instance_id"], replaced["previous"]) == ("replaced", "bb", "aa")
    # The new lease's record may also come before the old one's goes.
    (again,) = timeline.apply(Added(instance(0xCC, transport="tcp://10.0.0.5:9000/cc/ns/c/e")))
    assert (again["kind"], again["previous"]) == ("replaced", "bb")
    # Long after a leave, a new id at the same address is a new worker.
    timeline.apply(Removed(new.endpoint_id, 0xBB, None))
    timeline.apply(Removed(new.endpoint_id, 0xCC, None))
    clock.now += 600
    assert kinds(timeline.apply(Added(instance(0xDD, transport="tcp://10.0.0.5:9000/dd/ns/c/e")))) == [
        "joined"
    ]


def test_a_resync_after_a_gap_says_what_changed_meanwhile() -> None:
    timeline = Timeline(InstanceQuery())
    timeline.apply(Resync(instances=(instance(0xA), instance(0xB, 9001))))
    records = timeline.apply(
        Resync(instances=(instance(0xB, 9001, readiness="draining"), instance(0xC, 9002)))
    )
    assert [(r["kind"], r["instance_id"]) for r in records] == [
        ("left", "a"),
        ("draining", "b"),
        ("joined", "c"),
    ]
    assert records[0]["away"] is True
    assert records[0]["reason"] is None
    assert record_line(records[0], "T").endswith("(gone while the watch was away)")


def test_the_ring_keeps_the_last_records_and_selects_them() -> None:
    history = History(capacity=3)
    timeline = Timeline(InstanceQuery(), clock=Clock())
    timeline.apply(Resync(instances=()))
    for n in range(1, 6):
        (record,) = timeline.apply(Added(instance(n, 9000 + n)))
        record["ts"] = 100.0 * n
        history.add(record)
    assert [r["seq"] for r in history.records] == [3, 4, 5]
    assert history.first_seq == 3
    assert history.next_seq == 6
    assert [r["seq"] for r in history.select(since=400.0)] == [4, 5]
    assert [r["seq"] for r in history.select(after=4)] == [5]
    assert [r["instance_id"] for r in history.select(key="ns.c.e/3")] == ["3"]


class Answering(KvDiscovery):
    """A backend whose probe answers, fails or hangs, as a test sets it."""

    mode = "answer"

    async def lease_time_left(self, instance_id: int) -> float | None:
        if self.mode == "hang":
            await anyio.sleep_forever()
        if self.mode == "fail":
            raise ConnectionError("refused")
        return None


async def test_a_view_is_stale_from_the_first_probe_left_unanswered() -> None:
    backend = Answering(MemoryStore())
    liveness = Liveness(backend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(liveness.probe)
        await anyio.sleep(0.1)
        assert liveness.stale_since is None
        assert liveness.change() is None
        backend.mode = "hang"  # a frozen server: no error, no answer
        with anyio.fail_after(PROBE_TIMEOUT + 3):
            while liveness.stale_since is None:  # noqa: ASYNC110 - a time-derived state, no event to wait on
                await anyio.sleep(0.05)
        change = liveness.change()
        assert change is not None
        assert change.stale
        assert liveness.change() is None  # said once
        tg.cancel_scope.cancel()
    liveness._in_flight_since = None  # the probe ended with the task group; it answers again
    backend.mode = "answer"
    async with anyio.create_task_group() as tg:
        tg.start_soon(liveness.probe)
        with anyio.fail_after(3):
            while liveness.stale_since is not None:  # noqa: ASYNC110 - a time-derived state, no event
                await anyio.sleep(0.05)
        back = liveness.change()
        assert back is not None
        assert not back.stale
        assert back.lasted > 0
        tg.cancel_scope.cancel()


async def test_the_uis_watch_retries_with_a_growing_delay() -> None:
    pytest.importorskip("aiohttp")
    from dyndisc.ui.fleet import Fleet

    class Flaky(KvDiscovery):
        """Gives its cached view, then breaks: the old loop reset its delay on that event, every time."""

        failures = 0

        @asynccontextmanager
        async def _flaky(self) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
            async def events() -> AsyncIterator[DiscoveryEvent]:
                yield Resync(instances=())
                self.failures += 1
                raise ConnectionError("the server went away")

            yield events()

        def watch(self, query: InstanceQuery) -> Any:
            return self._flaky()

    backend = Flaky(MemoryStore())
    fleet = Fleet(backend, InstanceQuery())
    with anyio.move_on_after(3):  # the 3rd failure comes within 0.5 + 1 s of the first
        await fleet._watch()
    assert backend.failures >= 3
    assert fleet.watch_backoff.attempts == backend.failures  # never reset while it keeps failing
