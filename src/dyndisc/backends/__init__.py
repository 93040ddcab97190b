"""Discovery backends, a room each: ``etcd/``, ``kubernetes/``, ``nats/``, ``file/`` and ``memory``.

Every backend offers ``from_env(*, startup_timeout=None) -> DiscoveryBackend``, reading its own settings
from the environment only when it is created; its third-party client is imported only when the backend is
used, so the extras stay optional. The key-value backends share :mod:`dyndisc.backends.kv`.
"""

from __future__ import annotations

import importlib

from dyndisc._errors import ConfigurationError, MissingExtraError
from dyndisc._extras import EXTRAS
from dyndisc._settings import canonical_backend_name
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.kv import KeyValueStore, KvDiscovery
from dyndisc.backends.memory import MemoryStore

__all__ = ["DiscoveryBackend", "KeyValueStore", "KvDiscovery", "Lease", "MemoryStore", "create_backend"]


def create_backend(
    name: str,
    *,
    startup_timeout: float | None = None,
    startup_timeout_name: str | None = None,
    source: str = "DYN_DISCOVERY_BACKEND",
) -> DiscoveryBackend:
    """Create the backend called ``name`` (or an alias such as ``mem``) from environment settings.

    ``startup_timeout`` bounds how long the backend waits for its server on first contact (default: its
    own setting, such as ``ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS``), and ``startup_timeout_name`` what set
    it (a command's ``--wait``), for messages. ``source`` says where ``name`` came from. A backend whose
    client library is not installed raises :class:`~dyndisc.MissingExtraError` naming the extra that
    brings it.
    """
    canonical = canonical_backend_name(name, source)
    try:
        module = importlib.import_module(f"dyndisc.backends.{canonical}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("dyndisc"):
            raise ConfigurationError(f"the {canonical!r} backend is not available in this version") from exc
        raise MissingExtraError(
            f"the {canonical!r} backend", exc.name or canonical, EXTRAS[canonical]
        ) from exc
    backend: DiscoveryBackend = module.from_env(
        startup_timeout=startup_timeout, startup_timeout_name=startup_timeout_name
    )
    return backend
