"""The file backend: discovery through a directory shared by the processes of one host, no server.

Settings (environment, see ``docs/backends/file.md``): ``DYN_FILE_KV`` (the directory) and
``DYN_FILE_RESCAN_INTERVAL``.

The room: ``settings``, ``layout`` (where leases and records live, key <-> file name), ``store`` (the
:class:`FileStore`: leases by mtime, atomic writes), ``changes`` (one file watcher per store), ``watch``
(a prefix watch: changed paths, lease deadlines, rescans), ``doctor`` (clock skew).
"""

from __future__ import annotations

from dyndisc.backends.file.layout import decode_segment, encode_segment
from dyndisc.backends.file.settings import FileSettings, default_root
from dyndisc.backends.file.store import FileStore
from dyndisc.backends.kv import KvDiscovery

__all__ = ["FileSettings", "FileStore", "decode_segment", "default_root", "encode_segment", "from_env"]


def from_env(*, startup_timeout: float | None = None) -> KvDiscovery:
    """The ``file`` backend: a :class:`FileStore` at ``DYN_FILE_KV`` (``startup_timeout`` is not used: a
    directory is there or not)."""
    settings = FileSettings.load()
    return KvDiscovery(FileStore(settings.kv, rescan_interval=settings.rescan_interval))
