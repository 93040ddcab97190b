"""Key layouts of the key-value backends: where instances and metadata entries are stored, in what shape.

``dyndisc`` (the default) stores ``{root}/{namespace}/{component}/{endpoint}/{instance_id:x}`` with the
compact record of :meth:`~dyndisc.Instance.to_json`, under ``/services``, and the entries of a bucket ``b``
under ``/b/``.

``dynamo-v1`` reads and writes what the reference runtime (NVIDIA Dynamo 1.6.1) writes, so dyndisc frontends
see Dynamo workers and Dynamo frontends see dyndisc workers: the key is
``v1/instances/{namespace}/{component}/{endpoint}/{instance_id:x}`` (no leading slash) and the value is
Dynamo's internally tagged ``DiscoveryInstance::Endpoint`` record::

    {"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",
     "instance_id":7587888160958627365,
     "transport":{"tcp":"10.0.0.5:41555/694d98147d54be25/dynamo/backend/generate"},
     "device_type":"cuda","request_plane_codec":"msgpack"}

The entries of a bucket ``v1/mdc`` live under ``v1/mdc/``, as the reference's. A draining instance is moved
to ``v1/dyndisc_endpoints/...``, which only dyndisc reads: Dynamo stops routing to it while dyndisc watchers
see it draining. Select the layout with ``KvDiscovery(store, layout="dynamo-v1")`` or
``DYN_KV_LAYOUT=dynamo-v1``.
"""

from __future__ import annotations

import abc
import json
import logging
import os
from functools import cached_property
from typing import Any

from dyndisc._dynamo import ENDPOINTS_BUCKET, READABLE, reference_skips
from dyndisc._entries import validate_bucket
from dyndisc._errors import ConfigurationError, InvalidNameError, InvalidRecordError
from dyndisc._models import EndpointId, Instance, InstanceQuery, Readiness, record_decoder
from dyndisc._names import endpoint_id, is_name

log = logging.getLogger("dyndisc.kv")

#: Endpoints whose key prefix a layout remembers (a few per deployment; past it, it starts over).
_PREFIX_CACHE = 4096

#: Default key root of the ``dyndisc`` layout.
DEFAULT_ROOT = "/services"
#: Layout names accepted by ``DYN_KV_LAYOUT`` and ``KvDiscovery(layout=...)``.
LAYOUT_NAMES = ("dyndisc", "dynamo-v1")
#: Key prefix of endpoint instances in the reference runtime (its ``v1/instances`` bucket).
DYNAMO_V1_ROOT = ENDPOINTS_BUCKET
#: Where the dynamo-v1 layout keeps the records Dynamo must not route to (draining instances): a bucket
#: the reference never reads.
DYNAMO_V1_SIDE_ROOT = "v1/dyndisc_endpoints"
#: Fields of Dynamo's endpoint record that dyndisc reads; other top-level fields the reference may add are
#: ignored (not folded into metadata, which would move them on the next write).
_DYNAMO_FIELDS = (
    "namespace",
    "component",
    "endpoint",
    "instance_id",
    "transport",
    "device_type",
    "request_plane_codec",
    "metadata",
    "readiness",
)


class SkipLog:
    """Warns once about each version of a key that is skipped, with a short prefix of its value: a large
    foreign value read again at every relist must not flood the log."""

    #: Bytes of a skipped value shown in the warning.
    PREVIEW = 80
    #: Keys remembered; past it, the memory starts over (a key may then be warned about once more).
    LIMIT = 10_000

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def warn(self, key: str, value: bytes, why: str) -> None:
        version = hash(value)
        if self._seen.get(key) == version:
            return
        if len(self._seen) >= self.LIMIT:
            self._seen.clear()
        self._seen[key] = version
        shown = repr(value[: self.PREVIEW]) + (
            f"... ({len(value)} bytes)" if len(value) > self.PREVIEW else ""
        )
        log.warning("skipping %r = %s: %s", key, shown, why)


