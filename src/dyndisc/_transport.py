"""How to reach an instance: :class:`Transport`, and how a stored record's transport is read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic_core import core_schema

from dyndisc._errors import InvalidRecordError
from dyndisc._metadata import check_text

__all__ = ["Transport", "transport_schema"]


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


def _transport_from_wire(value: dict[str, str]) -> Transport:
    # The schema has checked the shape already, so the transport is made without its __init__ (text that is
    # all ASCII needs no UTF-8 check; a mapping parsed by json.loads may hold a lone surrogate).
    ((kind, address),) = value.items()
    if not (kind.isascii() and address.isascii()):
        return Transport(kind, address)
    transport: Transport = _new_object(Transport)
    _set_field(transport, "kind", kind)
    _set_field(transport, "address", address)
    return transport


def _of_kind(kind: str) -> core_schema.CoreSchema:
    # ``{kind: address}`` read by pydantic-core straight into a Transport: its address under the key ``kind``.
    fields = [
        core_schema.dataclass_field(
            "kind", core_schema.with_default_schema(core_schema.str_schema(), default=kind), init=False
        ),
        core_schema.dataclass_field("address", core_schema.str_schema(), validation_alias=kind),
    ]
    args = core_schema.dataclass_args_schema(
        "Transport", fields, collect_init_only=False, extra_behavior="forbid"
    )
    return core_schema.dataclass_schema(
        Transport, args, ["kind", "address"], slots=True, frozen=True, post_init=False
    )


def transport_schema() -> core_schema.CoreSchema:
    """pydantic-core's schema of the transport of a stored record (``None`` if it has none).

    From JSON, the kinds the reference writes (``tcp``, ``nats_tcp``) are made by pydantic-core itself, with
    no Python code per record (its JSON parser refuses a lone surrogate, so the text needs no UTF-8 check);
    another kind, and a mapping already parsed (``Instance.from_dict``), take :func:`_transport_from_wire`.
    """
    wire = core_schema.dict_schema(
        core_schema.str_schema(min_length=1), core_schema.str_schema(), min_length=1, max_length=1
    )
    other = core_schema.no_info_after_validator_function(_transport_from_wire, wire)
    from_json = core_schema.union_schema(
        [*(_of_kind(kind) for kind in ("tcp", "nats_tcp")), other],
        mode="left_to_right",
        custom_error_type="transport",
        custom_error_message=(
            'Input should be one transport kind and its address, both strings: {"tcp": "host:port"}'
        ),
    )
    return core_schema.nullable_schema(
        core_schema.json_or_python_schema(json_schema=from_json, python_schema=other)
    )
