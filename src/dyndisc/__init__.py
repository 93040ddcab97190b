"""dyndisc: the discovery plane of a distributed LLM-serving runtime.

Workers register endpoints under a per-process lease kept alive by a background loop; frontends and
routers watch the live set of instances. See ``docs/`` for the concepts and one page per backend.
"""

from dyndisc._cards import EventChannel, ModelCard, model_card
from dyndisc._client import Client
from dyndisc._dynamo import (
    ENDPOINTS_BUCKET,
    EVENT_CHANNELS_BUCKET,
    EVENT_SOURCES_BUCKET,
    MODEL_CARDS_BUCKET,
    DynamoTcp,
    dynamo_tcp,
)
from dyndisc._entries import (
    MAX_ENTRY_BYTES,
    EntryAdded,
    EntryEvent,
    EntryRemoved,
    EntryResync,
    MetadataEntry,
)
from dyndisc._errors import (
    AccessDeniedError,
    BackendUnavailableError,
    ConfigurationError,
    DyndiscError,
    InstanceNotFoundError,
    InvalidNameError,
    InvalidRecordError,
    LeaseLostError,
    LeaseNotFoundError,
    MissingExtraError,
    NoInstancesError,
    RecordTooLargeError,
    RegistrationConflictError,
    RuntimeNotStartedError,
)
from dyndisc._events import Added, DiscoveryEvent, RemovalReason, Removed, Resync
from dyndisc._instance_set import InstanceSet
from dyndisc._metadata import MAX_METADATA_DEPTH
from dyndisc._models import (
    MAX_NAME_LENGTH,
    MAX_RECORD_BYTES,
    EndpointId,
    Instance,
    InstanceQuery,
    Readiness,
    Transport,
)
from dyndisc._settings import BackendName, LeaseLossPolicy, RuntimeSettings
from dyndisc.backends import DiscoveryBackend, KeyValueStore, KvDiscovery, Lease, MemoryStore, create_backend
from dyndisc.runtime import (
    Bucket,
    Component,
    DistributedRuntime,
    Endpoint,
    LeaseChange,
    LeaseState,
    Namespace,
    RuntimeHealth,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ENDPOINTS_BUCKET",
    "EVENT_CHANNELS_BUCKET",
    "EVENT_SOURCES_BUCKET",
    "MAX_ENTRY_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_NAME_LENGTH",
    "MAX_RECORD_BYTES",
    "MODEL_CARDS_BUCKET",
    "AccessDeniedError",
    "Added",
    "BackendName",
    "BackendUnavailableError",
    "Bucket",
    "Client",
    "Component",
    "ConfigurationError",
    "DiscoveryBackend",
    "DiscoveryEvent",
    "DistributedRuntime",
    "DynamoTcp",
    "DyndiscError",
    "Endpoint",
    "EndpointId",
    "EntryAdded",
    "EntryEvent",
    "EntryRemoved",
    "EntryResync",
    "EventChannel",
    "Instance",
    "InstanceNotFoundError",
    "InstanceQuery",
    "InstanceSet",
    "InvalidNameError",
    "InvalidRecordError",
    "KeyValueStore",
    "KvDiscovery",
    "Lease",
    "LeaseChange",
    "LeaseLossPolicy",
    "LeaseLostError",
    "LeaseNotFoundError",
    "LeaseState",
    "MemoryStore",
    "MetadataEntry",
    "MissingExtraError",
    "ModelCard",
    "Namespace",
    "NoInstancesError",
    "Readiness",
    "RecordTooLargeError",
    "RegistrationConflictError",
    "RemovalReason",
    "Removed",
    "Resync",
    "RuntimeHealth",
    "RuntimeNotStartedError",
    "RuntimeSettings",
    "Transport",
    "create_backend",
    "dynamo_tcp",
    "model_card",
]
