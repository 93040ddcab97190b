"""A randomized fault checker: seeded workloads and faults on every backend, every watcher's history checked.

Jepsen's shape (a generator of operations, a nemesis of faults, a checker over the recorded history) with
FoundationDB's replay: one seed is one run. On the memory backend the run is a deterministic simulation on
virtual time (hundreds of seeds in seconds, a seed replays exactly); on etcd, a 3-member etcd cluster, NATS,
files and Kubernetes it runs against the real servers, with workers and watchers in real processes.

    python -m dyndisc.testing.chaos --backend memory --seeds 300
    python -m dyndisc.testing.chaos --backend etcd --seeds 3 --duration 20
    python -m dyndisc.testing.chaos --backend etcd --seed 1234        # replay one run

The invariants are in :mod:`~dyndisc.testing.chaos.checker`; a failure prints the seed, the invariant and
the part of the history that shows it, and saves the whole history as JSON.
"""

from dyndisc.testing.chaos.checker import Bounds, Violation, check, convergence_time
from dyndisc.testing.chaos.history import History
from dyndisc.testing.chaos.plan import Plan, Step, Workload, make_plan

__all__ = [
    "Bounds",
    "History",
    "Plan",
    "Step",
    "Violation",
    "Workload",
    "check",
    "convergence_time",
    "make_plan",
]
