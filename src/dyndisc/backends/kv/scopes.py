"""Which keys a namespace owns, in every key layout, and what each role of a least-privilege setup may do.

A dyndisc process on a secured etcd or NATS can be confined to one Dynamo namespace: a **worker** of ``a``
may write only the keys of namespace ``a`` (its instances, their draining side records, its model cards, its
event channels, its entries of the buckets it is given) and read what routing needs; a **frontend** may only
read; an **operator** (the CLI, the UI) reads every key. The prefixes are derived from the layouts' own key
functions (:meth:`~dyndisc.backends.kv.layouts.KeyLayout.prefix_for`, ``side_prefix_for``, ``entry_prefix``,
:func:`~dyndisc._cards.model_card_prefix`, :func:`~dyndisc._cards.event_channel_prefix`), never written by
hand, so a change of a layout moves its scopes with it. Every prefix ends with ``/``: namespace ``a`` never
covers ``a-b``'s keys.

This module only computes; ``backends/etcd/access.py`` turns a :class:`Scope` into etcd roles and
``backends/nats/access.py`` into nats-server permissions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from dyndisc._cards import event_channel_prefix, event_segment, model_card_prefix
from dyndisc._dynamo import EVENT_CHANNELS_BUCKET, MODEL_CARDS_BUCKET
from dyndisc._entries import validate_bucket
from dyndisc._errors import ConfigurationError, InvalidNameError
from dyndisc._names import InstanceQuery, is_name, validate_name
from dyndisc.backends.kv.layouts import LAYOUT_NAMES, KeyLayout, make_layout

__all__ = [
    "EVERY_KEY",
    "Grant",
    "Role",
    "Scope",
    "namespace_of",
    "namespace_prefixes",
    "reader_prefixes",
]

#: The prefix of every key (an operator reads them all).
EVERY_KEY = ""


class Role(enum.StrEnum):
    """What a process may do: write one namespace and read (worker), read (frontend), read all (operator)."""

    WORKER = "worker"
    FRONTEND = "frontend"
    OPERATOR = "operator"


@dataclass(frozen=True, order=True)
class Grant:
    """Read (and, with ``write``, write) every key that starts with ``prefix``."""

    prefix: str
    write: bool = False

    @property
    def access(self) -> str:
        """``readwrite`` or ``read``, in etcd's words."""
        return "readwrite" if self.write else "read"

    def covers(self, key: str) -> bool:
        """Whether ``key`` lies under this grant's prefix."""
        return key.startswith(self.prefix)


def namespace_prefixes(layout: KeyLayout, namespace: str, buckets: Sequence[str] = ()) -> tuple[str, ...]:
    """Every key prefix under which a call of the API writes for ``namespace`` in ``layout``: its instances
    (and their side records), its model cards, its event channels, and its entries (keys starting with
    ``{namespace}/``) of each bucket in ``buckets``. Each ends with ``/``."""
    validate_name("namespace", namespace)
    query = InstanceQuery(namespace=namespace)
    found = [layout.prefix_for(query)]
    side = layout.side_prefix_for(query)
    if side is not None:
        found.append(side)
    found.append(layout.entry_prefix(MODEL_CARDS_BUCKET) + model_card_prefix(namespace))
    found.append(layout.entry_prefix(EVENT_CHANNELS_BUCKET) + event_channel_prefix(namespace))
    found += [layout.entry_prefix(bucket) + f"{namespace}/" for bucket in buckets]
    return tuple(dict.fromkeys(found))


def reader_prefixes(layout: KeyLayout, buckets: Sequence[str] = ()) -> tuple[str, ...]:
    """What a reader of every namespace reads in ``layout``: the prefix a watch of every instance covers,
    the model cards, the event channels and each bucket in ``buckets`` (a prefix inside another is left
    out: the outer one covers it)."""
    found = [
        layout.watch_prefix(InstanceQuery()),
        layout.entry_prefix(MODEL_CARDS_BUCKET),
        layout.entry_prefix(EVENT_CHANNELS_BUCKET),
        *(layout.entry_prefix(bucket) for bucket in buckets),
    ]
    return outermost(found)


def outermost(prefixes: Iterable[str]) -> tuple[str, ...]:
    """``prefixes`` without those another one of them covers, in order."""
    unique = list(dict.fromkeys(prefixes))
    return tuple(p for p in unique if not any(o != p and p.startswith(o) for o in unique))


