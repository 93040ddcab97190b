"""Invariants over the store itself, read raw (never through dyndisc): at the quiet point against the oracle,
and when a clean exit or an unregistration returned."""

from __future__ import annotations

import json

from dyndisc.testing.chaos.history import History
from dyndisc.testing.chaos.lease_checks import exit_probe
from dyndisc.testing.chaos.oracle import Allowed, expected, may_stay
from dyndisc.testing.chaos.runtimes import WORKER_CUTS, Life, cut_intervals
from dyndisc.testing.chaos.verdict import Violation


def truth(history: History, lives: dict[str, Life]) -> list[Violation]:
    """**The truth is what the oracle says** at the quiet point (instances: ``truth``; their readiness alone:
    ``readiness as last set``; entries, model cards, event channels: ``entries follow their lease``), and
    every unreadable value there is a foreign write's; an instance under both roots of the dynamo-v1 layout
    has two values it may have."""
    instances, entries = expected(history, lives, set(history.truth_leases))
    damaged = set(history.damaged)
    found: list[Violation] = []
    wrong, readiness = _compare(dict(history.truth), instances, damaged)
    foreign = {f.target for f in history.faults if f.kind.startswith("foreign_write")}
    wrong += [
        f"unreadable {k}: no foreign write put it there" for k in history.truth_unreadable if k not in foreign
    ]
    # Both copies of a draining move half done (dynamo-v1) are there only while a call of unknown outcome
    # may have left them: each must be a value the oracle allows.
    truth_ = dict(history.truth)
    wrong += [
        f"{k} is under both roots: {truth_.get(k, '')[:90]} and {v[:90]}"
        for k, v in history.truth_doubled
        if not (v in instances.get(k, ()) and truth_.get(k) in instances.get(k, ()))
    ]
    if wrong:
        found.append(Violation("truth", "the store does not hold what the operations leave", wrong))
    if readiness:
        found.append(
            Violation(
                "readiness as last set", "instances whose readiness is not the one last asked for", readiness
            )
        )
    wrong_entries, _ = _compare(dict(history.truth_entries), entries, set(), readiness_apart=False)
    if wrong_entries:
        found.append(
            Violation(
                "entries follow their lease",
                "entries, model cards or event channels that are not what their writers' leases leave",
                wrong_entries,
            )
        )
    return found


def _compare(
    have: dict[str, str], allowed: Allowed, damaged: set[str], *, readiness_apart: bool = True
) -> tuple[list[str], list[str]]:
    wrong: list[str] = []
    readiness: list[str] = []
    for key in sorted(allowed.keys() | have.keys()):
        if key in damaged:
            continue
        value = have.get(key)
        options = allowed.get(key, {None})
        if value in options:
            continue
        wanted = " or ".join("absent" if o is None else o[:100] for o in sorted(options, key=str))
        line = f"{key}: {'absent' if value is None else value[:100]}, expected {wanted}"
        if (
            readiness_apart
            and value is not None
            and any(o is not None and _but_readiness(value, o) for o in options)
        ):
            readiness.append(line)
        else:
            wrong.append(line)
    return wrong, readiness


def _but_readiness(one: str, other: str) -> bool:
    """Whether two records differ in their readiness alone."""
    a, b = json.loads(one), json.loads(other)
    a.pop("readiness", None)
    b.pop("readiness", None)
    return bool(a == b)


def no_loss(history: History, lives: dict[str, Life]) -> list[Violation]:
    """**No loss**: every endpoint a live runtime registered and did not unregister is in the truth, under the
    runtime's current lease id (keys a foreign writer damaged excepted), whatever the server's lease list
    says. (Whether its record is the one last asked for is the truth's invariant.)"""
    instances, _ = expected(history, lives, None)
    truth_ = dict(history.truth)
    damaged = set(history.damaged)
    lost = [
        f"{key}: absent, expected " + " or ".join(sorted(o[:100] for o in options if o is not None))
        for key, options in sorted(instances.items())
        if None not in options and key not in truth_ and key not in damaged
    ]
    return (
        [Violation("no loss", "registrations of live runtimes missing from the truth", lost)] if lost else []
    )


def clean_exits(history: History, lives: dict[str, Life]) -> list[Violation]:
    """**A clean exit removes all of the runtime's records at once**, judged from the store read raw when the
    exit returned: no instance under its leases, no entry it wrote bound to its lease. A worker cut off (or
    everyone, or the server down) during its exit cannot revoke: its records go with its TTL instead (the
    watchers' and the truth's invariants judge that)."""
    found = []
    for life in lives.values():
        probe = exit_probe(history, life)
        if life.exit is None or probe is None:
            continue
        cuts = cut_intervals(history, life.name, WORKER_CUTS, history.truth_at)
        if any(s <= probe.at and e >= life.exit.start for s, e in cuts):
            continue
        stay = may_stay(history, life, life.exit.start)
        left = probe.instances + [e for e in probe.entries if e not in stay]
        if left:
            found.append(
                Violation(
                    "clean exit",
                    f"{life.name}'s clean exit (t={life.exit.start:.3f}-{probe.at:.3f}) left records in the "
                    "store",
                    left,
                )
            )
    return found


def unregistered_in_store(history: History) -> list[Violation]:
    """**An unregistered endpoint is gone** from the store when its ``unregister()`` returns (read raw
    then)."""
    return [
        Violation(
            "unregistered stays gone",
            f"{p.actor}'s unregister() of {p.endpoint} returned at t={p.at:.3f}, and the store still holds "
            "it",
            p.instances,
        )
        for p in history.probes
        if p.action == "unregister" and p.instances
    ]
