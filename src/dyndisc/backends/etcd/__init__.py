"""The etcd backend (the default): one lease per process, create-if-absent registrations, resumable watches.

Settings (environment, see ``docs/backends/etcd.md``): ``ETCD_ENDPOINTS``, ``ETCD_LEASE_TTL``,
``ETCD_AUTH_USERNAME`` / ``ETCD_AUTH_PASSWORD``, ``ETCD_AUTH_CA`` / ``ETCD_AUTH_CLIENT_CERT`` /
``ETCD_AUTH_CLIENT_KEY`` (a file path or PEM text), ``ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS`` and
``ETCD_REQUEST_TIMEOUT_SECONDS``.

The room: ``settings`` (variables, endpoint URLs, TLS material), ``connection`` (gRPC channels, failover,
auth, the keep-alive stream), ``store`` (the :class:`EtcdStore`), ``watch`` (one shared watch per prefix),
``doctor``. The client is ``aetcd``'s generated gRPC stubs over channels we own (asyncio, as grpc.aio is).
"""

from __future__ import annotations

from dyndisc.backends.etcd.settings import EtcdSettings
from dyndisc.backends.etcd.store import EtcdStore
from dyndisc.backends.kv import KvDiscovery

__all__ = ["EtcdSettings", "EtcdStore", "from_env"]


def from_env(*, startup_timeout: float | None = None, startup_timeout_name: str | None = None) -> KvDiscovery:
    """The ``etcd`` backend configured from the ``ETCD_*`` environment variables.

    ``startup_timeout`` replaces ``ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS`` when given, and messages name
    ``startup_timeout_name`` (such as ``--wait``) as what set it.
    """
    overrides = {} if startup_timeout is None else {"startup_connect_timeout_seconds": startup_timeout}
    name = startup_timeout_name if startup_timeout is not None else None
    return KvDiscovery(EtcdStore(EtcdSettings.load(**overrides), startup_timeout_name=name))
