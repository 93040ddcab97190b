"""Discovery backends, side by side: one module each, created by name.

Every backend module defines ``from_env() -> DiscoveryBackend`` reading its own settings from the
environment; its third-party client is imported only when the backend is used, so the extras stay optional.
"""

from __future__ import annotations

import importlib

from dyndisc._errors import ConfigurationError
from dyndisc._settings import canonical_backend_name
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.backends.kv import KeyValueStore, KvDiscovery
from dyndisc.backends.memory import MemoryStore

__all__ = ["DiscoveryBackend", "KeyValueStore", "KvDiscovery", "Lease", "MemoryStore", "create_backend"]

#: The pip extra that brings each backend's client library.
_EXTRAS = {"etcd": "etcd", "kubernetes": "kubernetes", "nats": "nats", "file": "file"}


def create_backend(name: str) -> DiscoveryBackend:
    """Create the backend called ``name`` (or an alias such as ``mem``) from environment settings."""
    canonical = canonical_backend_name(name)
    try:
        module = importlib.import_module(f"dyndisc.backends.{canonical}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("dyndisc"):
            raise ConfigurationError(f"the {canonical!r} backend is not available in this version") from exc
        extra = _EXTRAS.get(canonical, canonical)
        raise ConfigurationError(
            f"the {canonical!r} backend needs {exc.name!r}: pip install 'dyndisc[{extra}]'"
        ) from exc
    backend: DiscoveryBackend = module.from_env()
    return backend
