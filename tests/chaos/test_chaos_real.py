"""A few seeds of the chaos run against each real server: workers and watchers in real processes (the CLI's
``watch --json`` among them), the nemesis on the real server. CI's budget; docs/reliability.md has a longer
run. A failure prints the seed, the invariant and the history that shows it; the agents' logs are kept in
the test's temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyndisc.testing.chaos.plan import WATCHER_KINDS, make_plan
from dyndisc.testing.chaos.runner import Session
from dyndisc.testing.chaos.targets import TARGETS

#: Seeds per backend, chosen so that between them they draw every fault of the backend (checked below).
SEEDS = {
    "etcd": (17, 26),
    "etcd-cluster": (14, 17),
    "nats": (17, 22),
    "file": (2, 4),
    "kubernetes": (11, 138),
}
DURATION = 15.0


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(SEEDS))
def test_chaos_seeds_keep_every_invariant(backend: str, tmp_path: Path) -> None:
    target = TARGETS[backend]
    planned = {
        step.args["kind"]
        for seed in SEEDS[backend]
        for step in make_plan(
            seed, duration=DURATION, ttl=target.ttl, faults=target.faults, watcher_kinds=WATCHER_KINDS
        ).steps
        if step.actor == "nemesis"
    }
    assert planned == set(target.faults), "the seeds no longer draw every fault of the backend"
    with Session(backend, duration=DURATION, logs=tmp_path) as session:
        for seed in SEEDS[backend]:
            outcome = session.run(seed)
            assert outcome.ok, f"{outcome.report()}\n(agents' logs: {tmp_path})"
            assert outcome.operations > 10
            assert outcome.faults >= 1
