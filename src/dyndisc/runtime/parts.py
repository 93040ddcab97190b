"""What a started runtime holds: its parts, made at each start and dropped at the exit. Handles and the
runtime's own methods reach the parts through it, so no part is reachable before the start or after the
exit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dyndisc.backends.base import DiscoveryBackend
from dyndisc.runtime.lease_keeper import LeaseKeeper
from dyndisc.runtime.metadata import Metadata
from dyndisc.runtime.registrar import Registrar
from dyndisc.runtime.registrations import Registrations
from dyndisc.runtime.watches import Watches


@dataclass(frozen=True, slots=True)
class RuntimeParts:
    """The parts of a running :class:`~dyndisc.DistributedRuntime`."""

    backend: DiscoveryBackend
    #: The lease: granted, kept alive, replaced, revoked.
    keeper: LeaseKeeper
    #: What the application wants registered, and what is written under which lease.
    registrations: Registrations
    #: Writes the registrations under the lease.
    registrar: Registrar
    #: Entries, model cards and event channels.
    metadata: Metadata
    #: The shared live sets, one per query.
    watches: Watches


class HasParts(Protocol):
    """What a handle is bound to: a runtime that gives its parts while it runs."""

    def parts(self) -> RuntimeParts:
        """The parts (raises :class:`~dyndisc.RuntimeNotStartedError` unless the runtime is running)."""
        ...
