"""The discovery data model: endpoint identity, instances, queries and watch events.

Everything here is a frozen pydantic model, so values can be shared between tasks and used as dict keys.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dyndisc._errors import InvalidNameError, RecordTooLargeError

#: Longest accepted namespace, component or endpoint name.
MAX_NAME_LENGTH = 128
#: Largest accepted serialised instance record (JSON bytes). etcd, NATS and Kubernetes all accept far more,
#: but discovery records are read by every watcher on every change, so they must stay small.
MAX_RECORD_BYTES = 64 * 1024

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
_NAME_RULE = f"names are 1-{MAX_NAME_LENGTH} characters of letters, digits, '_' and '-'"


def validate_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid ``kind`` name (namespace, component or endpoint), else raise.

    Names become path segments in every backend (etcd keys, file names, NATS subjects, Kubernetes data keys),
    so they are restricted to a charset that needs no escaping anywhere and cannot form a path.
    """
    if not isinstance(value, str):
        raise InvalidNameError(f"{kind} name must be a string, got {type(value).__name__}")
    if len(value) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(value):
        # Interned: a watcher holds thousands of instances that share a few names.
        return sys.intern(value)
    reason = None
    if not value:
        reason = "it is empty"
    elif len(value) > MAX_NAME_LENGTH:
        reason = f"it is {len(value)} characters long"
    elif "/" in value:
        reason = "it contains '/'"
    elif "." in value:
        reason = "it contains '.', which separates the parts of a dotted path"
    elif any(c.isspace() for c in value):
        reason = "it contains whitespace"
    elif not _NAME_RE.fullmatch(value):
        bad = next(c for c in value if not _NAME_RE.fullmatch(c))
        reason = f"it contains {bad!r}"
    if reason:
        raise InvalidNameError(f"invalid {kind} name {value!r}: {reason}; {_NAME_RULE}")
    return value


#: One ``model_fields_set`` per distinct combination of set fields (see ``_Frozen.model_post_init``).
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def model_post_init(self, context: Any, /) -> None:
        # A frozen record's ``model_fields_set`` never changes (pydantic copies it before changing it in
        # ``model_copy``), so records with the same fields set share one: a set of five names costs 728
        # bytes, more than the rest of an instance, and a watcher holds every instance it sees.
        fields = self.__pydantic_fields_set__
        shared = _FIELDS_SETS.setdefault(frozenset(fields), fields)
        if shared is not fields:
            object.__setattr__(self, "__pydantic_fields_set__", shared)


class _Named(_Frozen):
    """Checks name fields before pydantic does, so callers get :class:`InvalidNameError` itself (pydantic
    would wrap it in a ``ValidationError``); records parsed with ``model_validate*`` are checked by the
    field validators instead."""

    def __init__(self, **data: Any) -> None:
        for kind in ("namespace", "component", "endpoint"):
            if data.get(kind) is not None:
                validate_name(kind, data[kind])
        super().__init__(**data)

    # Tells pydantic this ``__init__`` is not a custom one to call when validating: without it, every
    # record parsed by ``model_validate_json`` would go through ``__init__`` and be validated twice.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class EndpointId(_Named):
    """Identity of an endpoint: ``namespace.component.endpoint``."""

    namespace: str
    component: str
    endpoint: str

    @field_validator("namespace", "component", "endpoint", mode="before")
    @classmethod
    def _check(cls, value: object, info: Any) -> str:
        return validate_name(info.field_name, value)

    @classmethod
    def parse(cls, path: str) -> EndpointId:
        """Parse ``"ns.comp.ep"`` (optionally prefixed with ``dyn://``), as the reference runtime does."""
        if not isinstance(path, str):
            raise InvalidNameError(f"endpoint path must be a string, got {type(path).__name__}")
        text = path.removeprefix("dyn://")
        parts = text.split(".")
        if len(parts) != 3:
            raise InvalidNameError(
                f"invalid endpoint path {path!r}: expected 'namespace.component.endpoint' (3 parts), "
                f"got {len(parts)}"
            )
        return cls(namespace=parts[0], component=parts[1], endpoint=parts[2])

    @property
    def path(self) -> str:
        """``namespace/component/endpoint``: the relative key path used by the key-value backends."""
        return f"{self.namespace}/{self.component}/{self.endpoint}"

    def __str__(self) -> str:
        return f"{self.namespace}.{self.component}.{self.endpoint}"


