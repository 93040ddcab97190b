"""What ``dyndisc doctor`` reports, and what each backend adds to it.

The doctor (:mod:`dyndisc.cli.doctor`) runs the checks every backend shares; a backend contributes its own
through :class:`BackendDoctor` (``backend.doctor()``): checks before the shared ones (Kubernetes:
credentials, the CRD, the Role), its clock check, and the fixes for the errors it raises. It sits with the
backends, below the command line that runs the doctor, and depends on nothing else in dyndisc, so every
backend can describe its checks without importing the doctor.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class Status(enum.StrEnum):
    """The outcome of one check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass
class Check:
    """One line of the report: what was checked, how it went, and what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class Report:
    """Every check of one ``doctor`` run."""

    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return all(c.status is not Status.FAIL for c in self.checks)

    def add(self, name: str, status: Status, detail: str, fix: str | None = None) -> Check:
        """Record a check and return it."""
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check

    def find(self, name: str) -> Check | None:
        """The check called ``name``, if it ran."""
        return next((c for c in self.checks if c.name == name), None)

    def render(self) -> str:
        """The human-readable report."""
        lines = [f"dyndisc doctor: {self.backend} backend"]
        for c in self.checks:
            lines.append(f"[{c.status.value:^4}] {c.name}: {c.detail}")
            if c.fix:
                lines.append(f"       fix: {c.fix}")
        failed = sum(c.status is Status.FAIL for c in self.checks)
        warned = sum(c.status is Status.WARN for c in self.checks)
        lines.append(
            "all checks passed" if not failed and not warned else f"{failed} failed, {warned} warning(s)"
        )
        return "\n".join(lines)


#: What an error says when the server did not answer (the fix is then :attr:`BackendDoctor.reach_fix`).
NO_ANSWER = ("unreachable", "did not answer", "not reachable", "no answer", "cannot connect")


#: Clock difference from which a skew is reported, in seconds.
SKEW_WARNING = 1.0


class BackendDoctor:
    """A backend's part of ``dyndisc doctor``; the base class adds nothing but a skipped clock check."""

    #: ``(part of an error message, what to do)`` for the errors this backend raises.
    fixes: Sequence[tuple[str, str]] = ()
    #: What to do when the server does not answer, in this backend's words (the variable that says where
    #: it is).
    reach_fix = "check that the server is up and reachable from here"

    async def preflight(self, report: Report, timeout: float) -> bool:
        """Checks that run before the shared ones; ``False`` when the shared ones would be pointless."""
        return True

    def no_lease_reason(self) -> str | None:
        """Why this process holds no lease (so the lease round trip is skipped), or ``None``."""
        return None

    async def check_server(self, report: Report, timeout: float) -> None:
        """Checks of the server itself once it answers (etcd: its version); none by default."""

    async def check_clock(self, report: Report) -> None:
        """Say whether lease expiry depends on this host's clock, and how far off it is where measurable."""
        report.add("clock", Status.SKIP, "no clock check for this backend")

    def fix_for(self, message: str) -> str | None:
        """The fix for an error message, when one is known."""
        found = next((fix for pattern, fix in self.fixes if pattern in message), None)
        if found is None and any(said in message for said in NO_ANSWER):
            return self.reach_fix
        return found


class ServerClockDoctor(BackendDoctor):
    """For stores whose server times the leases: this host's clock cannot make a lease expire early."""

    def __init__(
        self, server: str, fixes: Sequence[tuple[str, str]] = (), reach_fix: str | None = None
    ) -> None:
        self.server = server
        self.fixes = fixes
        if reach_fix is not None:
            self.reach_fix = reach_fix

    async def check_clock(self, report: Report) -> None:
        report.add(
            "clock",
            Status.OK,
            f"{self.server} times leases on the server: this host's clock does not affect expiry",
        )
