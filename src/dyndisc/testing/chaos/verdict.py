"""What the checker says: the bounds it judges by, and a violation with the part of the history that shows
it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bounds:
    """Seconds each invariant allows."""

    #: From the quiet point to every watcher equal to the truth.
    converge: float
    #: From a change the server made (an unregistration done, a lease gone) to no watcher holding what left.
    gone: float
    #: How late a killed worker's lease may end on the server, beyond its TTL (the server's expiry timer).
    expiry: float
    #: How much less than its TTL a lease may go unrenewed and still have expired on the server (the
    #: renewal's answer comes a round trip after the server took it).
    renewal_slack: float = 0.1
    #: Whether a lease that went unrenewed past its TTL needs a fault that cut its worker off to explain
    #: it. The simulation has no load to delay a renewal, so yes; on a real machine shared with its servers
    #: a renewal can be late on its own, and the server's expiry is cause enough.
    expiry_needs_cut: bool = True


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