class KeyLayout(abc.ABC):
    """Where instances live in a key-value store, and how their records are encoded."""

    #: Name used by ``DYN_KV_LAYOUT``.
    name: str
    #: The key prefix of every instance, without the trailing ``/``.
    root: str
    #: The key prefix of the instances the reference runtime must not route to (draining), or ``None``
    #: when the layout keeps them with the others.
    side_root: str | None = None
    #: Where skipped records are reported.
    skipped: SkipLog

    def key_for(self, instance: Instance) -> str:
        """The key an instance is stored under."""
        return self._endpoint_prefix(instance.namespace, instance.component, instance.endpoint) + format(
            instance.instance_id, "x"
        )

    def _endpoint_prefix(self, namespace: str, component: str, endpoint: str) -> str:
        # Every record a watcher reads is checked against its key: the endpoint's part is built once.
        names = (namespace, component, endpoint)
        found = self._prefixes.get(names)
        if found is None:
            if len(self._prefixes) >= _PREFIX_CACHE:
                self._prefixes.clear()
            found = self._prefixes[names] = f"{self.root}/{namespace}/{component}/{endpoint}/"
        return found

    @cached_property
    def _prefixes(self) -> dict[tuple[str, str, str], str]:
        return {}

    def identity_of(self, key: str) -> tuple[EndpointId, int] | None:
        """The endpoint and instance id a key of this layout stands for, or ``None`` if it is not one (a key
        :meth:`key_for` could not have written)."""
        if not key.startswith(self.root + "/"):
            return None
        parts = key[len(self.root) + 1 :].split("/")
        if len(parts) != 4 or not all(is_name(p) for p in parts[:3]):
            return None
        try:
            instance_id = int(parts[3], 16)
        except ValueError:
            return None
        if format(instance_id, "x") != parts[3]:
            return None
        return endpoint_id(parts[0], parts[1], parts[2]), instance_id

    def side_key_for(self, instance: Instance) -> str:
        """The key of ``instance`` under :attr:`side_root` (only for layouts that have one)."""
        assert self.side_root is not None
        return f"{self.side_root}/{instance.endpoint_id.path}/{instance.instance_id:x}"

    def prefix_for(self, query: InstanceQuery) -> str:
        """The key prefix covering ``query``; it ends with ``/`` so ``ns`` never matches ``ns2``."""
        return "/".join((self.root, *query.parts)) + "/"

    def side_prefix_for(self, query: InstanceQuery) -> str | None:
        """The prefix covering ``query`` under :attr:`side_root`, or ``None``."""
        if self.side_root is None:
            return None
        return "/".join((self.side_root, *query.parts)) + "/"

    def watch_prefix(self, query: InstanceQuery) -> str:
        """The one prefix a watch of ``query`` covers: its instances and, in a layout with a side root, their
        side records, so that a record moving between the two arrives in the order it was written."""
        main = self.prefix_for(query)
        side = self.side_prefix_for(query)
        return main if side is None else shared_prefix(main, side)

    def is_side(self, instance: Instance) -> bool:
        """Whether ``instance`` is stored under :attr:`side_root` (draining, in a layout that has one)."""
        return self.side_root is not None and instance.readiness is Readiness.DRAINING

    @abc.abstractmethod
    def entry_prefix(self, bucket: str) -> str:
        """The key prefix (ending with ``/``) of the entries of ``bucket``; raise
        :class:`~dyndisc.InvalidNameError` for a bucket this layout cannot hold (where its instances live)."""

    def _check_apart(self, bucket: str, prefix: str) -> str:
        for taken in (self.root, self.side_root):
            if taken is not None and (prefix.startswith(taken + "/") or (taken + "/").startswith(prefix)):
                raise InvalidNameError(
                    f"bucket {bucket!r} is where the {self.name} layout keeps endpoint instances "
                    f"({taken}/): register endpoints with Endpoint.register(), and pick another bucket"
                )
        return prefix

    @abc.abstractmethod
    def encode(self, instance: Instance) -> bytes:
        """The stored record of ``instance``; raises ``ValueError`` if it cannot be written."""

    @abc.abstractmethod
    def decode(self, value: bytes) -> Instance:
        """Read a stored record; raises ``ValueError`` if it is not one."""

    def parse(self, key: str, value: bytes) -> Instance | None:
        """Read one stored record, or warn (once per version of the key) and return ``None`` if it is not
        one of ours.

        A record counts only at the exact key this layout writes for it: another spelling of its id
        (``01f``, ``1F``, ``0x1f``) or a key naming another endpoint is skipped, so every reader (a list, a
        new watch, a running watch) sees one instance per key, and the same one. A record under
        :attr:`side_root` is draining, whatever it says.
        """
        side = self.side_root is not None and key.startswith(self.side_root + "/")
        root = self.side_root if side else self.root
        assert root is not None
        if key.startswith(root) and key[len(root) : len(root) + 1] == "/":
            try:
                instance = self.decode(value)
            except ValueError as exc:
                if key.count("/", len(root) + 1) == 3:
                    self.skipped.warn(key, value, f"not a record: {exc}")
                    return None
            else:
                if side and instance.readiness is not Readiness.DRAINING:
                    instance = instance.replace(readiness=Readiness.DRAINING)
                # The common case costs one string comparison: a record at the key it was written for.
                expected = self.side_key_for(instance) if side else self.key_for(instance)
                if key == expected:
                    return instance
                if key.count("/", len(root) + 1) == 3:
                    self.skipped.warn(key, value, f"the record belongs at {expected!r}")
                    return None
        self.skipped.warn(key, value, f"not {root}/<namespace>/<component>/<endpoint>/<id hex>")
        return None

    def parse_all(self, items: dict[str, bytes]) -> list[Instance]:
        """Every record of ``items`` that :meth:`parse` reads, in the order given."""
        parse = self.parse
        return [i for i in (parse(k, v) for k, v in items.items()) if i is not None]


