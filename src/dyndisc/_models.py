"""The discovery data model: instances and their transports (the watch events are in ``_events``).

Every value here is immutable and hashable, so it can be shared between tasks and used as a dict key:
an :class:`Instance` hashes by its identity (:attr:`Instance.key`), its metadata is a read-only mapping, and
changing a field raises. A record that cannot be read raises :class:`~dyndisc.InvalidRecordError`.

Stored records are decoded by pydantic-core straight into these classes (names and ids checked by its
schema, no Python code per record read from JSON: no ``__init__``, no validator function; the transport's
schema is in ``_transport``, the metadata's in ``_metadata``): a watcher decodes every instance it sees.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic_core import SchemaValidator, ValidationError, core_schema

from dyndisc._errors import InvalidRecordError, RecordTooLargeError
from dyndisc._hex import dataclass_repr
from dyndisc._metadata import EMPTY, FrozenDict, check_text, freeze_metadata, wire_schema
from dyndisc._names import (
    MAX_NAME_LENGTH,
    NAME_PATTERN,
    EndpointId,
    InstanceQuery,
    endpoint_id,
    validate_name,
)
from dyndisc._transport import Transport, transport_schema

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_RECORD_BYTES",
    "EndpointId",
    "Instance",
    "InstanceQuery",
    "Readiness",
    "Transport",
    "validate_name",
]

#: Largest accepted serialised instance record (JSON bytes). etcd, NATS and Kubernetes all accept far more,
#: but discovery records are read by every watcher on every change, so they must stay small.
MAX_RECORD_BYTES = 64 * 1024
#: Largest instance id: ids are unsigned 64-bit integers (etcd lease ids, the reference's ids).
MAX_INSTANCE_ID = 2**64 - 1
#: The compact JSON of records, made once (``json.dumps`` with options builds an encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _optional_text(value: object, what: str) -> str | None:
    """``value`` if it is ``None`` or a non-empty string UTF-8 can carry; else :class:`InvalidRecordError`."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRecordError(f"{what} must be a non-empty string or None, got {value!r}")
    return check_text(value, what)


class Readiness(enum.StrEnum):
    """Whether an instance takes new work: ``ready``, or ``draining`` (finishing in-flight work, leaving)."""

    READY = "ready"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True, init=False)
