"""What a runtime must keep written: the endpoints and lease-bound metadata entries the application wants,
and what of them is written under which lease.

Pure and synchronous, so it can be tested alone: the parts that talk to the backend
(:mod:`dyndisc.runtime.registrar`) ask it what a lease must carry and tell it what they wrote. A write whose
outcome is unknown (under way, cancelled, or cut off by an outage) counts as maybe written: unregistering
removes it, and a new lease carries it again if it is wanted.

Leases are told apart by identity, not id: on Kubernetes a replacement lease has the id of the one it
replaces, yet what the old grant carried is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from dyndisc._dynamo import DynamoTcp
from dyndisc._entries import MetadataEntry
from dyndisc._models import EndpointId, Instance
from dyndisc.backends.base import Lease

K = TypeVar("K")
V = TypeVar("V")

#: Renders a lease-bound entry for a lease id (a model card's key holds the instance id).
RenderEntry = Callable[[int], MetadataEntry]


@dataclass(frozen=True, slots=True)
class Wanted:
    """An endpoint registration the application wants: the record as it asked for it, and the
    :class:`~dyndisc.DynamoTcp` its transport is rendered from for each lease, if any."""

    instance: Instance
    template: DynamoTcp | None = None

    def for_lease(self, lease_id: int) -> Instance:
        """The record under ``lease_id``: that id, and the transport rendered for it."""
        instance = self.instance
        if instance.instance_id == lease_id:
            return instance
        if self.template is None:
            return instance.replace(instance_id=lease_id)
        endpoint = instance.endpoint_id
        return instance.replace(instance_id=lease_id, transport=self.template.render(endpoint, lease_id))


@dataclass(frozen=True, slots=True)
class Written:
    """A record written under a lease; ``confirmed`` false: maybe (no answer came)."""

    instance: Instance
    lease: Lease
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class WrittenEntry:
    """An entry written (or maybe written) under a lease."""

    entry: MetadataEntry
    lease: Lease


class Registrations:
    """The wanted and the written, for endpoints and for lease-bound entries.

    ``wanted`` is what the application registered and did not unregister, in the order it did; the runtime
    makes it true under whatever lease it holds. ``written`` is what is (or may be) in the store, each
    under the lease it was written with: what is not written under the current lease is what a
    replacement must carry.
    """

    def __init__(self) -> None:
        self._wanted: dict[EndpointId, Wanted] = {}
        self._written: dict[EndpointId, Written] = {}
        self._wanted_entries: dict[Hashable, RenderEntry] = {}
        self._written_entries: dict[Hashable, WrittenEntry] = {}

    # -- endpoints -----------------------------------------------------------------------------------------
    def wanted(self, endpoint: EndpointId) -> Wanted | None:
        """What the application wants of ``endpoint``, if anything."""
        return self._wanted.get(endpoint)

    def want(self, endpoint: EndpointId, wanted: Wanted) -> Callable[[], None]:
        """Want ``wanted`` for ``endpoint`` (replacing what was wanted); returns an undo that puts back what
        was wanted before, unless the want was replaced or withdrawn since."""
        previous = self._wanted.get(endpoint)
        self._wanted[endpoint] = wanted

        def undo() -> None:
            if self._wanted.get(endpoint) is wanted:
                _restore(self._wanted, endpoint, previous)

        return undo

    def unwant(self, endpoint: EndpointId) -> None:
        """The application no longer wants ``endpoint`` (what is written stays known until removed)."""
        self._wanted.pop(endpoint, None)

    def render(self, endpoint: EndpointId, lease: Lease) -> Instance | None:
        """The record ``endpoint`` must have under ``lease``, or ``None`` if it is not wanted."""
        wanted = self._wanted.get(endpoint)
        return None if wanted is None else wanted.for_lease(lease.id)

    def written(self, endpoint: EndpointId) -> Written | None:
        """What is (or may be) written for ``endpoint``."""
        return self._written.get(endpoint)

    def is_written(self, endpoint: EndpointId, lease: Lease) -> bool:
        """Whether ``endpoint`` is surely written under ``lease``."""
        found = self._written.get(endpoint)
        return found is not None and found.lease is lease and found.confirmed

    def wrote(self, endpoint: EndpointId, written: Written | None) -> None:
        """``written`` is what is (or may be) in the store for ``endpoint`` now; ``None``: nothing is."""
        _restore(self._written, endpoint, written)

    def attempt(self, endpoint: EndpointId, instance: Instance, lease: Lease) -> Callable[[], None]:
        """A write of ``instance`` under ``lease`` is about to be made: it may be in the store from now on.
        Returns an undo for a write the server refused (what was written before is written still)."""
        before = self._written.get(endpoint)
        self.wrote(endpoint, Written(instance, lease, confirmed=False))
        return lambda: self.wrote(endpoint, before)

    def take_written(self, endpoint: EndpointId) -> Written | None:
        """Forget and return what is (or may be) written for ``endpoint`` (it is about to be removed)."""
        return self._written.pop(endpoint, None)

    def registered(self, lease: Lease) -> list[Instance]:
        """What is surely written under ``lease``."""
        return [w.instance for w in self._written.values() if w.lease is lease and w.confirmed]

    def endpoints_to_carry(self, lease: Lease) -> list[EndpointId]:
        """The wanted endpoints not surely written under ``lease`` (what a new lease must carry, and what a
        registration waits for), in the order they were registered."""
        return [e for e in self._wanted if not self.is_written(e, lease)]

    # -- lease-bound entries -------------------------------------------------------------------------------
    def want_entry(self, ident: Hashable, render: RenderEntry) -> Callable[[], None]:
        """Want the entry ``render`` makes, known by ``ident``; returns an undo as :meth:`want` does."""
        previous = self._wanted_entries.get(ident)
        self._wanted_entries[ident] = render

        def undo() -> None:
            if self._wanted_entries.get(ident) is render:
                _restore(self._wanted_entries, ident, previous)

        return undo

    def wanted_entry(self, ident: Hashable) -> RenderEntry | None:
        """What the application wants of the entry ``ident``, if anything."""
        return self._wanted_entries.get(ident)

    def unwant_entry(self, ident: Hashable) -> None:
        """The application no longer wants the entry ``ident``."""
        self._wanted_entries.pop(ident, None)

    def render_entry(self, ident: Hashable, lease: Lease) -> MetadataEntry | None:
        """The entry ``ident`` under ``lease``, or ``None`` if it is not wanted."""
        render = self._wanted_entries.get(ident)
        return None if render is None else render(lease.id)

    def written_entry(self, ident: Hashable) -> WrittenEntry | None:
        """What is (or may be) written for the entry ``ident``."""
        return self._written_entries.get(ident)

    def wrote_entry(self, ident: Hashable, written: WrittenEntry | None) -> None:
        """``written`` is (or may be) in the store for ``ident``; ``None``: nothing is."""
        _restore(self._written_entries, ident, written)

    def forget_written_entry(self, ident: Hashable) -> None:
        """Forget what is written for the entry ``ident``."""
        self._written_entries.pop(ident, None)

    def entries_to_carry(self, lease: Lease) -> list[Hashable]:
        """The wanted entries not written under ``lease``."""
        written = self._written_entries
        return [
            i for i in self._wanted_entries if (found := written.get(i)) is None or found.lease is not lease
        ]

    # -- a new lease ---------------------------------------------------------------------------------------
    def forget_unwanted(self, lease: Lease) -> None:
        """Forget what was written under other leases and is no longer wanted: those leases are gone, and
        their keys with them (a new lease was granted because the server said so)."""
        for endpoint in [e for e, w in self._written.items() if w.lease is not lease]:
            if endpoint not in self._wanted:
                self.take_written(endpoint)
        for ident in [i for i, w in self._written_entries.items() if w.lease is not lease]:
            if ident not in self._wanted_entries:
                del self._written_entries[ident]

    # -- counts --------------------------------------------------------------------------------------------
    def counts(self, lease: Lease) -> tuple[int, int]:
        """``(wanted, pending)``: the endpoints the application wants, and how many of them are not surely
        written under ``lease`` yet. Walks every endpoint: read it when asked (a probe), not per write."""
        return len(self._wanted), len(self.endpoints_to_carry(lease))

    def __len__(self) -> int:
        """How many endpoints are (or may be) written, under any lease (what the metrics count)."""
        return len(self._written)


def _restore(mapping: dict[K, V], key: K, value: V | None) -> None:
    """Set ``mapping[key]`` to ``value``, or remove the key for ``None``."""
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value
