"""The invariants a chaos run must keep, checked over its :class:`~.history.History`.

* **well-formed streams**: a watch starts with a ``Resync``; a ``Removed`` names an instance the watcher held.
* **convergence**: once the faults healed and the workload went quiet, every watcher's set equals the truth,
  within the bound.
* **agreement**: at that quiet point, ``list()``, a watcher started then and every running watcher agree.
* **no phantom**: no watcher ever holds a record that no runtime wrote; none holds an instance longer than the
  bound after its lease is gone server-side (a clean exit, a revoke, a lease the server ended, or a killed
  worker's TTL), unless the watcher itself was cut off then.
* **no loss**: every endpoint a live runtime registered and did not unregister is in the truth, under the
  runtime's current instance id, with the record it last wrote (keys a foreign writer damaged excepted).
* **watchers keep running**: no watcher's process ends on its own, whatever the faults.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dyndisc.testing.chaos.history import History, Operation, Record, Seen


@dataclass(frozen=True)
class Bounds:
    """Seconds each invariant allows."""

    #: From the quiet point to every watcher equal to the truth.
    converge: float
    #: From a lease gone server-side (the exit's revoke done, the revoke, the lease found gone) to no
    #: watcher holding it.
    gone: float
    #: How late a killed worker's lease may end on the server, beyond its TTL (the server's expiry timer).
    expiry: float


@dataclass
class Violation:
    """One broken invariant: which, what happened, and the part of the history that shows it."""

    invariant: str
    detail: str
    evidence: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"[{self.invariant}] {self.detail}"]
        lines += [f"    {line}" for line in self.evidence[:20]]
        if len(self.evidence) > 20:
            lines.append(f"    ... ({len(self.evidence) - 20} more)")
        return "\n".join(lines)


def check(history: History, bounds: Bounds) -> list[Violation]:
    """Every violation of every invariant in ``history`` (empty: the run kept them all)."""
    by_watcher: dict[str, list[Seen]] = {}
    # The judged window ends when the truth was read: what watchers see as the run shuts down is not judged.
    for seen in (s for s in history.seen if s.at <= history.truth_at):
        by_watcher.setdefault(seen.watcher, []).append(seen)
    found: list[Violation] = []
    for name, events in by_watcher.items():
        found += _well_formed(name, events)
    truth = dict(history.truth)
    found += _agreement(history, by_watcher, truth)
    found += _convergence(history, by_watcher, truth, bounds)
    found += _no_phantom(history, by_watcher, bounds)
    found += _no_loss(history, truth)
    found += [
        Violation("watchers keep running", f"{name} ended on its own at t={at:.3f}", [])
        for name, at in sorted(history.died.items())
        if at <= history.truth_at
    ]
    return found


# -- replaying a watcher ---------------------------------------------------------------------------------
def _replay(events: Iterable[Seen], until: float | None = None) -> dict[str, str]:
    state: dict[str, str] = {}
    for seen in events:
        if until is not None and seen.at > until:
            break
        if seen.kind == "resync":
            state = dict(seen.records)
        elif seen.kind == "added":
            state.update(seen.records)
        else:
            for key, _ in seen.records:
                state.pop(key, None)
    return state


def _show(seen: Seen) -> str:
    what = ", ".join(k if not r else f"{k}" for k, r in seen.records[:6])
    more = f" (+{len(seen.records) - 6})" if len(seen.records) > 6 else ""
    return f"t={seen.at:7.3f} {seen.watcher} {seen.kind} [{what}{more}]"


def _well_formed(name: str, events: list[Seen]) -> list[Violation]:
    if events[0].kind != "resync":
        return [
            Violation(
                "well-formed", f"{name}'s first event is {events[0].kind}, not a resync", [_show(events[0])]
            )
        ]
    state: set[str] = set()
    for seen in events:
        if seen.kind == "resync":
            state = {k for k, _ in seen.records}
        elif seen.kind == "added":
            state.update(k for k, _ in seen.records)
        else:
            for key, _ in seen.records:
                if key not in state:
                    return [
                        Violation(
                            "well-formed", f"{name} was told {key} left, but did not hold it", [_show(seen)]
                        )
                    ]
                state.discard(key)
    return []


# -- the quiet point ---------------------------------------------------------------------------------------
def _diff(have: dict[str, str], want: dict[str, str]) -> list[str]:
    lines = [f"lost    {k}" for k in sorted(want.keys() - have.keys())]
    lines += [f"phantom {k} = {have[k][:100]}" for k in sorted(have.keys() - want.keys())]
    lines += [
        f"stale   {k}: {have[k][:80]} != {want[k][:80]}"
        for k in sorted(want.keys() & have.keys())
        if have[k] != want[k]
    ]
    return lines


def _agreement(history: History, by_watcher: dict[str, list[Seen]], truth: dict[str, str]) -> list[Violation]:
    found = []
    late = dict(history.late_watch)
    if late != truth:
        found.append(
            Violation(
                "agreement", "a watcher started at the quiet point disagrees with list()", _diff(late, truth)
            )
        )
    for name, events in by_watcher.items():
        if name in history.gone_watchers:
            continue
        state = _replay(events, history.truth_at)
        want = history.truth_for(name)
        if state != want:
            found.append(
                Violation(
                    "agreement",
                    f"{name} disagrees with list() at t={history.truth_at:.3f}",
                    _diff(state, want),
                )
            )
    return found


def _convergence(
    history: History, by_watcher: dict[str, list[Seen]], truth: dict[str, str], bounds: Bounds
) -> list[Violation]:
    quiet = quiet_point(history)
    found = []
    for name, events in by_watcher.items():
        if name in history.gone_watchers:
            continue
        # The watcher must hold the truth from quiet + bound on: no event after that may change its set.
        deadline = quiet + bounds.converge
        late = [s for s in events if s.at > deadline]
        state_at_deadline = _replay(events, deadline)
        want = history.truth_for(name)
        if state_at_deadline != want:
            found.append(
                Violation(
                    "convergence",
                    f"{name} did not hold the truth {bounds.converge}s after the quiet point (t={quiet:.3f})",
                    _diff(state_at_deadline, want) + [_show(s) for s in late[:5]],
                )
            )
    return found


def convergence_time(history: History) -> float:
    """Seconds from the quiet point to the last change any watcher saw (0 if none came after it)."""
    quiet = quiet_point(history)
    last = max((s.at for s in history.seen if s.watcher not in history.gone_watchers), default=quiet)
    return max(last - quiet, 0.0)


def quiet_point(history: History) -> float:
    """When the last fault healed, the last operation completed and the last killed worker's lease ran out."""
    times = [f.end if f.end is not None else f.start for f in history.faults]
    times += [op.end if op.end is not None else op.start for op in history.operations]
    times += [r.at + history.ttl for r in history.leases if r.state == "killed"]
    return max(times, default=0.0)


