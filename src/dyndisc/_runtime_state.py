"""What the parts of :class:`~dyndisc.DistributedRuntime` share: the state its lease keeping
(``_runtime_lease``) and its metadata entries (``_runtime_metadata``) read and write, declared once; the
runtime (``_runtime``) sets it up and provides the properties."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from dyndisc._concurrency import SharedExclusiveLock, Wake
from dyndisc._entries import MetadataEntry
from dyndisc.backends.base import DiscoveryBackend, Lease


class RuntimeState:
    """The shared state of the runtime's parts (the runtime inherits every part)."""

    _lease: Lease | None
    _lease_lock: SharedExclusiveLock
    #: Asks the keep-alive loop to renew now (a write found the lease gone).
    _renew_now: Wake
    _failure: BaseException | None
    #: Metadata entries bound to the lease that the application wants, by a stable identity (a model
    #: card's key holds the instance id): each renders its entry for a lease id.
    _wanted_entries: dict[Hashable, Callable[[int], MetadataEntry]]
    #: What of those is written under the current lease.
    _written_entries: dict[Hashable, MetadataEntry]

    @property
    def backend(self) -> DiscoveryBackend:
        """The backend (the runtime must be running)."""
        raise NotImplementedError

    @property
    def lease(self) -> Lease:
        """The current lease (the runtime must be running)."""
        raise NotImplementedError