class DyndiscLayout(KeyLayout):
    """``{root}/{namespace}/{component}/{endpoint}/{instance_id:x}`` holding :meth:`Instance.to_json`."""

    name = "dyndisc"

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        if not root.startswith("/") or root.endswith("/"):
            raise ConfigurationError(f"key root {root!r} must start with '/' and not end with '/'")
        self.root = root
        self.skipped = SkipLog()

    def encode(self, instance: Instance) -> bytes:
        return instance.to_json()

    def decode(self, value: bytes) -> Instance:
        return Instance.from_json(value)

    def entry_prefix(self, bucket: str) -> str:
        return self._check_apart(bucket, f"/{validate_bucket(bucket)}/")

    def parse_all(self, items: dict[str, bytes]) -> list[Instance]:
        # A snapshot of a large prefix: pydantic-core is called straight, and the key is checked against the
        # endpoint's prefix of the record before (a run of one endpoint's records). Anything unusual takes
        # the one-record path, which warns exactly as parse() does.
        decode = record_decoder()
        found: list[Instance] = []
        names: tuple[str, str, str] | None = None
        prefix = ""
        for key, value in items.items():
            try:
                instance = decode(value)
            except ValueError:
                pass
            else:
                here = (instance.namespace, instance.component, instance.endpoint)
                if here != names:
                    names, prefix = here, self._endpoint_prefix(*here)
                if key.startswith(prefix) and key[len(prefix) :] == format(instance.instance_id, "x"):
                    found.append(instance)
                    continue
            slow = self.parse(key, value)
            if slow is not None:
                found.append(slow)
        return found