# -- phantoms -----------------------------------------------------------------------------------------------
def _written(history: History) -> set[Record]:
    """Every record a runtime tried to write (a write whose answer never came may have been applied)."""
    found: set[Record] = set()
    for op in history.operations:
        if op.action == "write":
            key, record = op.args["record"]
            found.add((key, record))
            if op.ok:
                key, record = op.result
                found.add((key, record))
    return found


def _cut_off(history: History, watcher: str, at: float, slack: float) -> bool:
    """Whether ``watcher`` was cut off (partitioned, paused, or everyone was) around ``at``."""
    for fault in history.faults:
        if (
            fault.target in (watcher, "everyone", "server")
            and fault.start <= at <= (fault.end or fault.start) + slack
        ):
            return True
    return False


#: When a lease was certainly gone on the server, and until when (``None``: for good).
Gone = list[tuple[float, float | None]]


def _gone_times(history: History, bounds: Bounds) -> dict[int, Gone]:
    """For each lease id, the times it was certainly gone on the server.

    An id is gone from its first sign of going (a clean exit's revoke, a revoke, a lease found gone, a killed
    worker's TTL) until a runtime holds it again. On Kubernetes the instance id is the hash of the pod's
    name, so a lease replaced (its resource deleted behind the worker's back, then applied again) keeps its
    id; on every other backend a replacement has a new id, and a gone id is gone for good.
    """
    signs: list[tuple[float, str, int]] = [
        (r.at, r.state, r.instance_id) for r in history.leases if r.instance_id is not None
    ]
    signs += [
        (f.start, "revoked", f.detail["lease"])
        for f in history.faults
        if f.kind == "revoke" and isinstance(f.detail.get("lease"), int)
    ]
    gone: dict[int, Gone] = {}
    since: dict[int, float] = {}
    for at, state, lease in sorted(signs, key=lambda sign: sign[0]):
        if state in ("revoked", "replaced", "killed"):
            start = at + history.ttl + bounds.expiry if state == "killed" else at
            since[lease] = min(since.get(lease, start), start)
        elif state == "held" and lease in since and at >= since[lease]:
            gone.setdefault(lease, []).append((since.pop(lease), at))
    for lease, start in since.items():
        gone.setdefault(lease, []).append((start, None))
    return gone


