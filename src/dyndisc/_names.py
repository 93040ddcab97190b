"""Names and what they identify: an endpoint (``namespace.component.endpoint``) and queries over them."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import lru_cache

from dyndisc._errors import InvalidNameError

#: Longest accepted namespace, component or endpoint name, in characters.
MAX_NAME_LENGTH = 128
#: Characters no name may hold: ``/`` (it separates key segments), ``.`` (it separates the parts of a dotted
#: path) and control characters.
_FORBIDDEN = r"/.\x00-\x1f\x7f-\x9f"
#: What a name may hold, as a regular expression (shared by the decoders of stored records, which never
#: see a lone surrogate: JSON decoding refuses them before).
NAME_PATTERN = rf"^[^{_FORBIDDEN}]{{1,{MAX_NAME_LENGTH}}}$"

# Lone surrogates too: a str can hold one, and no encoding (UTF-8 keys, JSON) can carry it.
_NAME_RE = re.compile(rf"[^{_FORBIDDEN}\ud800-\udfff]+")
_NAME_RULE = (
    f"names are 1-{MAX_NAME_LENGTH} characters, any but '/', '.' and control characters "
    "(spaces, ':', '+' and non-ASCII letters are fine, as in the reference runtime)"
)


def is_name(value: str) -> bool:
    """Whether ``value`` is a name :func:`validate_name` accepts (a check without an error)."""
    return len(value) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(value) is not None


def validate_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid ``kind`` name (namespace, component or endpoint), else raise.

    Names accept what the reference runtime accepts (``ns.comp.ep:v2``, ``my ep``, ``nş``) except what could
    form a path or leave a key: no ``/``, no ``.``, no control character. Layouts whose alphabet is smaller
    (file names, NATS subjects) escape names; etcd keys and Kubernetes data hold them as they are.
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
    else:
        bad = next(c for c in value if not _NAME_RE.fullmatch(c))
        what = "a lone surrogate" if "\ud800" <= bad <= "\udfff" else "the control character"
        reason = f"it contains {what} {bad!r}"
    raise InvalidNameError(f"invalid {kind} name {value!r}: {reason}; {_NAME_RULE}")


@dataclass(frozen=True, slots=True, init=False)
class EndpointId:
    """Identity of an endpoint: ``namespace.component.endpoint``. Immutable and hashable."""

    namespace: str
    component: str
    endpoint: str

    def __init__(self, namespace: str, component: str, endpoint: str) -> None:
        object.__setattr__(self, "namespace", validate_name("namespace", namespace))
        object.__setattr__(self, "component", validate_name("component", component))
        object.__setattr__(self, "endpoint", validate_name("endpoint", endpoint))

    @classmethod
    def parse(cls, path: str) -> EndpointId:
        """Parse ``"ns.comp.ep"`` (optionally prefixed with ``dyn://``), as the reference runtime does."""
        if not isinstance(path, str):
            raise InvalidNameError(f"endpoint path must be a string, got {type(path).__name__}")
        return _parse_endpoint(path)

    @property
    def path(self) -> str:
        """``namespace/component/endpoint``: the relative key path used by the key-value backends."""
        return f"{self.namespace}/{self.component}/{self.endpoint}"

    def __str__(self) -> str:
        return f"{self.namespace}.{self.component}.{self.endpoint}"


@lru_cache(maxsize=4096)
def _parse_endpoint(path: str) -> EndpointId:
    # Cached: a router asks for the same few endpoints again and again (ids are immutable: sharing is safe).
    parts = path.removeprefix("dyn://").split(".")
    if len(parts) != 3:
        raise InvalidNameError(
            f"invalid endpoint path {path!r}: expected 'namespace.component.endpoint' (3 parts), "
            f"got {len(parts)}"
        )
    return EndpointId(*parts)


@lru_cache(maxsize=4096)
def endpoint_id(namespace: str, component: str, endpoint: str) -> EndpointId:
    """The shared :class:`EndpointId` of names already validated (every instance of an endpoint has one)."""
    found = object.__new__(EndpointId)
    object.__setattr__(found, "namespace", namespace)
    object.__setattr__(found, "component", component)
    object.__setattr__(found, "endpoint", endpoint)
    return found


@dataclass(frozen=True, slots=True, init=False)
class InstanceQuery:
    """Which instances a list or watch covers: everything, a namespace, a component or one endpoint."""

    namespace: str | None
    component: str | None
    endpoint: str | None

    def __init__(
        self, namespace: str | None = None, component: str | None = None, endpoint: str | None = None
    ) -> None:
        for kind, value in (("namespace", namespace), ("component", component), ("endpoint", endpoint)):
            object.__setattr__(self, kind, None if value is None else validate_name(kind, value))
        if endpoint is not None and component is None:
            raise InvalidNameError("a query naming an endpoint must also name its component")
        if component is not None and namespace is None:
            raise InvalidNameError("a query naming a component must also name its namespace")

    @classmethod
    def parse(cls, path: str | None) -> InstanceQuery:
        """``""``/``None`` (everything), ``"ns"``, ``"ns.comp"`` or ``"ns.comp.ep"``."""
        parts = path.removeprefix("dyn://").split(".") if path else []
        if len(parts) > 3:
            raise InvalidNameError(f"invalid query {path!r}: expected at most 'namespace.component.endpoint'")
        return cls(*parts)

    @classmethod
    def for_endpoint(cls, endpoint: EndpointId) -> InstanceQuery:
        """The query that matches exactly one endpoint."""
        return cls(endpoint.namespace, endpoint.component, endpoint.endpoint)

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
