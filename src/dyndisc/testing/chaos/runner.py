"""Run seeds on one backend and judge each (behind ``python -m dyndisc.testing.chaos`` and the tests).

A :class:`Session` holds the backend's server(s) for several seeds (starting a 3-member etcd cluster per
seed would dominate the run); every seed gets a namespace of its own, so one seed's leftovers cannot
touch the next.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import anyio

from dyndisc.testing.chaos.checker import Bounds, Violation, check, convergence_time
from dyndisc.testing.chaos.history import History
from dyndisc.testing.chaos.plan import make_plan
from dyndisc.testing.chaos.real import RealRun
from dyndisc.testing.chaos.sim import BOUNDS, WORKLOAD, simulate
from dyndisc.testing.chaos.target import Target
from dyndisc.testing.chaos.targets import TARGETS

#: Every backend a run can use: ``memory`` is the simulation, the others run against real servers.
BACKENDS = ("memory", *TARGETS)


@dataclass
class Outcome:
    """One judged seed."""

    backend: str
    seed: int
    history: History
    violations: list[Violation]
    #: Wall-clock seconds the seed took.
    took: float
    #: Seconds from the quiet point to the last change any watcher saw.
    converged_in: float = field(init=False)

    def __post_init__(self) -> None:
        self.converged_in = convergence_time(self.history)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def operations(self) -> int:
        return len(self.history.operations)

    @property
    def faults(self) -> int:
        return len(self.history.faults)

    def report(self) -> str:
        """The seed, each broken invariant and the part of the history that shows it."""
        head = f"seed {self.seed} on {self.backend}: {len(self.violations)} violation(s)"
        return "\n".join([head, *(v.render() for v in self.violations)])


class Session:
    """The server(s) of one backend, started once, for any number of seeds.

    ``with Session("etcd") as session: session.run(seed)``; ``memory`` needs no server.
    """

    def __init__(self, backend: str, *, duration: float = 20.0, logs: Path | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown chaos backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.duration = duration
        self.logs = logs or Path(tempfile.mkdtemp(prefix="dyndisc-chaos-logs-"))
        self.target: Target | None = None if backend == "memory" else TARGETS[backend]()

    def __enter__(self) -> Session:
        if self.target is not None:
            self.target.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.target is not None:
            self.target.close()

    @property
    def bounds(self) -> Bounds:
        return BOUNDS if self.target is None else self.target.bounds

    def run(self, seed: int, planted: frozenset[str] = frozenset()) -> Outcome:
        """Run ``seed`` and judge its history. ``planted`` plants a known bug (memory only)."""
        started = time.monotonic()
        if self.target is None:
            plan = make_plan(seed, duration=self.duration, workload=WORKLOAD)
            history = simulate(plan, planted)
        else:
            if planted:
                raise ValueError("bugs can be planted in the simulation (memory) only")
            target = self.target
            plan = make_plan(seed, duration=self.duration, workload=target.workload)
            logs = self.logs / f"seed-{seed}"
            logs.mkdir(parents=True, exist_ok=True)
            history = anyio.run(RealRun(plan, target, logs).run)
        return Outcome(self.backend, seed, history, check(history, self.bounds), time.monotonic() - started)


def quiet_logs() -> None:
    """Keep the library's warnings about the faults we inject out of the summary."""
    logging.basicConfig(level=logging.CRITICAL)
