"""A watcher's events replayed as a client applies them: what it held, from when to when, and what was wrong
with the stream itself (a watch that does not begin with a ``Resync``, a ``Removed`` of something it did not
hold, an ``Added`` of exactly what it held).

Holdings are intervals, so that every invariant over what watchers held costs one pass over the events, not
one pass over the held set per event (a run registers thousands of endpoints in some seeds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dyndisc.testing.chaos.history import Seen


@dataclass
class Holding:
    """``watcher`` held ``key`` with ``record`` from ``start`` to ``end`` (``None``: to the end)."""

    key: str
    record: str
    start: float
    end: float | None
    since: Seen
    #: Whether it replaced a holding of the same key with another record (an upsert), rather than began
    #: while the watcher held nothing of the key.
    upsert: bool = False


@dataclass
class Stream:
    """One watcher's events, replayed."""

    watcher: str
    events: list[Seen]
    holdings: list[Holding] = field(default_factory=list)
    #: Every ``Removed``: the event, the key and the reason it gave (``""``: none).
    removals: list[tuple[Seen, str, str]] = field(default_factory=list)
    #: Every ``Added`` of exactly the record the watcher held: the event and the holding it repeated.
    repeats: list[tuple[Seen, Holding]] = field(default_factory=list)
    #: Why the stream is not well-formed, with the event that shows it (the first such).
    malformed: tuple[str, Seen] | None = None

    def by_key(self) -> dict[str, list[Holding]]:
        """The holdings of each key, in time order."""
        found: dict[str, list[Holding]] = {}
        for holding in self.holdings:
            found.setdefault(holding.key, []).append(holding)
        return found


def replay(watcher: str, events: list[Seen]) -> Stream:
    """Replay ``events`` (one watcher's, in order)."""
    stream = Stream(watcher, events)
    if events and events[0].kind != "resync":
        stream.malformed = (f"{watcher}'s first event is {events[0].kind}, not a resync", events[0])
    held: dict[str, Holding] = {}

    def open_(key: str, record: str, seen: Seen, upsert: bool = False) -> None:
        holding = held[key] = Holding(key, record, seen.at, None, seen, upsert)
        stream.holdings.append(holding)

    for seen in events:
        if seen.kind == "resync":
            fresh = dict(seen.records)
            changed = [k for k, h in held.items() if fresh.get(k) != h.record]
            for key in changed:
                held.pop(key).end = seen.at
            for key, record in fresh.items():
                if key not in held:
                    open_(key, record, seen, upsert=key in changed)
        elif seen.kind == "added":
            for key, record in seen.records:
                before = held.get(key)
                if before is not None and before.record == record:
                    stream.repeats.append((seen, before))
                    continue
                if before is not None:
                    before.end = seen.at
                open_(key, record, seen, upsert=before is not None)
        else:
            for key, reason in seen.records:
                gone = held.pop(key, None)
                if gone is None:
                    if stream.malformed is None:
                        stream.malformed = (f"{watcher} was told {key} left, but did not hold it", seen)
                    continue
                gone.end = seen.at
                stream.removals.append((seen, key, reason))
    return stream


def state_at(events: Iterable[Seen], until: float) -> dict[str, str]:
    """What a watcher held once it had applied its events up to ``until``."""
    state: dict[str, str] = {}
    for seen in events:
        if seen.at > until:
            break
        if seen.kind == "resync":
            state = dict(seen.records)
        elif seen.kind == "added":
            state.update(seen.records)
        else:
            for key, _ in seen.records:
                state.pop(key, None)
    return state


def show(seen: Seen) -> str:
    """One event, for the evidence of a violation."""
    what = ", ".join(k for k, _ in seen.records[:6])
    more = f" (+{len(seen.records) - 6})" if len(seen.records) > 6 else ""
    return f"t={seen.at:7.3f} {seen.watcher} {seen.kind} [{what}{more}]"


def diff(have: dict[str, str], want: dict[str, str]) -> list[str]:
    """How ``have`` differs from ``want``: lost, phantom and stale keys."""
    lines = [f"lost    {k}" for k in sorted(want.keys() - have.keys())]
    lines += [f"phantom {k} = {have[k][:100]}" for k in sorted(have.keys() - want.keys())]
    lines += [
        f"stale   {k}: {have[k][:80]} != {want[k][:80]}"
        for k in sorted(want.keys() & have.keys())
        if have[k] != want[k]
    ]
    return lines
