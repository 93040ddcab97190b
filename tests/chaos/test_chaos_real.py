"""A few seeds of the chaos run against each real server: workers and watchers in real processes (the CLI's
``watch --json`` among them), the nemesis on the real server. CI's budget; docs/reliability.md has a longer
run. A failure prints the seed, the invariant and the history that shows it; the agents' logs are kept in
the test's temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dyndisc.testing.chaos.nats_cluster_target import MEMBER_FAULTS
from dyndisc.testing.chaos.plan import make_plan
from dyndisc.testing.chaos.runner import Session
from dyndisc.testing.chaos.targets import TARGETS

#: Seeds per backend, chosen so that between them they draw every fault of the backend (checked below).
SEEDS = {
    "etcd": (0, 15),
    "etcd-cluster": (0, 2),
    "nats": (1, 2),
    # One server fault at a time holds (a second one meanwhile is skipped): 19 kills the stream leader, 24
    # partitions a server, then kills one.
    "nats-cluster": (19, 24),
    "file": (0, 1),
    "kubernetes": (0, 8),
}
DURATION = 15.0


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(SEEDS))
def test_chaos_seeds_keep_every_invariant(backend: str, tmp_path: Path) -> None:
    target = TARGETS[backend]
    planned = {
        step.args["kind"]
        for seed in SEEDS[backend]
        for step in make_plan(seed, duration=DURATION, workload=target().workload).steps
        if step.actor == "nemesis"
    }
    assert planned == set(target.faults), "the seeds no longer draw every fault of the backend"
    made: set[str] = set()
    with Session(backend, duration=DURATION, logs=tmp_path) as session:
        for seed in SEEDS[backend]:
            outcome = session.run(seed)
            assert outcome.ok, f"{outcome.report()}\n(agents' logs: {tmp_path})"
            assert outcome.operations > 10
            assert outcome.faults >= 1
            made |= {f.kind for f in outcome.history.faults if "server" in f.detail}  # (not skipped)
    if backend == "nats-cluster":
        assert set(MEMBER_FAULTS) <= made, "a server fault was planned but skipped in every seed"


def test_every_nats_cluster_seed_has_a_server_fault() -> None:
    """Issue 25: a server of the cluster is killed or cut off in every seed."""
    workload = TARGETS["nats-cluster"]().workload
    for seed in range(200):
        plan = make_plan(seed, duration=20.0, workload=workload)
        kinds = {step.args["kind"] for step in plan.steps if step.actor == "nemesis"}
        assert kinds & set(MEMBER_FAULTS), seed


#: Seeds that found bugs on a real backend, replayed with their duration: (backend, seed, duration).
#: A real run's timing varies, so a replay shows the bug again only most of the time, and the workload has
#: grown since these seeds found their bugs (their plans are not those of then): the unit test written for
#: each bug is what pins it (named beside each).
REGRESSIONS: list[Any] = [
    # The keep-alive met a channel another call had closed (grpc UsageError): the runtime stopped, and a
    # Client waited for ever. tests/backends/etcd/test_etcd_errors.py, tests/unit/test_runtime.py.
    ("etcd", 1024, 20.0),
    # An endpoint unregistered while a lease replacement waited for quorum came back for a moment under the
    # new lease (and the checker misread the runtime's writes as the application's wishes).
    # tests/unit/test_lease_semantics.py, tests/chaos/test_chaos_checker.py.
    ("etcd-cluster", 1004, 20.0),
    # etcd 3.5.1 dropped a worker's delete that landed at the nemesis's compaction revision (etcd-io/etcd
    # #18089, #19179): every watcher kept the instance. The suite now runs etcd 3.6.16; pinned by
    # test_a_delete_at_the_compaction_revision_reaches_a_resumed_watch (tests/backends/etcd/).
    ("etcd", 1016, 20.0),
    # A clean exit just after a nats-server outage left the runtime's records for a TTL: NatsStore.revoke
    # removed its lease key only at the revision it remembered, and a renewal that landed while its answer
    # was lost made that stale (the removal failed quietly). tests/backends/nats/test_nats_lease_loss.py.
    ("nats", 0, 15.0),
    # Two Kubernetes bugs in one seed: a worker's resource deleted by another client (a revoke) while a
    # registration was in flight was created anew by that registration's apply, so the runtime never took its
    # lease for lost (watchers saw the worker leave and come back, with no replacement); and an entry put
    # again unbound kept its bound copy, which shadowed the new value. tests/backends/kubernetes/.
    ("kubernetes", 2, 15.0),
    # A watch said a clean exit's records had expired: the lease's deadline it had last read, before a renewal
    # it had not heard of yet, had passed (seeds 2003, 2004, 2007 and 2008 of the 50-seed run on files).
    # tests/backends/file/test_file_lease_races.py.
    ("file", 2003, 20.0),
    # A watcher said an endpoint unregistered in the last second of its lease's renewal period had expired:
    # etcd tells a lease's time left rounded down to whole seconds, and 0 was read as "gone".
    # tests/backends/etcd/test_etcd_departures.py.
    ("etcd-cluster", 2047, 20.0),
    # A registration that timed out while nats-server was away landed after its unregistration had returned:
    # nats-py kept what was published while disconnected and sent it on reconnecting (the connection now
    # keeps nothing: pending_size=0). tests/backends/nats/test_nats_recovery.py.
    ("nats", 2000, 20.0),
    # An endpoint unregistered just after an update of it was cancelled in flight stayed in the worker's
    # resource: the runtime unregistered the record it had tried to write, the resource held the one before,
    # and only an exact match was removed. tests/backends/kubernetes/test_kube_worker.py.
    ("kubernetes", 2010, 20.0),
]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "seed", "duration"), REGRESSIONS)
def test_a_seed_that_found_a_bug_passes(backend: str, seed: int, duration: float, tmp_path: Path) -> None:
    with Session(backend, duration=duration, logs=tmp_path) as session:
        outcome = session.run(seed)
    assert outcome.ok, f"{outcome.report()}\n(agents' logs: {tmp_path})"
