"""What a runtime must keep written: the endpoints and lease-bound metadata entries the application wants,
and what of them is written under which lease.

Pure and synchronous, so it can be tested alone: the parts that talk to the backend
(:mod:`dyndisc.runtime.registrar`) ask it what a lease must carry and tell it what they wrote. A write whose
outcome is unknown (cancelled, or cut off by an outage) counts as written, so that unregistering removes it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from dyndisc._dynamo import DynamoTcp
from dyndisc._entries import MetadataEntry
from dyndisc._models import EndpointId, Instance

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
class WrittenEntry:
    """An entry written (or maybe written) under a lease."""

    lease_id: int
    entry: MetadataEntry


class Registrations:
    """The wanted and the written, for endpoints and for lease-bound entries.

    ``wanted`` is what the application registered and did not unregister, in the order it did; the runtime
    makes it true under whatever lease it holds. ``written`` is what is (or may be) in the store, each
    under the lease it was written with: an entry under an older lease is what a replacement must carry.
    """

    def __init__(self) -> None:
        self._wanted: dict[EndpointId, Wanted] = {}
        self._written: dict[EndpointId, Instance] = {}
        #: Endpoints whose write is under way or ended without an answer: maybe in the store.
        self._unconfirmed: set[EndpointId] = set()
        self._wanted_entries: dict[Hashable, RenderEntry] = {}
        self._written_entries: dict[Hashable, WrittenEntry] = {}
        #: Whether anything changed since :meth:`counts` last looked (the health recounts only then).
        self.changed = False

    # -- endpoints -----------------------------------------------------------------------------------------
    def wanted(self, endpoint: EndpointId) -> Wanted | None:
        """What the application wants of ``endpoint``, if anything."""
        return self._wanted.get(endpoint)

    def want(self, endpoint: EndpointId, wanted: Wanted) -> Callable[[], None]:
        """Want ``wanted`` for ``endpoint`` (replacing what was wanted); returns an undo that puts back what
        was wanted before, unless the want was replaced or withdrawn since."""
        previous = self._wanted.get(endpoint)
        self._wanted[endpoint] = wanted
        self.changed = True

        def undo() -> None:
            if self._wanted.get(endpoint) is wanted:
                _restore(self._wanted, endpoint, previous)
                self.changed = True

        return undo

    def unwant(self, endpoint: EndpointId) -> None:
        """The application no longer wants ``endpoint`` (what is written stays known until removed)."""
        if self._wanted.pop(endpoint, None) is not None:
            self.changed = True

    def render(self, endpoint: EndpointId, lease_id: int) -> Instance | None:
        """The record ``endpoint`` must have under ``lease_id``, or ``None`` if it is not wanted."""
        wanted = self._wanted.get(endpoint)
        return None if wanted is None else wanted.for_lease(lease_id)

    def written(self, endpoint: EndpointId) -> Instance | None:
        """What is (or may be) written for ``endpoint``, under the lease its instance id names."""
        return self._written.get(endpoint)

    def wrote(self, endpoint: EndpointId, instance: Instance | None, *, confirmed: bool = True) -> None:
        """``instance`` is written for ``endpoint`` (``confirmed=False``: maybe, a write under way or
        without an answer); ``None``: nothing is."""
        _restore(self._written, endpoint, instance)
        if confirmed or instance is None:
            self._unconfirmed.discard(endpoint)
        else:
            self._unconfirmed.add(endpoint)
        self.changed = True

    def take_written(self, endpoint: EndpointId) -> Instance | None:
        """Forget and return what is (or may be) written for ``endpoint`` (it is about to be removed)."""
        found = self._written.pop(endpoint, None)
        self._unconfirmed.discard(endpoint)
        if found is not None:
            self.changed = True
        return found

    def registered(self, lease_id: int) -> list[Instance]:
        """What is surely written under ``lease_id``."""
        return [
            i for e, i in self._written.items() if i.instance_id == lease_id and e not in self._unconfirmed
        ]

    def pending(self, lease_id: int) -> list[EndpointId]:
        """The wanted endpoints not surely written under ``lease_id``."""
        written, unsure = self._written, self._unconfirmed
        return [
            e
            for e in self._wanted
            if (found := written.get(e)) is None or found.instance_id != lease_id or e in unsure
        ]

    def is_written(self, endpoint: EndpointId, lease_id: int) -> bool:
        """Whether ``endpoint`` is surely written under ``lease_id``."""
        found = self._written.get(endpoint)
        return found is not None and found.instance_id == lease_id and endpoint not in self._unconfirmed

    def attempt(self, endpoint: EndpointId, instance: Instance) -> Callable[[], None]:
        """A write of ``instance`` is about to be made: it may be in the store from now on. Returns an undo
        for a write the server refused (what was written before is written still)."""
        before, unsure = self._written.get(endpoint), endpoint in self._unconfirmed
        self.wrote(endpoint, instance, confirmed=False)

        def undo() -> None:
            self.wrote(endpoint, before, confirmed=not unsure)

        return undo

    def endpoints_to_carry(self, lease_id: int) -> list[EndpointId]:
        """What a new lease must carry: the wanted endpoints not surely written under ``lease_id``, in the
        order they were registered."""
        return self.pending(lease_id)

    # -- lease-bound entries -------------------------------------------------------------------------------
    def want_entry(self, ident: Hashable, render: RenderEntry) -> Callable[[], None]:
        """Want the entry ``render`` makes, known by ``ident``; returns an undo as :meth:`want` does."""
        previous = self._wanted_entries.get(ident)
        self._wanted_entries[ident] = render

        def undo() -> None:
            if self._wanted_entries.get(ident) is render:
                _restore(self._wanted_entries, ident, previous)

        return undo

    def unwant_entry(self, ident: Hashable) -> None:
        """The application no longer wants the entry ``ident``."""
        self._wanted_entries.pop(ident, None)

    def render_entry(self, ident: Hashable, lease_id: int) -> MetadataEntry | None:
        """The entry ``ident`` under ``lease_id``, or ``None`` if it is not wanted."""
        render = self._wanted_entries.get(ident)
        return None if render is None else render(lease_id)

    def written_entry(self, ident: Hashable) -> WrittenEntry | None:
        """What is (or may be) written for the entry ``ident``."""
        return self._written_entries.get(ident)

    def wrote_entry(self, ident: Hashable, written: WrittenEntry | None) -> None:
        """``written`` is (or may be) in the store for ``ident``; ``None``: nothing is."""
        _restore(self._written_entries, ident, written)

    def take_written_entry(self, ident: Hashable) -> WrittenEntry | None:
        """Forget and return what is written for the entry ``ident``."""
        return self._written_entries.pop(ident, None)

    def entries_to_carry(self, lease_id: int) -> list[Hashable]:
        """The wanted entries not written under ``lease_id``."""
        written = self._written_entries
        return [
            i for i in self._wanted_entries if (found := written.get(i)) is None or found.lease_id != lease_id
        ]

    # -- a new lease ---------------------------------------------------------------------------------------
    def forget_unwanted(self, lease_id: int) -> None:
        """Forget what was written under other leases and is no longer wanted: those leases are gone, and
        their keys with them (a new lease was granted because the server said so)."""
        for endpoint in [e for e, i in self._written.items() if i.instance_id != lease_id]:
            if endpoint not in self._wanted:
                self.take_written(endpoint)
        for ident in [i for i, w in self._written_entries.items() if w.lease_id != lease_id]:
            if ident not in self._wanted_entries:
                del self._written_entries[ident]

    # -- counts --------------------------------------------------------------------------------------------
    def counts(self, lease_id: int | None) -> tuple[int, int]:
        """``(wanted, pending)``: the endpoints the application wants, and how many of them are not
        written under ``lease_id`` yet. Walks every endpoint: read it when asked, not on every write."""
        self.changed = False
        if lease_id is None:
            return len(self._wanted), len(self._wanted)
        return len(self._wanted), len(self.pending(lease_id))

    def __len__(self) -> int:
        """How many endpoints are (or may be) written, under any lease (what the metrics count)."""
        return len(self._written)

    def __iter__(self) -> Iterator[EndpointId]:
        """The wanted endpoints, in the order they were registered."""
        return iter(self._wanted)


def _restore(mapping: dict[K, V], key: K, value: V | None) -> None:
    """Set ``mapping[key]`` to ``value``, or remove the key for ``None``."""
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value