def _layouts(names: Iterable[str]) -> tuple[KeyLayout, ...]:
    return tuple(make_layout(name) for name in names)


def namespace_of(key: str, layouts: Iterable[str] = LAYOUT_NAMES, buckets: Sequence[str] = ()) -> str | None:
    """The namespace whose keys ``key`` is one of (by :func:`namespace_prefixes`), or ``None`` when it is
    none's (a key of another bucket, or of no layout)."""
    for layout in _layouts(layouts):
        bases = [
            (f"{layout.root}/", False),
            (layout.entry_prefix(MODEL_CARDS_BUCKET), False),
            (layout.entry_prefix(EVENT_CHANNELS_BUCKET) + "namespace/", True),
            *((layout.entry_prefix(bucket), False) for bucket in buckets),
        ]
        if layout.side_root is not None:
            bases.append((f"{layout.side_root}/", False))
        for base, escaped in bases:
            if not key.startswith(base):
                continue
            segment = key[len(base) :].split("/", 1)[0]
            name = _unescape(segment) if escaped else segment
            # Only a key that the namespace's own prefixes cover counts: the two functions cannot disagree.
            if (
                name is not None
                and is_name(name)
                and any(key.startswith(p) for p in namespace_prefixes(layout, name, buckets))
            ):
                return name
    return None


def _unescape(segment: str) -> str | None:
    """The name an event channel path segment spells (:func:`~dyndisc._cards.event_segment` reversed)."""
    try:
        name = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return None
    return name if event_segment(name) == segment else None


@dataclass(frozen=True)
class Scope:
    """One role of a least-privilege setup: what a process holding it may read and write.

    ``namespace`` is required for a worker (the one namespace it writes). ``layouts`` are the key layouts
    the grants cover (both by default, so a switch of ``DYN_KV_LAYOUT`` needs no new role); ``buckets`` are
    further metadata buckets whose ``{namespace}/`` keys a worker writes and every role reads.
    """

    role: Role
    namespace: str | None = None
    layouts: tuple[str, ...] = LAYOUT_NAMES
    buckets: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))
        if self.role is Role.WORKER:
            if self.namespace is None:
                raise ConfigurationError("a worker role writes one namespace: give --namespace")
            validate_name("namespace", self.namespace)
        elif self.namespace is not None:
            validate_name("namespace", self.namespace)
        unknown = [name for name in self.layouts if name not in LAYOUT_NAMES]
        if unknown or not self.layouts:
            raise ConfigurationError(
                f"unknown key layout(s) {unknown or self.layouts!r}; valid: {', '.join(LAYOUT_NAMES)}"
            )
        for bucket in self.buckets:
            validate_bucket(bucket)
            for layout in _layouts(self.layouts):
                try:
                    layout.entry_prefix(bucket)
                except InvalidNameError as exc:
                    raise ConfigurationError(f"--bucket {bucket!r}: {exc}") from None

    @property
    def role_name(self) -> str:
        """The role's name: ``dyndisc-worker-<namespace>``, ``dyndisc-frontend`` or ``dyndisc-operator``."""
        if self.role is Role.WORKER:
            return f"dyndisc-worker-{self.namespace}"
        return f"dyndisc-{self.role.value}"

    def grants(self) -> tuple[Grant, ...]:
        """Every grant of the role, sorted (reads of everything a router reads; a worker's writes)."""
        if self.role is Role.OPERATOR:
            return (Grant(EVERY_KEY),)
        layouts = _layouts(self.layouts)
        reads = outermost(p for layout in layouts for p in reader_prefixes(layout, self.buckets))
        found = {Grant(prefix) for prefix in reads}
        if self.role is Role.WORKER:
            assert self.namespace is not None
            found |= {
                Grant(prefix, write=True)
                for layout in layouts
                for prefix in namespace_prefixes(layout, self.namespace, self.buckets)
            }
        return tuple(sorted(found))

    def write_prefixes(self) -> tuple[str, ...]:
        """The prefixes this role may write (none but a worker's)."""
        return tuple(g.prefix for g in self.grants() if g.write)

    def may_write(self, key: str) -> bool:
        """Whether the role may write ``key``."""
        return any(g.write and g.covers(key) for g in self.grants())

    def may_read(self, key: str) -> bool:
        """Whether the role may read ``key``."""
        return any(g.covers(key) for g in self.grants())
