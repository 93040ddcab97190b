"""The checker catches what it claims to: a known bug planted in the simulation breaks the invariant that
names it, in most seeds; hand-made histories break each invariant alone."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from dyndisc.testing.chaos import Bounds, History, check
from dyndisc.testing.chaos.history import LeaseReport, Operation, Seen
from dyndisc.testing.chaos.runner import Session

SEEDS = range(10)
BOUNDS = Bounds(converge=1.0, gone=1.0, expiry=0.5)


@pytest.mark.parametrize(
    ("planted", "invariant"),
    [
        ("lost-delete", "no phantom"),
        ("lost-write", "no loss"),
        ("never-revokes", "no phantom"),
        ("dropped-removed", "convergence"),
        ("no-resync", "well-formed"),
    ],
)
def test_a_planted_bug_breaks_its_invariant(planted: str, invariant: str) -> None:
    caught: Counter[str] = Counter()
    with Session("memory") as session:
        for seed in SEEDS:
            outcome = session.run(seed, frozenset({planted}))
            caught.update({v.invariant for v in outcome.violations})
    # Not every seed gives a bug the chance to show (a seed with no clean exit cannot show never-revokes).
    assert caught[invariant] >= 0.7 * len(SEEDS), caught


def test_the_same_seeds_without_a_planted_bug_pass() -> None:
    with Session("memory") as session:
        failed = [o.report() for o in (session.run(seed) for seed in SEEDS) if not o.ok]
    assert failed == []


# -- one invariant at a time, on histories made by hand ---------------------------------------------------
KEY = "ns.c.e/1"
RECORD = json.dumps({"namespace": "ns", "component": "c", "endpoint": "e", "instance_id": 1})


def _history(**given: Any) -> History:
    return History("hand", seed=0, ttl=1.0, duration=10.0, truth_at=10.0, **given)


def _register(at: float, record: str = RECORD) -> list[Operation]:
    """The application's register call and the write the runtime made for it."""
    return [
        Operation("w0", "register", {"endpoint": KEY.rsplit("/", 1)[0]}, at, at + 0.01, True, [KEY, record]),
        Operation("w0", "write", {"record": [KEY, record]}, at, at, True, [KEY, record]),
    ]


def _invariants(history: History) -> set[str]:
    return {v.invariant for v in check(history, BOUNDS)}


def test_a_kept_history_has_no_violation() -> None:
    history = _history(
        operations=_register(1.0),
        seen=[Seen("v0", 0.0, "resync", []), Seen("v0", 1.1, "added", [(KEY, RECORD)])],
        leases=[LeaseReport("w0", 0.5, 1, "held")],
        truth=[(KEY, RECORD)],
        late_watch=[(KEY, RECORD)],
    )
    assert _invariants(history) == set()


def test_a_watch_that_does_not_begin_with_a_resync_is_malformed() -> None:
    history = _history(
        operations=_register(1.0),
        seen=[Seen("v0", 1.1, "added", [(KEY, RECORD)])],
        leases=[LeaseReport("w0", 0.5, 1, "held")],
        truth=[(KEY, RECORD)],
        late_watch=[(KEY, RECORD)],
    )
    assert "well-formed" in _invariants(history)


def test_a_record_nobody_wrote_is_a_phantom() -> None:
    forged = RECORD.replace('"e"', '"forged"')
    history = _history(
        seen=[Seen("v0", 0.0, "resync", []), Seen("v0", 1.0, "added", [(KEY, forged)])],
        truth=[],
    )
    assert "no phantom" in _invariants(history)


def test_an_instance_held_past_its_lease_is_a_phantom() -> None:
    history = _history(
        operations=_register(1.0),
        seen=[Seen("v0", 0.0, "resync", []), Seen("v0", 1.1, "added", [(KEY, RECORD)])],
        leases=[LeaseReport("w0", 0.5, 1, "held"), LeaseReport("w0", 2.0, 1, "revoked")],
        truth=[],
    )
    assert {"no phantom", "convergence"} <= _invariants(history)