class DynamoV1Layout(KeyLayout):
    """The reference runtime's ``v1/instances/...`` keys and tagged ``"type":"Endpoint"`` records.

    Written fields, in the reference's order: ``type``, ``component``, ``endpoint``, ``namespace``,
    ``instance_id``, ``transport`` (externally tagged; a Dynamo client sends TCP requests to exactly that
    address, whose path must be ``<id hex>/<ns>/<comp>/<ep>``: build it with :class:`~dyndisc.DynamoTcp`),
    then ``device_type`` and ``request_plane_codec`` when set. dyndisc's own ``metadata`` and a
    ``readiness`` other than ``ready`` are added only when set; the reference ignores unknown fields.

    A record the reference would skip (no transport, a transport kind other than ``tcp`` / ``nats_tcp``, a
    device type or codec it does not know) is refused with :class:`~dyndisc.InvalidRecordError`: under this
    layout a worker is meant to be seen by Dynamo, and Dynamo would silently not see it. A draining instance
    is written under :data:`DYNAMO_V1_SIDE_ROOT` instead, where only dyndisc reads it.
    """

    name = "dynamo-v1"
    root = DYNAMO_V1_ROOT
    side_root = DYNAMO_V1_SIDE_ROOT

    def __init__(self) -> None:
        self.skipped = SkipLog()

    def encode(self, instance: Instance) -> bytes:
        body: dict[str, Any] = {
            "type": "Endpoint",
            "component": instance.component,
            "endpoint": instance.endpoint,
            "namespace": instance.namespace,
            "instance_id": instance.instance_id,
            "transport": instance.transport.to_wire() if instance.transport is not None else None,
        }
        if instance.device_type is not None:
            body["device_type"] = instance.device_type
        if instance.request_plane_codec is not None:
            body["request_plane_codec"] = instance.request_plane_codec
        data = instance.encode_record(body)  # a record too large is that first
        why = reference_skips(instance)
        if why is not None:
            raise InvalidRecordError(
                f"the reference runtime (Dynamo 1.6.1) skips the record of {instance.endpoint_id} because "
                f"{why}, so under the dynamo-v1 layout this worker would be invisible to Dynamo; it reads "
                f"{READABLE}. Give a transport Dynamo can call, e.g. DynamoTcp(host, port), or use "
                "layout='dyndisc'"
            )
        return data

    def entry_prefix(self, bucket: str) -> str:
        if validate_bucket(bucket).count("/") != 1:
            raise InvalidNameError(
                f"invalid bucket {bucket!r} for the dynamo-v1 layout: its buckets are two segments like the "
                "reference's ('v1/mdc', 'v1/event_channels'), each a directory of its file store"
            )
        return self._check_apart(bucket, f"{bucket}/")

    def decode(self, value: bytes) -> Instance:
        try:
            body = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError(f"expected a JSON object, got {type(body).__name__}")
        if body.get("type") != "Endpoint":
            raise ValueError(f"expected a Dynamo record of type 'Endpoint', got type {body.get('type')!r}")
        return Instance.from_dict({k: body[k] for k in _DYNAMO_FIELDS if k in body})


def shared_prefix(*prefixes: str) -> str:
    """The longest run of whole segments (ending with ``/``) that starts every prefix."""
    shared: list[str] = []
    for segments in zip(*(p.split("/")[:-1] for p in prefixes), strict=False):
        if len(set(segments)) != 1:
            break
        shared.append(segments[0])
    return "".join(f"{s}/" for s in shared)


def layout_from_env() -> str:
    """``DYN_KV_LAYOUT`` (default ``dyndisc``)."""
    return os.environ.get("DYN_KV_LAYOUT", "dyndisc").strip().lower() or "dyndisc"


def make_layout(layout: str | KeyLayout | None, *, root: str | None = None) -> KeyLayout:
    """A :class:`KeyLayout` from a name (``dyndisc``, ``dynamo-v1``), an instance, or ``DYN_KV_LAYOUT``."""
    if isinstance(layout, KeyLayout):
        if root is not None:
            raise ValueError("give either a KeyLayout or a root, not both")
        return layout
    name = layout_from_env() if layout is None else layout.strip().lower()
    if name == "dyndisc":
        return DyndiscLayout(DEFAULT_ROOT if root is None else root)
    if name in ("dynamo-v1", "dynamo"):
        if root is not None and root != DYNAMO_V1_ROOT:
            raise ConfigurationError(
                f"the dynamo-v1 layout always uses the key root {DYNAMO_V1_ROOT!r} "
                f"(the reference runtime's); drop root={root!r} or use layout='dyndisc'"
            )
        return DynamoV1Layout()
    raise ConfigurationError(
        f"unknown key layout {layout if layout is not None else name!r} (DYN_KV_LAYOUT); valid: "
        + ", ".join(LAYOUT_NAMES)
    )
