"""What the reference runtime (NVIDIA Dynamo 1.6.1) reads: its buckets, the TCP transport its request plane
routes by, and the values of an endpoint record it accepts.

Measured against ``ai-dynamo-runtime==1.6.1`` (``tools/dynamo-reference/FINDINGS.md``): a record it cannot
read is skipped with a warning in its log, so a worker writing one is invisible to Dynamo. Layouts that
Dynamo reads use :func:`reference_skips` to refuse such a record (or keep it where only dyndisc reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

from dyndisc._errors import InvalidRecordError
from dyndisc._models import EndpointId, Instance, Transport

__all__ = [
    "DYNAMO_CODECS",
    "DYNAMO_DEVICE_TYPES",
    "DYNAMO_TRANSPORT_KINDS",
    "ENDPOINTS_BUCKET",
    "EVENT_CHANNELS_BUCKET",
    "EVENT_SOURCES_BUCKET",
    "MODEL_CARDS_BUCKET",
    "DynamoTcp",
    "dynamo_tcp",
    "reference_skips",
]

#: The reference's buckets: endpoint instances, model deployment cards, event channels and sources.
ENDPOINTS_BUCKET = "v1/instances"
MODEL_CARDS_BUCKET = "v1/mdc"
EVENT_CHANNELS_BUCKET = "v1/event_channels"
EVENT_SOURCES_BUCKET = "v1/event_sources"

#: Transport kinds the reference reads; it skips a record with any other (``http``, ``grpc``) or none.
DYNAMO_TRANSPORT_KINDS = ("tcp", "nats_tcp")
#: ``device_type`` values it reads (``"tpu"`` makes it skip the record).
DYNAMO_DEVICE_TYPES = ("cpu", "cuda")
#: ``request_plane_codec`` values it reads.
DYNAMO_CODECS = ("json", "msgpack")


def dynamo_tcp(host: str, port: int, endpoint: EndpointId, instance_id: int) -> Transport:
    """The reference's TCP transport of ``endpoint`` served by ``instance_id`` at ``host:port``:
    ``host:port/<instance id hex>/<namespace>/<component>/<endpoint>``, the path its TCP server routes by.

    The id is inside the path, so a registration that must follow a lease replacement should pass a
    :class:`DynamoTcp` instead, which the runtime renders for every lease.
    """
    return DynamoTcp(host, port).render(endpoint, instance_id)


@dataclass(frozen=True, slots=True)
class DynamoTcp:
    """A TCP transport in the reference's form, rendered by the runtime for each registration.

    ``await endpoint.register(DynamoTcp("10.0.0.5", 41555))`` writes
    ``{"tcp": "10.0.0.5:41555/<instance id hex>/<ns>/<comp>/<ep>"}``, and writes it again with the new id
    when a lost lease is replaced (a fixed address would keep routing to the old id's path).
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or any(c in self.host for c in "/ "):
            raise InvalidRecordError(f"a TCP host must be a host name or an IP address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise InvalidRecordError(f"a TCP port must be an integer in 1-65535, got {self.port!r}")

    def render(self, endpoint: EndpointId, instance_id: int) -> Transport:
        """The transport of ``endpoint`` for the instance ``instance_id``."""
        # An IPv6 address is bracketed, as the reference's socket addresses are.
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        path = f"{instance_id:x}/{endpoint.namespace}/{endpoint.component}/{endpoint.endpoint}"
        return Transport("tcp", f"{host}:{self.port}/{path}")


def reference_skips(instance: Instance) -> str | None:
    """Why the reference runtime would skip ``instance``'s record (so never route to it), or ``None``."""
    transport = instance.transport
    if transport is None:
        return "it has no transport"
    if transport.kind not in DYNAMO_TRANSPORT_KINDS:
        return f"its transport kind is {transport.kind!r}"
    if instance.device_type is not None and instance.device_type not in DYNAMO_DEVICE_TYPES:
        return f"its device type is {instance.device_type!r}"
    if instance.request_plane_codec is not None and instance.request_plane_codec not in DYNAMO_CODECS:
        return f"its request plane codec is {instance.request_plane_codec!r}"
    return None


#: What the reference reads, for messages.
READABLE = (
    f"transport kinds {', '.join(DYNAMO_TRANSPORT_KINDS)}; device types {', '.join(DYNAMO_DEVICE_TYPES)}; "
    f"codecs {', '.join(DYNAMO_CODECS)}"
)
