"""What a history says of each runtime and each actor, read from what was observed rather than from what the
runtime said of itself: its leases come from its calls to its backend (every grant, every renewal the server
answered), its end from the harness (a clean exit it asked for, a kill it made, a runtime that stopped on its
own), and when an actor was cut off from the server from the nemesis's faults.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from dyndisc.testing.chaos.history import Fault, History, Operation

#: Faults of one server of a cluster (``nats-cluster``): its clients are cut off until they leave it.
MEMBER_CUTS = ("member_kill", "member_partition")
#: Faults that cut a worker off from the server (its keep-alives and writes do not arrive).
WORKER_CUTS = ("partition", "pause", "server_kill", "quorum_loss", "leader_kill", *MEMBER_CUTS)
#: Faults that hold a watcher's view back (it cannot hear changes, or resumes from a fresh snapshot).
WATCHER_CUTS = (
    "partition",
    "pause_watcher",
    "server_kill",
    "quorum_loss",
    "leader_kill",
    "break_watches",
    "compact",
    *MEMBER_CUTS,
)
#: Targets that stand for every actor.
EVERYONE = ("everyone", "server")

Interval = tuple[float, float]


@dataclass(frozen=True)
class Grant:
    """A lease a runtime was granted: its id and TTL, and when the call was made and answered."""

    lease: int
    ttl: float
    start: float
    end: float


@dataclass
class Life:
    """One runtime's life as the history shows it."""

    name: str
    grants: list[Grant] = field(default_factory=list)
    #: Whether its start completed (it held a lease and ran).
    started: bool = False
    #: Its clean exit (the call), if the application made one.
    exit: Operation | None = None
    #: When the harness killed it, or it stopped on its own (a permanent error, its lease policy).
    killed: float | None = None
    failed: float | None = None

    @property
    def alive(self) -> bool:
        """Whether it runs at the end: started, and not exited, killed or failed."""
        return self.started and self.exit is None and self.killed is None and self.failed is None

    @property
    def ended(self) -> float | None:
        """When it stopped running, if it did."""
        times = [t for t in (self.killed, self.failed) if t is not None]
        if self.exit is not None:
            times.append(self.exit.start)
        return min(times, default=None)

    @property
    def lease(self) -> int | None:
        """The lease it holds last."""
        return self.grants[-1].lease if self.grants else None

    @property
    def ttl(self) -> float | None:
        return self.grants[-1].ttl if self.grants else None

    def leases_during(self, start: float, end: float | None) -> set[int]:
        """The leases it held at some time in ``[start, end]`` (``end`` ``None``: to the end)."""
        held = set()
        for n, grant in enumerate(self.grants):
            until = self.grants[n + 1].end if n + 1 < len(self.grants) else None
            if grant.end <= (end if end is not None else float("inf")) and (until is None or until >= start):
                held.add(grant.lease)
        return held

    def lease_at(self, at: float) -> int | None:
        """The lease it held at ``at`` (the last one granted by then)."""
        found = None
        for grant in self.grants:
            if grant.end <= at:
                found = grant.lease
        return found


def lives(history: History) -> dict[str, Life]:
    """Every runtime of the run, by name."""
    found: dict[str, Life] = {}

    def life(name: str) -> Life:
        return found.setdefault(name, Life(name))

    for op in history.operations:
        if op.action == "grant" and op.ok:
            lease, ttl = op.result
            life(op.actor).grants.append(Grant(int(lease), float(ttl), op.start, op.end or op.start))
        elif op.action == "start" and op.ok:
            life(op.actor).started = True
        elif op.action == "exit" and life(op.actor).exit is None:
            life(op.actor).exit = op
    for fault in history.faults:
        if fault.kind == "kill" and fault.target in found:
            life(fault.target).killed = min(fault.start, found[fault.target].killed or fault.start)
    for report in history.leases:
        if report.state == "failed" and report.runtime in found:
            life(report.runtime).failed = report.at
    return found


def owners(all_lives: dict[str, Life]) -> dict[int, Life]:
    """The runtime that was granted each lease (on Kubernetes, one id for every lease of a pod)."""
    return {grant.lease: life for life in all_lives.values() for grant in life.grants}


def ttl_of(history: History, life: Life | None) -> float:
    """The TTL of ``life``'s lease (as its server granted it), else the run's."""
    return (life.ttl if life is not None else None) or history.ttl


def cut_intervals(history: History, actor: str, kinds: tuple[str, ...], until: float) -> list[Interval]:
    """When ``actor`` was cut off by a fault of ``kinds`` (its own, its process's, or everyone's), merged;
    an instant fault counts as an instant, one never healed lasts until ``until``."""
    spans = sorted(
        (f.start, f.end if f.end is not None else until if f.kind not in _INSTANT else f.start)
        for f in history.faults
        if f.kind in kinds
        and (f.target == actor or f.target in EVERYONE or actor in f.detail.get("workers", ()))
    )
    merged: list[Interval] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


_INSTANT = ("break_watches", "compact")


def visible_by(cuts: list[Interval], at: float, bound: float) -> float:
    """When a change made at ``at`` must be seen by an actor cut off during ``cuts``: ``bound`` after it,
    or ``bound`` after the end of every cut that overlaps the wait."""
    deadline = at + bound
    for start, end in cuts:
        if start <= deadline and end >= at:
            deadline = max(deadline, end + bound)
    return deadline


def renewals(history: History, runtime: str, lease: int) -> list[float]:
    """When the server answered the renewals of ``runtime``'s ``lease``, in order."""
    return history.renewals.get(f"{runtime}/{lease:x}", [])


def last_before(times: list[float], at: float) -> float | None:
    """The last of the sorted ``times`` at or before ``at``."""
    index = bisect_right(times, at)
    return times[index - 1] if index else None


def faults_of(history: History, kind: str) -> list[Fault]:
    """Every fault of ``kind``."""
    return [f for f in history.faults if f.kind == kind]