class Instance:
    """One registered endpoint of one worker process, as every watcher sees it.

    Immutable: :meth:`replace` makes a changed copy. Two instances are equal when every field but
    ``registered_at`` is; an instance hashes by :attr:`key` (its endpoint and id), so it can key a dict or
    sit in a set. ``registered_at`` is when its worker first registered the endpoint (Unix time, by the
    worker's clock; ``None`` for records that do not say, such as the reference runtime's).
    """

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    transport: Transport | None
    metadata: FrozenDict
    readiness: Readiness
    #: The device the instance serves from (the reference writes ``"cpu"`` or ``"cuda"``), if it says.
    device_type: str | None
    #: How its request plane encodes payloads (the reference writes ``"json"`` or ``"msgpack"``), if it says.
    request_plane_codec: str | None
    registered_at: float | None = field(compare=False)
    _key: tuple[EndpointId, int] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        namespace: str,
        component: str,
        endpoint: str,
        instance_id: int,
        transport: Transport | str | Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        readiness: Readiness | str = Readiness.READY,
        *,
        device_type: str | None = None,
        request_plane_codec: str | None = None,
        registered_at: float | None = None,
    ) -> None:
        names = (
            validate_name("namespace", namespace),
            validate_name("component", component),
            validate_name("endpoint", endpoint),
        )
        self._fill(
            names,
            instance_id,
            transport,
            metadata,
            readiness,
            device_type=device_type,
            request_plane_codec=request_plane_codec,
            registered_at=registered_at,
        )

    @classmethod
    def for_endpoint(
        cls,
        endpoint: EndpointId,
        instance_id: int,
        transport: Transport | str | Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        readiness: Readiness | str = Readiness.READY,
        *,
        device_type: str | None = None,
        request_plane_codec: str | None = None,
        registered_at: float | None = None,
    ) -> Instance:
        """An instance of ``endpoint`` (whose names are checked already), checked like a new one otherwise."""
        found: Instance = _new_object(cls)
        names = (endpoint.namespace, endpoint.component, endpoint.endpoint)
        found._fill(
            names,
            instance_id,
            transport,
            metadata,
            readiness,
            device_type=device_type,
            request_plane_codec=request_plane_codec,
            registered_at=registered_at,
        )
        return found

    def _fill(
        self,
        names: tuple[str, str, str],
        instance_id: int,
        transport: Transport | str | Mapping[str, str] | None,
        metadata: Mapping[str, Any] | None,
        readiness: Readiness | str,
        *,
        device_type: str | None,
        request_plane_codec: str | None,
        registered_at: float | None,
    ) -> None:
        where = ".".join(names)
        if isinstance(instance_id, bool) or not isinstance(instance_id, int):
            raise InvalidRecordError(f"instance id of {where} must be an integer, got {instance_id!r}")
        if not 0 <= instance_id <= MAX_INSTANCE_ID:
            raise InvalidRecordError(
                f"instance id {instance_id} of {where} is not an unsigned 64-bit integer"
            )
        try:
            state = Readiness(readiness)
        except ValueError:
            raise InvalidRecordError(
                f"readiness of {where} must be one of "
                f"{', '.join(r.value for r in Readiness)}, got {readiness!r}"
            ) from None
        if registered_at is not None and (
            isinstance(registered_at, bool)
            or not isinstance(registered_at, int | float)
            or not 0 <= registered_at < 1e11
        ):
            raise InvalidRecordError(f"registered_at of {where} must be a Unix time, got {registered_at!r}")
        setter = object.__setattr__
        setter(self, "namespace", names[0])
        setter(self, "component", names[1])
        setter(self, "endpoint", names[2])
        setter(self, "instance_id", int(instance_id))
        setter(self, "transport", Transport.coerce(transport))
        setter(self, "metadata", freeze_metadata(metadata, where))
        setter(self, "readiness", state)
        setter(self, "device_type", _optional_text(device_type, f"the device type of {where}"))
        setter(
            self,
            "request_plane_codec",
            _optional_text(request_plane_codec, f"the request plane codec of {where}"),
        )
        setter(self, "registered_at", None if registered_at is None else float(registered_at))

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def endpoint_id(self) -> EndpointId:
        """The endpoint this instance serves."""
        # Not through ``key``: a watcher asks this of every instance, and the key tuple would stay with each.
        return endpoint_id(self.namespace, self.component, self.endpoint)

    @property
    def key(self) -> tuple[EndpointId, int]:
        """Unique identity within a watch: one process serves many endpoints under one instance id."""
        try:
            return self._key
        except AttributeError:  # computed once, on first use (decoded records skip __init__)
            key = (endpoint_id(self.namespace, self.component, self.endpoint), self.instance_id)
            object.__setattr__(self, "_key", key)
            return key

    def replace(self, **changes: Any) -> Instance:
        """A copy with ``changes`` applied (checked like a new instance)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-native values (the shape :meth:`to_json` writes)."""
        body: dict[str, Any] = {
            "namespace": self.namespace,
            "component": self.component,
            "endpoint": self.endpoint,
            "instance_id": self.instance_id,
        }
        if self.transport is not None:
            body["transport"] = self.transport.to_wire()
        # The reference runtime's optional fields, under its names (top level, not in metadata).
        if self.device_type is not None:
            body["device_type"] = self.device_type
        if self.request_plane_codec is not None:
            body["request_plane_codec"] = self.request_plane_codec
        if self.metadata:
            body["metadata"] = self.metadata
        if self.readiness is not Readiness.READY:
            body["readiness"] = self.readiness.value
        if self.registered_at is not None:
            body["registered_at"] = round(self.registered_at, 3)
        return body

    def to_json(self) -> bytes:
        """Compact JSON record, as stored by the key-value backends; raises if it is too large."""
        return self.encode_record(self.to_dict())

    def encode_record(self, body: dict[str, Any]) -> bytes:
        """``body`` (this instance's record in some shape) as compact JSON; raise
        :class:`~dyndisc.RecordTooLargeError` past :data:`MAX_RECORD_BYTES`."""
        if self.metadata:
            body.setdefault("metadata", self.metadata)
        if self.readiness is not Readiness.READY:
            body.setdefault("readiness", self.readiness.value)
        data = _ENCODER.encode(body).encode()
        if len(data) > MAX_RECORD_BYTES:
            raise RecordTooLargeError(
                f"the record of {self.endpoint_id} is {len(data)} bytes; the limit is {MAX_RECORD_BYTES} "
                "bytes (keep metadata small: it is sent to every watcher on every change)"
            )
        return data

    @classmethod
    def from_json(cls, data: bytes | str) -> Instance:
        """Parse a record written by :meth:`to_json` (unknown fields are ignored); raise
        :class:`~dyndisc.InvalidRecordError` if it is not one."""
        try:
            found: Instance = _DECODER.validate_json(data)
        except ValidationError as exc:
            raise InvalidRecordError(f"not an instance record: {_summary(exc)}") from None
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Instance:
        """Read a record already parsed from JSON (a stored record's fields); unknown fields are ignored."""
        try:
            found: Instance = _DECODER.validate_python(data)
        except ValidationError as exc:
            raise InvalidRecordError(f"not an instance record: {_summary(exc)}") from None
        return found

    def __str__(self) -> str:
        where = f" at {self.transport}" if self.transport else ""
        return f"{self.endpoint_id}/{self.instance_id:x}{where}"

    def __repr__(self) -> str:
        # The dataclass's repr, but its id in hex, as every other view shows it.
        return dataclass_repr(self, (f.name for f in fields(self) if f.repr))