def _gone_at(intervals: Gone | None, at: float, bound: float) -> float | None:
    """When the lease went, if it has been gone for longer than ``bound`` at ``at`` (else ``None``)."""
    for start, end in intervals or ():
        if start + bound < at and (end is None or at < end):
            return start
    return None


def _no_phantom(history: History, by_watcher: dict[str, list[Seen]], bounds: Bounds) -> list[Violation]:
    written = _written(history)
    gone = _gone_times(history, bounds)
    found: list[Violation] = []
    for name, events in by_watcher.items():
        held: dict[str, tuple[str, float]] = {}  # key -> (record, since)
        for seen in events:
            if seen.kind == "resync":
                held = {
                    k: (r, held[k][1] if k in held and held[k][0] == r else seen.at) for k, r in seen.records
                }
            elif seen.kind == "added":
                for key, record in seen.records:
                    held[key] = (record, seen.at)
            else:
                for key, _ in seen.records:
                    held.pop(key, None)
            for key, (record, _since) in held.items():
                if (key, record) not in written:
                    return [
                        *found,
                        Violation(
                            "no phantom",
                            f"{name} holds a record no runtime wrote: {key}",
                            [_show(seen), record[:200]],
                        ),
                    ]
            for key in held:
                lease = int(key.rsplit("/", 1)[1], 16)
                ended = _gone_at(gone.get(lease), seen.at, bounds.gone)
                if ended is None:
                    continue
                if _cut_off(history, name, ended, bounds.gone):
                    continue
                late = seen.at - ended
                return [
                    *found,
                    Violation(
                        "no phantom",
                        f"{name} still holds {key} at t={seen.at:.3f}, {late:.2f}s after its lease was gone "
                        f"(bound {bounds.gone}s)",
                        [_show(seen)],
                    ),
                ]
        # Held to the end: judged at the truth's time.
        for key in held:
            lease = int(key.rsplit("/", 1)[1], 16)
            ended = _gone_at(gone.get(lease), history.truth_at, bounds.gone)
            if (
                ended is not None
                and name not in history.gone_watchers
                and not _cut_off(history, name, ended, bounds.gone)
            ):
                found.append(
                    Violation(
                        "no phantom", f"{name} still holds {key} at the end, its lease gone at t={ended:.3f}"
                    )
                )
    return found


# -- losses --------------------------------------------------------------------------------------------------
def _no_loss(history: History, truth: dict[str, str]) -> list[Violation]:
    # What each runtime's application asked last, per endpoint (a worker does one step at a time, so its
    # register and unregister calls never overlap): the register call, or None after an unregister.
    asked: dict[tuple[str, str], Operation | None] = {}
    for op in history.operations:
        if op.action == "register":
            asked[(op.actor, op.args["endpoint"])] = op
        elif op.action == "unregister":
            asked[(op.actor, op.args["endpoint"])] = None
    # The record each registration left: the last write the runtime made for it (under a replacement lease
    # too) since the application asked. Writes are the runtime's own, so they can overlap an unregister
    # call; only the application's calls decide what is wanted.
    wanted: dict[tuple[str, str], str | None] = {}
    for (runtime, endpoint), call in asked.items():
        if call is None:
            wanted[(runtime, endpoint)] = None
            continue
        writes = [
            w
            for w in history.operations
            if w.action == "write"
            and w.ok
            and w.actor == runtime
            and w.result[0].rsplit("/", 1)[0] == endpoint
            and w.start >= call.start
        ]
        if writes:
            wanted[(runtime, endpoint)] = max(writes, key=lambda w: w.end or w.start).result[1]
    finished = {r.runtime for r in history.leases if r.state in ("revoked", "killed", "failed")}
    current: dict[str, int | None] = {}
    for report in history.leases:
        current[report.runtime] = report.instance_id
    lost = []
    damaged = set(history.damaged)
    for (runtime, endpoint), record in sorted(wanted.items()):
        if record is None or runtime in finished:
            continue
        lease = current.get(runtime)
        key = f"{endpoint}/{lease:x}" if lease is not None else endpoint
        if key in damaged or any(d.startswith(endpoint + "/") and d in damaged for d in damaged):
            continue
        if truth.get(key) is None:
            lost.append(f"{runtime}: {key} is not in the truth (it last wrote {record[:120]})")
        elif truth[key] != record:
            lost.append(f"{runtime}: {key} holds {truth[key][:120]}, not what it last wrote {record[:120]}")
    return (
        [Violation("no loss", "registrations of live runtimes missing from the truth", lost)] if lost else []
    )
