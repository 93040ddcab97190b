"""Model deployment cards and event channels: the two kinds of metadata entry the reference runtime reads.

Both are :class:`~dyndisc.MetadataEntry` values in the reference's buckets and shapes, so a Dynamo frontend
lists a model a dyndisc worker registered and a dyndisc watcher reads the cards of Dynamo workers:

* a card is ``{"type": "Model", "namespace", "component", "endpoint", "instance_id", "card_json"}`` at
  ``v1/mdc/{ns}/{comp}/{ep}/{instance_id:x}`` (a LoRA adds ``/{lora}`` and ``"model_suffix"``); a frontend
  lists it while an endpoint record with the same instance id is live;
* an event channel is ``{"type": "EventChannel", "scope", "topic", "instance_id", "transport"}`` at
  ``v1/event_channels/namespace/{ns}/component/{comp}/endpoint/{ep}/topic/{topic}/{publisher id:x}``.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dyndisc._dynamo import EVENT_CHANNELS_BUCKET, MODEL_CARDS_BUCKET
from dyndisc._entries import MetadataEntry, validate_entry_key
from dyndisc._errors import InvalidRecordError
from dyndisc._hex import dataclass_repr
from dyndisc._metadata import freeze_metadata
from dyndisc._models import MAX_INSTANCE_ID, EndpointId
from dyndisc._names import validate_name

__all__ = ["EventChannel", "ModelCard", "event_channel_prefix", "model_card", "model_card_prefix"]

#: Largest publisher id of an event channel: the reference keeps ids JSON-number safe (Kubernetes stores
#: numbers as float64).
MAX_PUBLISHER_ID = 2**53 - 1

_PLAIN = frozenset(string.ascii_letters + string.digits + "_-")


def event_segment(text: str) -> str:
    """An event channel path segment as the reference writes it: letters, digits, ``_`` and ``-`` as they
    are, every other UTF-8 byte as ``%XX`` (upper-case hex)."""
    return "".join(c if c in _PLAIN else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def model_card_prefix(*names: str) -> str:
    """The key prefix, in the ``v1/mdc`` bucket, of the cards of a namespace, a component or an endpoint
    (``ns/``, ``ns/comp/``, ``ns/comp/ep/``): every card's key starts with its endpoint's."""
    return "".join(f"{name}/" for name in names)


def event_channel_prefix(*names: str) -> str:
    """The key prefix, in the ``v1/event_channels`` bucket, of the channels of a namespace, a component or
    an endpoint (``namespace/ns/``, ``namespace/ns/component/comp/`` ...): every channel's key starts with
    the prefix of its scope, and so with its namespace's."""
    kinds = ("namespace", "component", "endpoint")
    return "".join(f"{kind}/{event_segment(name)}/" for kind, name in zip(kinds, names, strict=False))


def model_card(
    name: str,
    *,
    model_type: str = "Chat",
    model_input: str = "Text",
    kv_cache_block_size: int = 16,
    migration_limit: int = 0,
    worker_type: str = "aggregated",
    **extra: Any,
) -> dict[str, Any]:
    """The smallest ``card_json`` a reference frontend (1.6.1) lists: ``display_name``, ``slug``,
    ``kv_cache_block_size``, ``migration_limit``, ``model_type``, ``model_input`` and ``worker_type``.

    ``model_input="Text"`` needs no tokenizer: the frontend forwards the OpenAI request as it is. A
    ``"Tokens"`` model also needs ``model_info``, ``tokenizer`` and ``prompt_formatter`` file references with
    blake3 checksums of files readable on the frontend's host; pass them in ``extra``.
    """
    return {
        "display_name": name,
        "slug": name,
        "kv_cache_block_size": kv_cache_block_size,
        "migration_limit": migration_limit,
        "model_type": model_type,
        "model_input": model_input,
        "worker_type": worker_type,
        **extra,
    }


