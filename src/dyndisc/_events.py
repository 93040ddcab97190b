"""The events of a watch: a :class:`Resync` first, then :class:`Added` and :class:`Removed`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from dyndisc._models import EndpointId, Instance

__all__ = ["Added", "DiscoveryEvent", "RemovalReason", "Removed", "Resync"]


def _as_tuple(value: Any) -> tuple[Instance, ...]:
    return value if isinstance(value, tuple) else tuple(value)


@dataclass(frozen=True, slots=True)
class Resync:
    """The authoritative set of instances matching the watch; replace whatever you had."""

    instances: tuple[Instance, ...]
    type: ClassVar[Literal["resync"]] = "resync"

    def __post_init__(self) -> None:
        object.__setattr__(self, "instances", _as_tuple(self.instances))


@dataclass(frozen=True, slots=True)
class Added:
    """An instance appeared, or its record changed (an upsert: replace the one with the same key)."""

    instance: Instance
    type: ClassVar[Literal["added"]] = "added"


class RemovalReason(enum.StrEnum):
    """Why an instance left, where the backend can tell (``None`` in :class:`Removed` where it cannot)."""

    #: Its worker (or another client) deleted it: unregistered, a clean exit, a revoked lease.
    LEFT = "left"
    #: Its lease ran out: the worker stopped renewing it (crashed, hung, cut off).
    EXPIRED = "expired"
    #: Its record was overwritten with something that is not a readable record.
    UNREADABLE = "unreadable"
    #: Its pod stopped being ready (Kubernetes).
    NOT_READY = "not-ready"


@dataclass(frozen=True, slots=True)
class Removed:
    """An instance is gone (unregistered, lease expired or revoked, pod no longer ready).

    ``reason`` says why where the backend knows it (``None`` where it cannot tell); two removals of one
    instance are equal whatever their reasons.
    """

    endpoint: EndpointId
    instance_id: int
    reason: RemovalReason | None = field(default=None, compare=False)
    type: ClassVar[Literal["removed"]] = "removed"

    @property
    def key(self) -> tuple[EndpointId, int]:
        """The key of the instance that left (see :attr:`Instance.key`)."""
        return (self.endpoint, self.instance_id)


#: A watch event: the first one of every watch is a :class:`Resync`.
DiscoveryEvent = Resync | Added | Removed
