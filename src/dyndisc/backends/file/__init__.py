"""The file backend: discovery through a directory shared by the processes of one host, no server.

Settings (environment, see ``docs/backends/file.md``): ``DYN_FILE_KV`` (the directory) and
``DYN_FILE_RESCAN_INTERVAL``. With ``DYN_KV_LAYOUT=dynamo-v1`` the backend reads and writes the reference
runtime's file store instead (:class:`DynamoFileStore`, default directory ``$TMPDIR/dynamo_store_kv``).

The room: ``settings``, ``layout`` (where leases and records live, key <-> file name), ``leases`` (renewing
and removing a lease file under its lock), ``records`` (what is on disk, and which of it is alive),
``store`` (the :class:`FileStore`: leases by mtime, atomic writes), ``changes`` (one file watcher per
store), ``watch`` (a prefix watch: changed paths, lease deadlines, rescans), ``doctor`` (clock skew);
``dynamo_files``, ``dynamo_store`` and ``dynamo_watch``: the reference's flat, percent-encoded files with
mtime liveness (how they are named and read, the store, its watch).
"""

from __future__ import annotations

from dyndisc.backends.file.dynamo_store import DynamoFileStore
from dyndisc.backends.file.layout import decode_segment, encode_segment
from dyndisc.backends.file.settings import FileSettings, default_root, reference_root
from dyndisc.backends.file.store import FileStore
from dyndisc.backends.kv import KvDiscovery
from dyndisc.backends.kv.layouts import layout_from_env, make_layout

__all__ = [
    "DynamoFileStore",
    "FileSettings",
    "FileStore",
    "decode_segment",
    "default_root",
    "encode_segment",
    "from_env",
    "reference_root",
]


def from_env(*, startup_timeout: float | None = None, startup_timeout_name: str | None = None) -> KvDiscovery:
    """The ``file`` backend: a :class:`FileStore` at ``DYN_FILE_KV``, or under ``DYN_KV_LAYOUT=dynamo-v1`` a
    :class:`DynamoFileStore` there (default: the reference's ``$TMPDIR/dynamo_store_kv``).
    ``startup_timeout`` is not used: a directory is there or not."""
    settings = FileSettings.load()
    layout = make_layout(layout_from_env())
    if layout.name == "dynamo-v1":
        root = settings.kv if "kv" in settings.model_fields_set else reference_root()
        return KvDiscovery(DynamoFileStore(root), layout=layout)
    return KvDiscovery(FileStore(settings.kv, rescan_interval=settings.rescan_interval), layout=layout)
