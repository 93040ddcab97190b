"""How to reach an instance: :class:`Transport`, and how a stored record's transport is read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dyndisc._errors import InvalidRecordError
from dyndisc._metadata import check_text

__all__ = ["Transport"]


@dataclass(frozen=True, slots=True)
class Transport:
    """How to reach an instance: a transport kind (``tcp``, ``nats_tcp``, ``http`` ...) and its address.

    Serialised in the reference runtime's externally tagged shape, ``{"tcp": "10.0.0.5:41555/..."}``.
    """

    kind: str
    address: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind or not isinstance(self.address, str):
            raise InvalidRecordError(
                f"a transport is a non-empty kind and an address, both strings; got {self.kind!r}, "
                f"{self.address!r}"
            )
        check_text(self.kind, "the transport kind")
        check_text(self.address, "the transport address")

    @classmethod
    def coerce(cls, value: Transport | str | Mapping[str, str] | None) -> Transport | None:
        """Accept a ``Transport``, ``"kind://address"``, ``{"kind": "address"}`` or ``None``; raise
        :class:`~dyndisc.InvalidRecordError` for anything else."""
        if value is None or isinstance(value, Transport):
            return value
        if isinstance(value, str):
            kind, sep, address = value.partition("://")
            if not sep or not kind:
                raise InvalidRecordError(
                    f"transport {value!r} must look like 'kind://address', e.g. 'tcp://10.0.0.5:9000'"
                )
            return cls(kind, address)
        if isinstance(value, Mapping) and len(value) == 1:
            ((kind, address),) = value.items()
            if isinstance(kind, str) and kind and isinstance(address, str):
                return cls(kind, address)
        raise InvalidRecordError(
            f"cannot read a transport from {value!r}: give 'kind://address' or {{'kind': 'address'}}"
        )

    def to_wire(self) -> dict[str, str]:
        """The externally tagged wire shape."""
        return {self.kind: self.address}

    def __str__(self) -> str:
        return f"{self.kind}://{self.address}"


_new_object = object.__new__
_set_field = object.__setattr__


def _transport_from_wire(value: dict[str, str] | None) -> Transport | None:
    # Run for every record a watcher decodes: the schema has checked the shape already, so the transport is
    # made without its __init__ (text that is all ASCII needs no UTF-8 check, and JSON's always passes).
    if value is None:
        return None
    ((kind, address),) = value.items()
    if not (kind.isascii() and address.isascii()):
        return Transport(kind, address)
    transport: Transport = _new_object(Transport)
    _set_field(transport, "kind", kind)
    _set_field(transport, "address", address)
    return transport
