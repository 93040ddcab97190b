"""Leases, judged from what was observed: when each lease was certainly gone on the server (what the watchers'
invariants hold them to), and that every lease replaced had a cause of its own.

A lease is certainly gone from the first of: a revoke by another client; the grant that replaced it (its
runtime was told it was gone); a clean exit that left nothing of it in the store (read raw when the exit
returned); or its TTL (plus the server's expiry slack) after a kill, a failure, or an exit that left its
records behind, counted again from the server's return when the server went down (or lost its leader) before
that: etcd's new leader gives every lease its whole TTL again (plus an election timeout). On Kubernetes a
replacement lease keeps its id (the hash of the pod's name): an id is gone only until it is granted again.
"""

from __future__ import annotations

from itertools import pairwise
from math import inf

from dyndisc.testing.chaos.history import History, Probe
from dyndisc.testing.chaos.runtimes import (
    WORKER_CUTS,
    Grant,
    Life,
    cut_intervals,
    faults_of,
    renewals,
    ttl_of,
)
from dyndisc.testing.chaos.verdict import Bounds, Violation

#: When a lease was certainly gone on the server, and until when (``None``: for good).
Gone = list[tuple[float, float | None]]

#: Faults after which the server counts every lease's TTL from the start again (etcd's ``Promote``).
SERVER_RESTARTS = ("server_kill", "quorum_loss", "leader_kill")


def exit_probe(history: History, life: Life) -> Probe | None:
    """What the raw store held of ``life`` when its clean exit returned (``None``: it never returned)."""
    return next((p for p in history.probes if p.actor == life.name and p.action == "exit"), None)


def gone_times(history: History, lives: dict[str, Life], bounds: Bounds) -> dict[int, Gone]:
    """For each lease id, when it was certainly gone on the server."""
    signs: list[tuple[float, int]] = [
        (f.start, f.detail["lease"])
        for f in faults_of(history, "revoke")
        if isinstance(f.detail.get("lease"), int)
    ]
    holds: dict[int, list[float]] = {}
    for life in lives.values():
        ttl = ttl_of(history, life)
        for n, grant in enumerate(life.grants):
            holds.setdefault(grant.lease, []).append(grant.end)
            if n:
                signs.append((grant.start, life.grants[n - 1].lease))
        if life.exit is not None and life.grants:
            lease = life.lease_at(life.exit.start) or life.grants[-1].lease
            probe = exit_probe(history, life)
            if probe is not None and not probe.instances:
                signs.append((probe.at, lease))
            else:  # its records stayed: they go with the lease's TTL
                signs.append((expired(history, life.exit.start, ttl, bounds), lease))
        for ended in (life.killed, life.failed):
            if ended is not None and life.grants:
                lease = life.lease_at(ended) or life.grants[-1].lease
                signs.append((expired(history, ended, ttl, bounds), lease))
    found: dict[int, Gone] = {}
    for at, lease in sorted(signs):
        intervals = found.setdefault(lease, [])
        if intervals and (intervals[-1][1] is None or intervals[-1][1] > at) and intervals[-1][0] <= at:
            continue  # gone already
        again = min((h for h in holds.get(lease, ()) if h > at), default=None)
        intervals.append((at, again))
    return found


def expired(history: History, last: float, ttl: float, bounds: Bounds) -> float:
    """When a lease last renewed at ``last`` had certainly expired: its TTL and the server's slack later, or
    as long after the server came back if it went down (or lost its leader) before the lease expired."""
    at = last + ttl + bounds.expiry
    for fault in sorted(history.faults, key=lambda f: f.start):
        if fault.kind not in SERVER_RESTARTS or fault.start >= at:
            continue
        back = fault.end if fault.end is not None else inf  # never back: never expired
        if back > last:
            at = max(at, back + ttl + bounds.expiry)
    return at


def gone_at(intervals: Gone | None, at: float) -> float | None:
    """When the lease went, if it was gone at ``at`` (else ``None``)."""
    for start, end in intervals or ():
        if start <= at and (end is None or at < end):
            return start
    return None


def replacements(history: History, lives: dict[str, Life], bounds: Bounds) -> list[Violation]:
    """**A lease is replaced only with a cause in the history**: a revoke of it by another client, or the
    server's expiry of it, which needs it unrenewed for its TTL (less :attr:`Bounds.renewal_slack`) and (in
    the simulation) a fault that cut its worker off meanwhile: a pause of it, a partition of it or of
    everyone, the server down. Each replacement needs its own cause: a revoke explains one replacement, and
    each replaced lease went unrenewed by itself."""
    revokes = faults_of(history, "revoke")
    used: set[int] = set()
    found: list[Violation] = []
    for life in lives.values():
        cuts = cut_intervals(history, life.name, WORKER_CUTS, history.truth_at)
        ttl = ttl_of(history, life)
        for n in range(1, len(life.grants)):
            old, new = life.grants[n - 1], life.grants[n]
            revoke = next(
                (
                    f
                    for f in revokes
                    if id(f) not in used
                    and f.detail.get("lease") == old.lease
                    and old.start <= f.start <= new.start
                ),
                None,
            )
            if revoke is not None:
                used.add(id(revoke))
                continue
            gap = unrenewed(history, life.name, old, new.start, ttl - bounds.renewal_slack)
            renewed = renewals(history, life.name, old.lease)
            if gap is not None and (
                not bounds.expiry_needs_cut or any(s < gap[1] and e > gap[0] for s, e in cuts)
            ):
                continue
            why = (
                f"unrenewed {gap[1] - gap[0]:.2f}s from t={gap[0]:.3f} with no fault cutting it off"
                if gap is not None
                else "no revoke of it, and renewed at least every "
                f"{ttl - bounds.renewal_slack:.2f}s up to then"
            )
            found.append(
                Violation(
                    "lease replaced only with a cause",
                    f"{life.name} replaced lease {old.lease:x} with {new.lease:x} at t={new.start:.3f} "
                    f"without a cause: {why}",
                    [f"granted t={g.start:.3f} {g.lease:x} (TTL {g.ttl:g})" for g in life.grants[: n + 1]]
                    + [f"renewed at {', '.join(f'{t:.2f}' for t in renewed[-6:])}"],
                )
            )
    return found


def unrenewed(
    history: History, runtime: str, grant: Grant, until: float, at_least: float
) -> tuple[float, float] | None:
    """The first stretch in which ``grant``'s lease went unrenewed for ``at_least`` seconds before ``until``
    (from its grant or a renewal the server answered, to the next or to ``until``), if there is one."""
    times = [grant.end] + [t for t in renewals(history, runtime, grant.lease) if grant.end <= t <= until]
    times.append(until)
    for before, after in pairwise(times):
        if after - before >= at_least:
            return before, after
    return None
