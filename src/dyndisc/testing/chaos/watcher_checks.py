"""Invariants over what every watcher saw, each replayed as a client applies its events
(:mod:`~.replay`), against the raw truth and what the history shows of the runtimes."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from dyndisc.testing.chaos.history import History, Record, Seen, endpoint_of_key, lease_of_key
from dyndisc.testing.chaos.lease_checks import gone_times
from dyndisc.testing.chaos.oracle import bulk_endpoints
from dyndisc.testing.chaos.replay import Stream, diff, show, state_at
from dyndisc.testing.chaos.runtimes import (
    WATCHER_CUTS,
    WORKER_CUTS,
    Life,
    cut_intervals,
    faults_of,
    owners,
    renewals,
    visible_by,
)
from dyndisc.testing.chaos.verdict import Bounds, Violation


def well_formed(streams: dict[str, Stream]) -> list[Violation]:
    """**Well-formed streams**: a watch starts with a ``Resync``; a ``Removed`` names an instance it held."""
    return [
        Violation("well-formed", s.malformed[0], [show(s.malformed[1])])
        for s in streams.values()
        if s.malformed is not None
    ]


def no_repeats(history: History, streams: dict[str, Stream]) -> list[Violation]:
    """**No event delivered twice**: no ``Added`` of exactly the record the watcher holds, unless the store
    was written meanwhile (a write that changed only what records do not compare, ``registered_at``)."""
    writes: dict[str, list[float]] = {}
    for op in history.operations:
        if op.action == "write":
            writes.setdefault(op.args["record"][0], []).append(op.start)
    for times in writes.values():
        times.sort()
    found = []
    for stream in streams.values():
        for seen, held in stream.repeats:
            times = writes.get(_key(seen), [])
            # Any write of the key after the watcher got what it holds is a change it may be told of.
            if bisect_right(times, seen.at) > bisect_right(times, held.start):
                continue
            found.append(
                Violation(
                    "no event delivered twice",
                    f"{stream.watcher} was sent {_key(seen)} again, unchanged, with no write of it since "
                    f"t={held.start:.3f}",
                    [show(held.since), show(seen)],
                )
            )
            break
    return found


def _key(seen: Seen) -> str:
    return seen.records[0][0]


def removal_reasons(history: History, streams: dict[str, Stream], lives: dict[str, Life]) -> list[Violation]:
    """**Removal reasons are right** where the watch gives one: ``left`` after an unregistration, a clean
    exit, a revoke or a replacement of the lease; ``expired`` after a kill, a failure, or a fault that cut the
    worker off (a clean exit among one); ``unreadable`` after a foreign overwrite of the key; ``not-ready``
    (Kubernetes) after a kill, a pause, a cut or an exit."""
    by_lease = owners(lives)
    overwrites: dict[str, list[float]] = {}
    for fault in faults_of(history, "foreign_write"):
        if fault.detail.get("damaged"):
            overwrites.setdefault(fault.detail["damaged"], []).append(fault.start)
    unregisters: dict[tuple[str, str], list[float]] = {}
    for op in history.operations:
        if op.action == "unregister":
            unregisters.setdefault((op.actor, op.args["endpoint"]), []).append(op.start)
    found = []
    for stream in streams.values():
        for seen, key, reason in stream.removals:
            if not reason:
                continue
            causes = _causes(history, key, by_lease.get(lease_of_key(key)), overwrites, unregisters)
            if any(kind == reason and at <= seen.at for kind, at in causes):
                continue
            found.append(
                Violation(
                    "removal reasons",
                    f"{stream.watcher} was told {key} left for {reason!r} at t={seen.at:.3f}",
                    [
                        show(seen),
                        "causes before it: " + (", ".join(f"{k}@{a:.3f}" for k, a in causes) or "none"),
                    ],
                )
            )
            break
    return found


def _causes(
    history: History,
    key: str,
    life: Life | None,
    overwrites: dict[str, list[float]],
    unregisters: dict[tuple[str, str], list[float]],
) -> list[tuple[str, float]]:
    """Every reason ``key`` could have left for, with the time its cause started."""
    found = [("unreadable", at) for at in overwrites.get(key, ())]
    if life is None:
        return found
    lease, endpoint = lease_of_key(key), endpoint_of_key(key)
    cuts = cut_intervals(history, life.name, WORKER_CUTS, history.truth_at)
    found += [("left", at) for at in unregisters.get((life.name, endpoint), ())]
    found += [("left", f.start) for f in faults_of(history, "revoke") if f.detail.get("lease") == lease]
    for n, grant in enumerate(life.grants):
        if n and life.grants[n - 1].lease == lease:
            # Replaced: revoked once the new lease was granted (left), or lost because it ran out on the
            # server (expired: from its last renewal on; whether that loss had a cause of its own is the
            # replacement invariant's to judge). etcd-cluster seed 2 in CI.
            renewed = renewals(history, life.name, lease)
            found += [("left", grant.start), ("expired", renewed[-1] if renewed else life.grants[n - 1].end)]
    found += [(kind, start) for start, _ in cuts for kind in ("expired", "not-ready")]
    for ended in (life.killed, life.failed):
        if ended is not None:
            found += [("expired", ended), ("not-ready", ended), ("left", ended)]
    if life.exit is not None:
        found += [("left", life.exit.start), ("not-ready", life.exit.start)]
        if any(s <= (life.exit.end or history.truth_at) and e >= life.exit.start for s, e in cuts):
            found.append(("expired", life.exit.start))
    return found


def agreement(history: History, streams: dict[str, Stream]) -> list[Violation]:
    """**Agreement** at the quiet point: dyndisc's ``list()``, a dyndisc watcher started then, and every
    running watcher hold what the raw truth holds."""
    truth = dict(history.truth)
    found = []
    for what, records in (
        ("list()", history.listed),
        ("a watcher started at the quiet point", history.late_watch),
    ):
        if dict(records) != truth:
            found.append(
                Violation("agreement", f"{what} disagrees with the truth", diff(dict(records), truth))
            )
    for name, stream in streams.items():
        if name in history.gone_watchers:
            continue
        want = history.truth_for(name)
        state = state_at(stream.events, history.truth_at)
        if state != want:
            found.append(
                Violation(
                    "agreement",
                    f"{name} disagrees with the truth at t={history.truth_at:.3f}",
                    diff(state, want),
                )
            )
    return found


def convergence(
    history: History, streams: dict[str, Stream], bounds: Bounds, quiet: float
) -> list[Violation]:
    """**Convergence**: from the quiet point plus the bound on, every running watcher holds the truth."""
    deadline = quiet + bounds.converge
    found = []
    for name, stream in streams.items():
        if name in history.gone_watchers:
            continue
        state = state_at(stream.events, deadline)
        want = history.truth_for(name)
        if state != want:
            late = [show(s) for s in stream.events if s.at > deadline][:5]
            found.append(
                Violation(
                    "convergence",
                    f"{name} did not hold the truth {bounds.converge}s after the quiet point (t={quiet:.3f})",
                    diff(state, want) + late,
                )
            )
    return found


def _written(history: History) -> set[Record]:
    """Every record a runtime tried to write (a write whose answer never came may have been applied)."""
    found: set[Record] = set()
    for op in history.operations:
        if op.action == "write":
            key, record = op.args["record"]
            found.add((key, record))
            if op.ok and op.result:
                found.add((op.result[0], op.result[1]))
    return found


def no_phantom(
    history: History, streams: dict[str, Stream], lives: dict[str, Life], bounds: Bounds
) -> list[Violation]:
    """**No phantom**: no watcher holds a record no runtime wrote, nor an instance longer than the bound after
    its lease was certainly gone on the server (see :func:`~.lease_checks.gone_times`), the bound counted from
    the end of any fault that cut the watcher off meanwhile."""
    written = _written(history)
    gone = gone_times(history, lives, bounds)
    found: list[Violation] = []
    for name, stream in streams.items():
        cuts = cut_intervals(history, name, WATCHER_CUTS, history.truth_at)
        for holding in stream.holdings:
            if (holding.key, holding.record) not in written:
                found.append(
                    Violation(
                        "no phantom",
                        f"{name} holds a record no runtime wrote: {holding.key}",
                        [show(holding.since), holding.record[:200]],
                    )
                )
                break
            end = holding.end if holding.end is not None else history.truth_at
            if holding.end is None and name in history.gone_watchers:
                continue
            for start, again in gone.get(lease_of_key(holding.key), ()):
                deadline = visible_by(cuts, start, bounds.gone)
                until = (
                    again if again is not None else float("inf")
                )  # held again (Kubernetes): no longer gone
                if holding.start < until and min(end, until) > deadline:
                    found.append(
                        Violation(
                            "no phantom",
                            f"{name} held {holding.key} until t={end:.3f}, its lease gone since "
                            f"t={start:.3f} (bound {bounds.gone}s: t={deadline:.3f})",
                            [show(holding.since)],
                        )
                    )
                    break
            else:
                continue
            break
    return found


def unregistered_gone(
    history: History, streams: dict[str, Stream], lives: dict[str, Life], bounds: Bounds
) -> list[Violation]:
    """**An unregistered endpoint stays gone**: once ``unregister()`` returned, no watcher holds it past the
    bound (counted from the end of any fault that cut the watcher off meanwhile), and none gets it back
    until the runtime registers the endpoint again."""
    registers: dict[tuple[str, str], list[float]] = {}
    for op in history.operations:
        if op.action == "register":
            registers.setdefault((op.actor, op.args["endpoint"]), []).append(op.start)
        elif op.action == "bulk":
            for endpoint in bulk_endpoints(op.args):
                registers.setdefault((op.actor, endpoint), []).append(op.start)
    by_key = {name: stream.by_key() for name, stream in streams.items()}
    found: list[Violation] = []
    for op in history.operations:
        if op.action != "unregister" or not op.ok or op.end is None or op.actor not in lives:
            continue
        endpoint = op.args["endpoint"]
        again = registers.get((op.actor, endpoint), [])
        index = bisect_left(again, op.start)
        until = again[index] if index < len(again) else float("inf")
        keys = [f"{endpoint}/{lease:x}" for lease in lives[op.actor].leases_during(op.start, op.end)]
        for name, holdings in by_key.items():
            if history.scopes.get(name, endpoint) != endpoint:
                continue
            cuts = cut_intervals(history, name, WATCHER_CUTS, history.truth_at)
            deadline = visible_by(cuts, op.end, bounds.gone)
            # A watcher cut off meanwhile may get a backlog of older events at once (a paused one): the order
            # it sees is the store's, but not the times; only one that was not can be caught re-adding early.
            prompt = not any(s <= deadline and e >= op.start for s, e in cuts)
            for key in keys:
                after = [
                    h for h in holdings.get(key, ()) if h.start < until and (h.end is None or h.end > op.end)
                ]
                # Registered again before the watcher had to let it go: nothing to hold it to.
                late = [
                    h
                    for h in after
                    if deadline < until and (h.end if h.end is not None else history.truth_at) > deadline
                ]
                if late and not (late[0].end is None and name in history.gone_watchers):
                    found.append(
                        Violation(
                            "unregistered stays gone",
                            f"{name} still held {key} at t={deadline:.3f}, unregistered at t={op.end:.3f}",
                            [show(h.since) for h in late[:3]],
                        )
                    )
                elif prompt and any(h.upsert is False for h in after[1:]):
                    found.append(
                        Violation(
                            "unregistered stays gone",
                            f"{name} got {key} back after it left, unregistered at t={op.end:.3f} and not "
                            "registered again",
                            [show(h.since) for h in after[:3]],
                        )
                    )
    return found
