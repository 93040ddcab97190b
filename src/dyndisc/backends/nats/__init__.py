"""The NATS backend: discovery keys in one JetStream KV bucket, liveness by one TTL'd lease key per process.

Settings (environment, see ``docs/backends/nats.md``): ``NATS_SERVER``, ``NATS_USER`` / ``NATS_PASSWORD``,
``NATS_TOKEN``, ``NATS_CREDS``, ``NATS_CA`` / ``NATS_CERT`` / ``NATS_KEY``, ``NATS_KV_BUCKET``,
``NATS_KV_REPLICAS``, ``NATS_KV_MARKER_TTL``, ``NATS_TIMEOUT`` and ``NATS_STARTUP_CONNECT_TIMEOUT``.

The room: ``settings``, ``connection`` (the client connection and bucket requests), ``bucket`` (creating the
bucket, checking an existing one), ``failover`` (leaving a server cut off from its cluster), ``keys`` (dyndisc
keys as NATS keys), ``feed`` (one ordered consumer), ``watch`` (a prefix watch that resyncs after reconnects),
``store`` (the :class:`NatsStore`, leases emulated with TTL'd lease keys that readers join keys to).
"""

from __future__ import annotations

from dyndisc.backends.kv import KvDiscovery
from dyndisc.backends.nats.bucket import MIN_SERVER_VERSION
from dyndisc.backends.nats.settings import NatsSettings
from dyndisc.backends.nats.store import NatsStore

__all__ = ["MIN_SERVER_VERSION", "NatsSettings", "NatsStore", "from_env"]


def from_env(*, startup_timeout: float | None = None, startup_timeout_name: str | None = None) -> KvDiscovery:
    """The ``nats`` backend: a :class:`NatsStore` configured from ``NATS_*`` environment variables.

    ``startup_timeout`` replaces ``NATS_STARTUP_CONNECT_TIMEOUT`` when given, and messages name
    ``startup_timeout_name`` (such as ``--wait``) as what set it.
    """
    overrides = {} if startup_timeout is None else {"startup_connect_timeout": startup_timeout}
    name = startup_timeout_name if startup_timeout is not None else None
    return KvDiscovery(NatsStore(NatsSettings.load(**overrides), startup_timeout_name=name))
