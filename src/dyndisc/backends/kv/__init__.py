"""Discovery over key-value stores: the store interface, :class:`KvDiscovery` on top of it, key layouts.

etcd, NATS, file and memory are stores; discovery over them is written once here, and so is the watch of
the stores whose changes carry revisions (etcd, memory): :mod:`~dyndisc.backends.kv.revisioned`, fed by
etcd's ``Range`` and ``Watch`` or by :mod:`~dyndisc.backends.kv.change_log`.
"""

from dyndisc.backends.kv.discovery import KvDiscovery
from dyndisc.backends.kv.layouts import DEFAULT_ROOT, KeyLayout
from dyndisc.backends.kv.store import (
    KeyValueStore,
    StoreDelete,
    StoredValue,
    StoreEvent,
    StorePut,
    StoreSnapshot,
)

__all__ = [
    "DEFAULT_ROOT",
    "KeyLayout",
    "KeyValueStore",
    "KvDiscovery",
    "StoreDelete",
    "StoreEvent",
    "StorePut",
    "StoreSnapshot",
    "StoredValue",
]