def test_an_id_held_again_is_gone_only_until_then() -> None:
    # On Kubernetes a replaced lease keeps its id (the hash of the pod's name): held again, it is no phantom.
    seen = [Seen("v0", 0.0, "resync", []), Seen("v0", 1.1, "added", [(KEY, RECORD)])]
    replaced = [
        LeaseReport("w0", 0.5, 1, "held"),
        LeaseReport("w0", 2.0, 1, "replaced"),
        LeaseReport("w0", 2.3, 1, "held"),
    ]
    kept = _history(
        operations=[*_register(1.0), *_register(2.2)],
        seen=[*seen, Seen("v0", 2.1, "removed", [(KEY, "")]), Seen("v0", 2.4, "added", [(KEY, RECORD)])],
        leases=replaced,
        truth=[(KEY, RECORD)],
        late_watch=[(KEY, RECORD)],
    )
    assert _invariants(kept) == set()
    # Held through the gap within the bound: still fine (the watcher may never have seen it leave).
    assert _invariants(_history(**{**_fields(kept), "seen": seen})) == set()
    # Gone again for good after that: a watcher holding it past the bound is a phantom, as anywhere.
    gone_again = _history(
        **{**_fields(kept), "leases": [*replaced, LeaseReport("w0", 4.0, 1, "revoked")], "truth": []}
    )
    assert "no phantom" in _invariants(gone_again)
    # And a watcher still holding it in a gap longer than the bound is one too.
    slow = [
        LeaseReport("w0", 0.5, 1, "held"),
        LeaseReport("w0", 2.0, 1, "replaced"),
        LeaseReport("w0", 5.0, 1, "held"),
    ]
    in_the_gap = [*seen, Seen("v0", 4.0, "resync", [(KEY, RECORD)])]
    assert "no phantom" in _invariants(_history(**{**_fields(kept), "seen": in_the_gap, "leases": slow}))


def _fields(history: History) -> dict[str, Any]:
    return {
        "operations": history.operations,
        "seen": history.seen,
        "leases": history.leases,
        "truth": history.truth,
        "late_watch": history.late_watch,
    }


def test_a_live_registration_missing_from_the_truth_is_a_loss() -> None:
    history = _history(
        operations=_register(1.0),
        seen=[Seen("v0", 0.0, "resync", [])],
        leases=[LeaseReport("w0", 0.5, 1, "held")],
        truth=[],
    )
    assert _invariants(history) == {"no loss"}


def test_a_late_watcher_that_disagrees_with_list_breaks_agreement() -> None:
    history = _history(
        operations=_register(1.0),
        seen=[Seen("v0", 0.0, "resync", []), Seen("v0", 1.1, "added", [(KEY, RECORD)])],
        leases=[LeaseReport("w0", 0.5, 1, "held")],
        truth=[(KEY, RECORD)],
        late_watch=[],
    )
    assert "agreement" in _invariants(history)


def test_a_watcher_whose_process_ended_on_its_own_is_a_violation() -> None:
    # Kubernetes seeds 1014 and 1034: the CLI's watch, started during an API server outage with its 5 s
    # one-shot default, gave up and exited; the harness then crashed signalling it. Now the CLI watcher
    # waits as a monitor would, and a watcher that dies is held against the run rather than the harness.
    history = _history(
        operations=_register(1.0),
        seen=[Seen("v0", 0.5, "resync", []), Seen("v0", 1.1, "added", [(KEY, RECORD)])],
        leases=[LeaseReport("w0", 0.5, 1, "held")],
        truth=[(KEY, RECORD)],
        late_watch=[(KEY, RECORD)],
        gone_watchers=["v1"],
        died={"v1": 4.0},
    )
    assert _invariants(history) == {"watchers keep running"}