def _summary(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors(include_url=False)
    ]
    return "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")


_new_object = object.__new__


def _decoder(
    transport: core_schema.CoreSchema | None = None, metadata: core_schema.CoreSchema | None = None
) -> SchemaValidator:
    """pydantic-core's validator of stored records: builds :class:`Instance` objects without ``__init__``.
    ``transport`` and ``metadata`` replace those fields' schemas (``benchmarks.decode`` compares others)."""
    name = core_schema.str_schema(pattern=NAME_PATTERN)
    fields = [
        core_schema.dataclass_field("namespace", name),
        core_schema.dataclass_field("component", name),
        core_schema.dataclass_field("endpoint", name),
        core_schema.dataclass_field(
            "instance_id", core_schema.int_schema(ge=0, le=MAX_INSTANCE_ID, strict=True)
        ),
        core_schema.dataclass_field(
            "transport", core_schema.with_default_schema(transport or transport_schema(), default=None)
        ),
        core_schema.dataclass_field(
            "metadata", core_schema.with_default_schema(metadata or wire_schema(), default=EMPTY)
        ),
        core_schema.dataclass_field(
            "readiness",
            core_schema.with_default_schema(
                core_schema.enum_schema(Readiness, list(Readiness), sub_type="str"), default=Readiness.READY
            ),
        ),
        *(
            core_schema.dataclass_field(
                optional,
                core_schema.with_default_schema(
                    core_schema.nullable_schema(core_schema.str_schema(min_length=1)), default=None
                ),
            )
            for optional in ("device_type", "request_plane_codec")
        ),
        core_schema.dataclass_field(
            "registered_at",
            core_schema.with_default_schema(
                core_schema.nullable_schema(core_schema.float_schema(ge=0, lt=1e11, allow_inf_nan=False)),
                default=None,
            ),
        ),
    ]
    schema = core_schema.dataclass_schema(
        Instance,
        core_schema.dataclass_args_schema("Instance", fields, collect_init_only=False),
        [f["name"] for f in fields],
        slots=True,
        frozen=True,
        post_init=False,
    )
    return SchemaValidator(schema)


_DECODER = _decoder()


def record_decoder() -> Callable[[bytes], Instance]:
    """pydantic-core's decoder of stored records, for a layout decoding many at once: it returns an
    :class:`Instance` or raises ``ValueError`` (pydantic-core's ``ValidationError``)."""
    decode: Callable[[bytes], Instance] = _DECODER.validate_json
    return decode
