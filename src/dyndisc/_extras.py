"""The optional client libraries and the pip extras that bring them: importing one that is missing raises
:class:`~dyndisc.MissingExtraError`, whose message says which ``pip install 'dyndisc[...]'`` to run."""

from __future__ import annotations

import importlib
from types import ModuleType

from dyndisc._errors import MissingExtraError

#: The extra that brings each backend's (or command's) client libraries.
EXTRAS = {
    "etcd": "etcd",
    "file": "file",
    "kubernetes": "kubernetes",
    "nats": "nats",
    "ui": "ui",
    "server": "server",
}


def require(needs: str, extra: str, *modules: str) -> list[ModuleType]:
    """Import ``modules`` (what ``needs``, e.g. ``the 'kubernetes' backend``, cannot work without); a
    missing one raises :class:`~dyndisc.MissingExtraError` naming ``extra``."""
    found = []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError as exc:
            raise MissingExtraError(needs, exc.name or name, extra) from exc
    return found