@lru_cache(maxsize=4096)
def _endpoint_id(namespace: str, component: str, endpoint: str) -> EndpointId:
    # Shared by every instance of an endpoint; the names were validated when the instance was made.
    return EndpointId.model_construct(namespace=namespace, component=component, endpoint=endpoint)


class InstanceQuery(_Named):
    """Which instances a list or watch covers: everything, a namespace, a component or one endpoint."""

    namespace: str | None = None
    component: str | None = None
    endpoint: str | None = None

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        if self.endpoint is not None and self.component is None:
            raise InvalidNameError("a query naming an endpoint must also name its component")
        if self.component is not None and self.namespace is None:
            raise InvalidNameError("a query naming a component must also name its namespace")

    @field_validator("namespace", "component", "endpoint", mode="before")
    @classmethod
    def _check(cls, value: object, info: Any) -> str | None:
        return None if value is None else validate_name(info.field_name, value)

    @classmethod
    def parse(cls, path: str | None) -> InstanceQuery:
        """``""``/``None`` (everything), ``"ns"``, ``"ns.comp"`` or ``"ns.comp.ep"``."""
        parts = (path or "").removeprefix("dyn://").split(".") if path else []
        if len(parts) > 3:
            raise InvalidNameError(f"invalid query {path!r}: expected at most 'namespace.component.endpoint'")
        return cls(**dict(zip(("namespace", "component", "endpoint"), parts, strict=False)))

    @classmethod
    def for_endpoint(cls, endpoint: EndpointId) -> InstanceQuery:
        """The query that matches exactly one endpoint."""
        return cls(namespace=endpoint.namespace, component=endpoint.component, endpoint=endpoint.endpoint)

    @property
    def parts(self) -> tuple[str, ...]:
        """The named parts, outermost first (empty for "everything")."""
        return tuple(p for p in (self.namespace, self.component, self.endpoint) if p is not None)

    def matches(self, endpoint: EndpointId) -> bool:
        """True if ``endpoint`` is covered by this query."""
        return (
            (self.namespace is None or self.namespace == endpoint.namespace)
            and (self.component is None or self.component == endpoint.component)
            and (self.endpoint is None or self.endpoint == endpoint.endpoint)
        )

    def __str__(self) -> str:
        return ".".join(self.parts) or "*"


class Transport(_Frozen):
    """How to reach an instance: a transport kind (``tcp``, ``nats_tcp``, ``http`` ...) and its address.

    Serialised in the reference runtime's externally tagged shape, ``{"tcp": "10.0.0.5:41555/..."}``.
    """

    kind: str
    address: str

    @classmethod
    def coerce(cls, value: Transport | str | dict[str, str] | None) -> Transport | None:
        """Accept a ``Transport``, ``"kind://address"``, ``{"kind": "address"}`` or ``None``."""
        if value is None or isinstance(value, Transport):
            return value
        if isinstance(value, str):
            kind, sep, address = value.partition("://")
            if not sep or not kind:
                raise ValueError(
                    f"transport {value!r} must look like 'kind://address', e.g. 'tcp://10.0.0.5:9000'"
                )
            return cls(kind=kind, address=address)
        if isinstance(value, dict) and len(value) == 1:
            ((kind, address),) = value.items()
            return cls(kind=str(kind), address=str(address))
        raise ValueError(f"cannot read a transport from {value!r}")

    def to_wire(self) -> dict[str, str]:
        """The externally tagged wire shape."""
        return {self.kind: self.address}

    def __str__(self) -> str:
        return f"{self.kind}://{self.address}"


