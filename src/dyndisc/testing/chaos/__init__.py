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

The rooms:

* the run: ``plan`` (the seed's workload and faults), ``calls`` (each action as the API call an application
  makes), ``actors`` (workers and watchers, and what they record), ``history`` (the records), ``runner``
  (seeds on a backend) and ``__main__``;
* the simulation: ``sim`` (memory, on virtual time), ``virtual_time``, ``plants`` (known bugs to plant);
* real servers: ``real`` (the orchestrator), ``agent`` (a process of workers or a watcher), ``lines`` (what
  agents print), ``target``, ``targets``, ``kube_target``;
* the truth, read raw: ``raw`` (the parser of keys and values), ``raw_readers`` (etcd, NATS, files),
  ``kube_raw`` (Kubernetes objects), ``readings`` (when the store is read);
* the judgement: ``oracle`` (what the store must hold, from the operations), ``runtimes`` (leases and lives
  from what was observed), ``replay`` (a watcher's events as holdings), ``checker`` with ``store_checks``,
  ``lease_checks``, ``watcher_checks``, and ``verdict`` (bounds, violations).
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
