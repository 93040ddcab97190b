"""The key-value store interface that four of the five backends implement, and the events of its watches.

A :class:`KeyValueStore` is small, like etcd's naming client: grant / keep-alive / revoke a lease,
create-if-absent, put, delete, read a prefix, watch a prefix. :class:`~dyndisc.backends.kv.KvDiscovery`
writes discovery once on top of it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from dyndisc._events import RemovalReason
from dyndisc.backends.base import Connected, Lease

#: Every key layout a store can hold (see :mod:`dyndisc.backends.kv.layouts`).
ALL_LAYOUTS = frozenset({"dyndisc", "dynamo-v1"})


@dataclass(frozen=True, slots=True)
class StoredValue:
    """A value in the store and the lease that owns it (0 when the value has no lease)."""

    value: bytes
    lease_id: int


@dataclass(frozen=True, slots=True)
class StorePut:
    """A key was created or changed."""

    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class StoreDelete:
    """A key was deleted (by a client, or because its lease ended: ``reason`` says which where the store
    can tell; two deletions of one key are equal whatever their reasons, as :class:`~dyndisc.Removed`)."""

    key: str
    reason: RemovalReason | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """Every key under the watched prefix, authoritatively: replace what you had.

    A large snapshot may come in parts, in key order, so each can be decoded while the next is read: a part
    with :attr:`more` set is followed by the rest; the snapshot is whole at the first part without it.
    """

    items: dict[str, bytes]
    #: More parts of this snapshot follow (apply nothing until the last one).
    more: bool = False
    #: This part continues the snapshot of the part before it (``False``: a snapshot starts here, and
    #: replaces any parts of an earlier one still unfinished).
    continues: bool = False


StoreEvent = StorePut | StoreDelete | StoreSnapshot


class KeyValueStore(Connected, abc.ABC):
    """A key-value store with leases and prefix watches. Keys are ``/``-separated strings.

    Implementations own their server connection and translate its failures: a watch resumes by itself
    and, when it cannot prove it missed nothing, emits a new :class:`StoreSnapshot`.
    """

    #: Short name used in settings and logs.
    name: str = "kv"
    #: The key layouts this store can hold: a store whose keys the reference runtime cannot share (the
    #: file store keeps its own tree) leaves ``dynamo-v1`` out.
    layouts: frozenset[str] = ALL_LAYOUTS
    #: Why a layout is missing from :attr:`layouts` and what to use instead, for the error (", ..." or "").
    layout_hint: str = ""

    def __repr__(self) -> str:
        """Where the store is; stores with a server or a directory override it to say which."""
        return f"{type(self).__name__}()"

    @abc.abstractmethod
    async def grant(self, ttl: float) -> Lease:
        """Grant a lease of ``ttl`` seconds; its id is never 0."""
        raise NotImplementedError

    @abc.abstractmethod
    async def keep_alive(self, lease_id: int) -> float:
        """Renew a lease and return the seconds left; :class:`~dyndisc.LeaseNotFoundError` if gone."""
        raise NotImplementedError

    async def time_to_live(self, lease_id: int) -> float | None:
        """Seconds lease ``lease_id`` has left, without renewing it; ``None`` if gone or not known here."""
        return None

    @abc.abstractmethod
    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease and delete every key attached to it; a no-op for an unknown lease."""
        raise NotImplementedError

    @abc.abstractmethod
    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        """Create ``key`` under ``lease_id`` if absent and return ``None``; else return what is there."""
        raise NotImplementedError

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        """Write ``key`` under ``lease_id`` whether or not it exists."""
        raise NotImplementedError

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete ``key``; a no-op if absent."""
        raise NotImplementedError

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """Every key starting with ``prefix`` and its value."""
        raise NotImplementedError

    @abc.abstractmethod
    def watch(self, prefix: str) -> AbstractAsyncContextManager[AsyncIterator[StoreEvent]]:
        """Watch every key starting with ``prefix``; the first event is a :class:`StoreSnapshot`."""
        raise NotImplementedError

    # -- access (``dyndisc doctor``'s scope check) -------------------------------------------------------
    @property
    def principal(self) -> str | None:
        """Who the server knows this store as (``user 'w-a'``), or ``None`` without credentials."""
        return None

    async def may_write(self, key: str) -> bool | None:
        """Whether the server lets this store write ``key``, found out without writing anything; ``None``
        when the store cannot tell (it has no access control of its own)."""
        return None

    async def may_read(self, prefix: str) -> bool | None:
        """Whether the server lets this store read the keys under ``prefix``; ``None`` as for
        :meth:`may_write`."""
        return None

    async def writable_prefixes(self) -> list[str] | None:
        """The key prefixes the credentials may write, when the server says (etcd: the user's roles), else
        ``None``."""
        return None