class Readiness(enum.StrEnum):
    """Whether an instance takes new work: ``ready``, or ``draining`` (finishing in-flight work, leaving)."""

    READY = "ready"
    DRAINING = "draining"


class Instance(_Named):
    """One registered endpoint of one worker process, as every watcher sees it."""

    namespace: str
    component: str
    endpoint: str
    instance_id: Annotated[int, Field(ge=0, lt=2**64)]
    transport: Transport | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    readiness: Readiness = Readiness.READY

    @field_validator("namespace", "component", "endpoint", mode="before")
    @classmethod
    def _check_name(cls, value: object, info: Any) -> str:
        return validate_name(info.field_name, value)

    @field_validator("transport", mode="before")
    @classmethod
    def _coerce_transport(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) != {"kind", "address"}:
            return Transport.coerce(value)
        if isinstance(value, str):
            return Transport.coerce(value)
        return value

    @cached_property
    def endpoint_id(self) -> EndpointId:
        """The endpoint this instance serves."""
        return _endpoint_id(self.namespace, self.component, self.endpoint)

    @cached_property
    def key(self) -> tuple[EndpointId, int]:
        """Unique identity within a watch: one process serves many endpoints under one instance id."""
        return (self.endpoint_id, self.instance_id)

    def to_json(self) -> bytes:
        """Compact JSON record, as stored by the key-value backends; raises if it is too large."""
        body: dict[str, Any] = {
            "namespace": self.namespace,
            "component": self.component,
            "endpoint": self.endpoint,
            "instance_id": self.instance_id,
        }
        if self.transport is not None:
            body["transport"] = self.transport.to_wire()
        return self.encode_record(body)

    def encode_record(self, body: dict[str, Any]) -> bytes:
        """``body`` (this instance's identity in some record shape) plus ``metadata`` and a ``readiness``
        other than ready, when set, as compact JSON; raises ``ValueError`` if that cannot be written."""
        if self.metadata:
            body["metadata"] = self.metadata
        if self.readiness is not Readiness.READY:
            body["readiness"] = self.readiness.value
        try:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata of {self.endpoint_id} is not JSON-serialisable: {exc}") from exc
        if len(data) > MAX_RECORD_BYTES:
            raise RecordTooLargeError(
                f"the record of {self.endpoint_id} is {len(data)} bytes; the limit is {MAX_RECORD_BYTES} "
                "bytes (keep metadata small: it is sent to every watcher on every change)"
            )
        return data

    @classmethod
    def from_json(cls, data: bytes | str) -> Instance:
        """Parse a record written by :meth:`to_json` (unknown fields are ignored); raises ``ValueError``."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ValueError(f"not an instance record: {exc.errors(include_url=False)}") from None

    def __str__(self) -> str:
        where = f" at {self.transport}" if self.transport else ""
        return f"{self.endpoint_id}/{self.instance_id:x}{where}"


class Resync(_Frozen):
    """The authoritative set of instances matching the watch; replace whatever you had."""

    type: Literal["resync"] = "resync"
    instances: tuple[Instance, ...]


class Added(_Frozen):
    """An instance appeared, or its record changed (an upsert: replace the one with the same key)."""

    type: Literal["added"] = "added"
    instance: Instance


class Removed(_Frozen):
    """An instance is gone (unregistered, lease expired or revoked, pod no longer ready)."""

    type: Literal["removed"] = "removed"
    endpoint: EndpointId
    instance_id: int

    @property
    def key(self) -> tuple[EndpointId, int]:
        """The key of the instance that left (see :attr:`Instance.key`)."""
        return (self.endpoint, self.instance_id)


#: A watch event: the first one of every watch is a :class:`Resync`.
DiscoveryEvent = Resync | Added | Removed