def _require(body: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidRecordError(f"{where}: {name!r} is {value!r}, not a {kind.__name__}")
    return value


@dataclass(frozen=True, slots=True)
class ModelCard:
    """A model deployment card registered on one endpoint instance (``card`` is the reference's
    ``card_json``; ``lora`` names a LoRA adapter served on top of the base model)."""

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    card: Mapping[str, Any]
    lora: str | None = None

    def __post_init__(self) -> None:
        for kind in ("namespace", "component", "endpoint"):
            validate_name(kind, getattr(self, kind))
        if isinstance(self.instance_id, bool) or not 0 <= self.instance_id <= MAX_INSTANCE_ID:
            raise InvalidRecordError(f"instance id {self.instance_id!r} is not an unsigned 64-bit integer")
        if self.lora is not None and (not self.lora or "/" in validate_entry_key(self.lora)):
            raise InvalidRecordError(f"a LoRA name is one key segment (no '/'), got {self.lora!r}")
        object.__setattr__(self, "card", freeze_metadata(self.card, f"the model card of {self.endpoint_id}"))

    def __repr__(self) -> str:
        return dataclass_repr(self, ("namespace", "component", "endpoint", "instance_id", "card", "lora"))

    @property
    def endpoint_id(self) -> EndpointId:
        """The endpoint serving the model."""
        return EndpointId(self.namespace, self.component, self.endpoint)

    @property
    def display_name(self) -> str | None:
        """The model's name as a frontend lists it (``card_json.display_name``)."""
        name = self.card.get("display_name")
        return name if isinstance(name, str) else None

    @property
    def slug(self) -> str | None:
        """The card's ``slug``."""
        slug = self.card.get("slug")
        return slug if isinstance(slug, str) else None

    @property
    def key(self) -> str:
        """The card's key in the ``v1/mdc`` bucket."""
        suffix = f"/{self.lora}" if self.lora is not None else ""
        endpoint = model_card_prefix(self.namespace, self.component, self.endpoint)
        return f"{endpoint}{self.instance_id:x}{suffix}"

    def to_entry(self) -> MetadataEntry:
        """The card as the reference writes it."""
        body: dict[str, Any] = {
            "type": "Model",
            "namespace": self.namespace,
            "component": self.component,
            "endpoint": self.endpoint,
            "instance_id": self.instance_id,
            "card_json": self.card,
        }
        if self.lora is not None:
            body["model_suffix"] = self.lora
        return MetadataEntry(MODEL_CARDS_BUCKET, self.key, body)

    @classmethod
    def from_entry(cls, entry: MetadataEntry) -> ModelCard:
        """Read a card of the ``v1/mdc`` bucket; :class:`~dyndisc.InvalidRecordError` if it is not one (or
        if it is not stored at its own key, which the reference would not remove with its instance)."""
        where = f"model card {entry}"
        body = entry.value
        if body.get("type") != "Model":
            raise InvalidRecordError(f"{where}: type is {body.get('type')!r}, not 'Model'")
        suffix = body.get("model_suffix")
        try:
            card = cls(
                namespace=_require(body, "namespace", str, where),
                component=_require(body, "component", str, where),
                endpoint=_require(body, "endpoint", str, where),
                instance_id=_require(body, "instance_id", int, where),
                card=_require(body, "card_json", dict, where),
                lora=suffix if isinstance(suffix, str) else None,
            )
        except ValueError as exc:
            raise InvalidRecordError(f"{where}: {exc}") from None
        if card.key != entry.key:
            raise InvalidRecordError(f"{where}: its content belongs at key {card.key!r}")
        return card


@dataclass(frozen=True, slots=True)
class EventChannel:
    """Where a publisher of ``topic`` events can be reached, for an endpoint (or, with ``endpoint`` or
    ``component`` left out, a component or a namespace). ``transport`` is the reference's
    ``{"kind": "Zmq", "config": {"endpoint": "tcp://host:port"}}`` (or ``Nats``, ``ZmqBroker``)."""

    namespace: str
    component: str | None
    endpoint: str | None
    topic: str
    publisher_id: int
    transport: Mapping[str, Any]

    def __post_init__(self) -> None:
        validate_name("namespace", self.namespace)
        if self.component is not None:
            validate_name("component", self.component)
        if self.endpoint is not None:
            validate_name("endpoint", self.endpoint)
            if self.component is None:
                raise InvalidRecordError("an event channel of an endpoint also names its component")
        if not isinstance(self.topic, str) or not self.topic:
            raise InvalidRecordError(f"an event channel topic is a non-empty string, got {self.topic!r}")
        pid = self.publisher_id
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= MAX_PUBLISHER_ID:
            raise InvalidRecordError(f"a publisher id is an integer in 1..2**53-1, got {pid!r}")
        object.__setattr__(self, "transport", freeze_metadata(self.transport, f"event channel {self.topic}"))

    def __repr__(self) -> str:
        names = ("namespace", "component", "endpoint", "topic", "publisher_id", "transport")
        return dataclass_repr(self, names)

    @staticmethod
    def new_publisher_id() -> int:
        """A random publisher id in the range the reference uses (JSON-number safe)."""
        return secrets.randbelow(MAX_PUBLISHER_ID) + 1

    @property
    def scope(self) -> dict[str, Any]:
        """The reference's ``scope`` object."""
        if self.endpoint is not None:
            names = {"namespace": self.namespace, "component": self.component, "name": self.endpoint}
            return {"kind": "endpoint", "endpoint": names}
        if self.component is not None:
            return {"kind": "component", "namespace": self.namespace, "component": self.component}
        return {"kind": "namespace", "name": self.namespace}

    @property
    def key(self) -> str:
        """The channel's key in the ``v1/event_channels`` bucket."""
        names = [n for n in (self.namespace, self.component, self.endpoint) if n is not None]
        return f"{event_channel_prefix(*names)}topic/{event_segment(self.topic)}/{self.publisher_id:x}"

    def to_entry(self) -> MetadataEntry:
        """The channel as the reference writes it."""
        body = {
            "type": "EventChannel",
            "scope": self.scope,
            "topic": self.topic,
            "instance_id": self.publisher_id,
            "transport": self.transport,
        }
        return MetadataEntry(EVENT_CHANNELS_BUCKET, self.key, body)

    @classmethod
    def from_entry(cls, entry: MetadataEntry) -> EventChannel:
        """Read a channel of the ``v1/event_channels`` bucket; :class:`~dyndisc.InvalidRecordError` if it is
        not one."""
        where = f"event channel {entry}"
        body = entry.value
        if body.get("type") != "EventChannel":
            raise InvalidRecordError(f"{where}: type is {body.get('type')!r}, not 'EventChannel'")
        scope = _require(body, "scope", dict, where)
        kind = scope.get("kind")
        names: Mapping[str, Any]
        if kind == "endpoint":
            names = _require(scope, "endpoint", dict, where)
            namespace, component, endpoint = names.get("namespace"), names.get("component"), names.get("name")
        elif kind == "component":
            namespace, component, endpoint = scope.get("namespace"), scope.get("component"), None
        elif kind == "namespace":
            namespace, component, endpoint = scope.get("name"), None, None
        else:
            raise InvalidRecordError(f"{where}: unknown scope kind {kind!r}")
        try:
            channel = cls(
                namespace=namespace,  # type: ignore[arg-type]  # checked by the constructor
                component=component,
                endpoint=endpoint,
                topic=_require(body, "topic", str, where),
                publisher_id=_require(body, "instance_id", int, where),
                transport=_require(body, "transport", dict, where),
            )
        except ValueError as exc:
            raise InvalidRecordError(f"{where}: {exc}") from None
        if channel.key != entry.key:
            raise InvalidRecordError(f"{where}: its content belongs at key {channel.key!r}")
        return channel
