"""The simulation: hundreds of seeds on the memory backend keep every invariant, a seed replays exactly (in
this process and in another), and the seeds that found bugs stay as regression tests."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dyndisc.testing.chaos import Plan, make_plan
from dyndisc.testing.chaos.runner import Session
from dyndisc.testing.chaos.sim import WORKLOAD
from dyndisc.testing.chaos.sweep import SHAPES, simulate_seeds

#: How many seeds CI runs, on every core (about 45 s for 2,000 on two).
CI_SEEDS = int(os.environ.get("DYNDISC_CHAOS_SEEDS", "2000"))
JOBS = len(os.sched_getaffinity(0))


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # The faults make the library warn thousands of times; the captured log would cost more than the run.
    caplog.set_level(logging.CRITICAL)
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def test_every_seed_keeps_every_invariant() -> None:
    summaries = simulate_seeds(range(CI_SEEDS), jobs=JOBS)
    failed = [s.report for s in summaries if s.report is not None]
    operations = [s.operations for s in summaries]
    assert failed == [], "\n\n".join(failed[:3])
    # The seeds did something: operations in every run (as few as its start and its grant in a seed whose lone
    # worker dies at once, more than ten in nearly every one), faults in nearly every one (a revoke drawn
    # when no lease is live does nothing).
    assert len(summaries) == CI_SEEDS
    assert min(operations) >= 2
    assert sum(n > 10 for n in operations) >= 0.9 * CI_SEEDS
    assert sum(s.faults >= 1 for s in summaries) >= 0.9 * CI_SEEDS
    # And between them they used the whole API, in every shape the workload draws.
    used = frozenset().union(*(s.shapes for s in summaries))
    assert used == SHAPES, sorted(SHAPES - used)


def test_a_seed_replays_exactly_in_this_process() -> None:
    with Session("memory") as session:
        first, again = session.run(7), session.run(7)
        other = session.run(8)
    assert first.history.digest() == again.history.digest()
    assert first.history.digest() != other.history.digest()


def test_a_seed_replays_exactly_in_another_process() -> None:
    with Session("memory") as session:
        here = session.run(11).history.digest()
    command = [sys.executable, "-m", "dyndisc.testing.chaos", "--backend", "memory", "--seed", "11"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert f"digest {here}" in done.stdout, done.stdout


def test_a_failing_seed_is_reported_with_its_invariant_and_its_history(tmp_path: os.PathLike[str]) -> None:
    command = [sys.executable, "-m", "dyndisc.testing.chaos", "--seed", "4", "--plant", "unregister-keeps"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "seed 4 on memory" in done.stdout
    assert "[unregistered stays gone]" in done.stdout
    assert (tmp_path / "memory-seed-4.json").is_file()


# -- seeds that found bugs (in the fault tooling, each fixed), kept with what makes them special ------------
def _windows(plan: Plan, kind: str) -> list[tuple[str, float, float]]:
    """``(target, start, end)`` of every fault of ``kind`` the plan opens and heals."""
    opened: dict[str, list[float]] = {}
    windows = []
    for step in plan.steps:
        if step.actor != "nemesis" or step.args.get("kind") != kind:
            continue
        target = step.args.get("target", "server")
        if step.action == "fault":
            opened.setdefault(target, []).append(step.at)
        elif opened.get(target):
            windows.append((target, opened[target].pop(0), step.at))
    return windows


def _overlap(windows: list[tuple[str, float, float]], *, everyone_counts: bool) -> bool:
    for n, (target, start, end) in enumerate(windows):
        for other, start2, end2 in windows[n + 1 :]:
            related = target == other or (everyone_counts and "everyone" in (target, other))
            if related and start < end2 and start2 < end:
                return True
    return False


def _born_cut_off(plan: Plan, action: str) -> bool:
    everyone = [w for w in _windows(plan, "partition") if w[0] == "everyone"]
    return any(s.action == action and any(a < s.at < b for _, a, b in everyone) for s in plan.steps)


#: Each trigger with a seed whose plan has it: the seeds that found these bugs (102, 105, 1, 37) drew them
#: from the workload of the time; these draw the same triggers from today's.
REGRESSIONS = {
    # Two partitions of one actor overlapped: healing the first healed both (FaultyStore outages now nest).
    76: lambda plan: _overlap(_windows(plan, "partition"), everyone_counts=True),
    # Two pauses of one watcher overlapped: the first resume resumed it (pauses now count).
    69: lambda plan: _overlap(_windows(plan, "pause_watcher"), everyone_counts=False),
    # A worker started while everyone was cut off reached the store anyway.
    28: lambda plan: _born_cut_off(plan, "start"),
    # A watcher started while everyone was cut off gave up instead of trying again, as a supervisor would.
    124: lambda plan: _born_cut_off(plan, "watch"),
    # dyndisc: under dynamo-v1, a draining registration cancelled after its side copy landed left that copy
    # behind a later ready registration and the unregistration (KvDiscovery.register noted the side key only
    # once the create answered); tests/unit/test_layouts.py pins it.
    44: lambda plan: plan.layout == "dynamo-v1" and _cancelled_draining(plan),
}


def _cancelled_draining(plan: Plan) -> bool:
    return any(
        s.action == "register" and s.args.get("readiness") == "draining" and "cancel_after" in s.args
        for s in plan.steps
    )


@pytest.mark.parametrize("seed", sorted(REGRESSIONS))
def test_a_regression_seed_still_has_its_trigger_and_passes(seed: int) -> None:
    plan = make_plan(seed, duration=20.0, workload=WORKLOAD)
    assert REGRESSIONS[seed](plan), f"seed {seed} no longer makes the plan that found its bug"
    with Session("memory") as session:
        outcome = session.run(seed)
    assert outcome.ok, outcome.report()
