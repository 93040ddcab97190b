"""The invariants a chaos run must keep, checked over its :class:`~.history.History`.

The truth is the store read **raw**, by the run's own client and parser (:mod:`~.raw`), never through
dyndisc; what it must hold comes from the operation log alone (:mod:`~.oracle`); leases are judged from the
runtime's calls to its backend and the server's answers (:mod:`~.runtimes`), never from what the runtime
says of itself. The bounds are :class:`~.verdict.Bounds` (the simulation's: ``converge`` 1 s, ``gone`` 1 s,
``expiry`` 0.5 s; the real servers': 5 s, 3 s, 2 s).

Over the store (:mod:`~.store_checks`):

* **truth**: at the quiet point the raw store holds what the oracle says: every endpoint registered and not
  unregistered by a live runtime whose lease the server holds, with the record last asked for, under its
  current lease id (an operation of unknown outcome may or may not have landed); nothing else but foreign
  writes, and every unreadable value is one. An instance under both roots of the dynamo-v1 layout (a move
  to or from draining half done) is read as its draining copy, and both copies must be values it may have.
* **readiness as last set**: an instance's readiness (``ready`` / ``draining``) is the one last asked for.
* **entries follow their lease**: metadata entries, model cards and event channels are there exactly while
  their writer's lease is (an unbound entry until it is deleted), their keys and values rendered for it.
* **no loss**: every endpoint a live runtime registered and did not unregister is there, under its current
  lease id, with its last record (whatever the server's lease list says).
* **clean exit**: when a clean exit returns, the store holds nothing of the runtime (no instance under its
  leases, no entry bound to it) at once; unless the worker, everyone or the server was cut off then (its
  records then go with its TTL, which the watchers' invariants bound).
* **unregistered stays gone** (store side): when ``unregister()`` returns, the store holds no instance of
  that endpoint under the runtime's leases.

Over leases (:mod:`~.lease_checks`):

* **lease replaced only with a cause**: every lease a runtime replaces was revoked by another client, or went
  unrenewed for its TTL (less ``renewal_slack``, 0.1 s) while a fault cut its worker off (a pause of it, a
  partition of it or of everyone, the server down); on real servers an unrenewed TTL is cause enough (the
  server's expiry). Each replacement needs its own cause.

Over what watchers saw (:mod:`~.watcher_checks`):

* **well-formed**: a watch starts with a ``Resync``; a ``Removed`` names an instance the watcher held.
* **no event delivered twice**: no ``Added`` of exactly the record the watcher holds, with no write of it in
  between.
* **removal reasons**: a ``Removed`` that gives a reason gives one with a cause in the history before it
  (``left``: unregister, clean exit, revoke, replacement; ``expired``: kill, failure, a cut of the worker;
  ``unreadable``: a foreign overwrite; ``not-ready``: kill, pause, cut, exit).
* **unregistered stays gone** (watchers): once ``unregister()`` returned, no watcher holds the endpoint's
  instance after ``gone`` (counted from the end of any fault that cut the watcher off meanwhile), and none
  gets it back until the runtime registers it again.
* **convergence**: ``converge`` after the quiet point, every running watcher holds the truth.
* **agreement**: at the quiet point dyndisc's ``list()``, a dyndisc watcher started then and every running
  watcher hold the truth.
* **no phantom**: no watcher holds a record no runtime wrote, nor an instance for longer than ``gone`` after
  its lease was certainly gone on the server (a revoke; a replacement; a clean exit that left the store
  clean; TTL + ``expiry`` after a kill, a failure, or an exit that did not), counted from the end of any
  fault that cut the watcher off meanwhile.
* **watchers keep running**: no watcher's process ends on its own, whatever the faults.
"""

from __future__ import annotations

from dyndisc.testing.chaos.history import History, Seen
from dyndisc.testing.chaos.lease_checks import exit_probe, replacements
from dyndisc.testing.chaos.replay import Stream, replay
from dyndisc.testing.chaos.runtimes import lives, ttl_of
from dyndisc.testing.chaos.store_checks import clean_exits, no_loss, truth, unregistered_in_store
from dyndisc.testing.chaos.verdict import Bounds, Violation
from dyndisc.testing.chaos.watcher_checks import (
    agreement,
    convergence,
    no_phantom,
    no_repeats,
    removal_reasons,
    unregistered_gone,
    well_formed,
)

__all__ = ["Bounds", "Violation", "check", "convergence_time", "quiet_point"]


def check(history: History, bounds: Bounds) -> list[Violation]:
    """Every violation of every invariant in ``history`` (empty: the run kept them all)."""
    by_watcher: dict[str, list[Seen]] = {}
    # The judged window ends when the truth was read: what watchers see as the run shuts down is not judged.
    for seen in history.seen:
        if seen.at <= history.truth_at:
            by_watcher.setdefault(seen.watcher, []).append(seen)
    streams: dict[str, Stream] = {name: replay(name, events) for name, events in by_watcher.items()}
    runtimes = lives(history)
    found: list[Violation] = []
    found += well_formed(streams)
    found += truth(history, runtimes)
    found += no_loss(history, runtimes)
    found += clean_exits(history, runtimes)
    found += unregistered_in_store(history)
    found += replacements(history, runtimes, bounds)
    found += no_repeats(history, streams)
    found += removal_reasons(history, streams, runtimes)
    found += unregistered_gone(history, streams, runtimes, bounds)
    found += agreement(history, streams)
    found += convergence(history, streams, bounds, quiet_point(history))
    found += no_phantom(history, streams, runtimes, bounds)
    found += [
        Violation("watchers keep running", f"{name} ended on its own at t={at:.3f}", [])
        for name, at in sorted(history.died.items())
        if at <= history.truth_at
    ]
    return found


def quiet_point(history: History) -> float:
    """When the run went quiet: the last fault healed, the last operation completed, the last lease a
    runtime left behind (killed, failed, or a clean exit that left records) ran out on its TTL, and the
    runtime whose lease another client revoked renewed it (half its TTL) and could replace it."""
    times = [f.end if f.end is not None else f.start for f in history.faults]
    times += [op.end if op.end is not None else op.start for op in history.operations]
    runtimes = lives(history)
    by_lease = {g.lease: life for life in runtimes.values() for g in life.grants}
    for life in runtimes.values():
        ttl = ttl_of(history, life)
        times += [t + ttl for t in (life.killed, life.failed) if t is not None]
        if life.exit is not None:
            probe = exit_probe(history, life)
            if probe is None or probe.instances or probe.entries:
                times.append(life.exit.start + ttl)
    for fault in history.faults:
        owner = by_lease.get(fault.detail.get("lease", -1)) if fault.kind == "revoke" else None
        if owner is not None:
            times.append(fault.start + ttl_of(history, owner) / 2 + 1.0)
    return max(times, default=0.0)


def convergence_time(history: History) -> float:
    """Seconds from the quiet point to the last change any watcher saw (0 if none came after it)."""
    quiet = quiet_point(history)
    last = max((s.at for s in history.seen if s.watcher not in history.gone_watchers), default=quiet)
    return max(last - quiet, 0.0)
