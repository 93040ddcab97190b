"""A key layout mismatch, said instead of a silent ``0 instance(s)``.

The key-value backends keep instances in one of two key layouts (``DYN_KV_LAYOUT``): dyndisc's own, or the
reference runtime's (``dynamo-v1``). A process that reads one layout sees nothing of workers that write the
other. When a command finds nothing, it looks in the other layout once, briefly, and says what is there and
which setting reads it (``list``, ``watch``, ``doctor``).
"""

from __future__ import annotations

import os

import anyio

from dyndisc._errors import DyndiscError
from dyndisc._models import InstanceQuery
from dyndisc.backends import DiscoveryBackend, create_backend
from dyndisc.backends.kv.layouts import LAYOUT_NAMES

#: Seconds the look into the other layout may take: it is a hint, not a check.
LOOK_WITHIN = 3.0


def other_layout(backend: DiscoveryBackend) -> str | None:
    """The layout ``backend`` does not read (``None`` for a backend without key layouts)."""
    layout = getattr(backend, "layout", None)
    name = getattr(layout, "name", None)
    if name not in LAYOUT_NAMES:
        return None
    return next(other for other in LAYOUT_NAMES if other != name)


def _create_in(name: str, layout: str) -> DiscoveryBackend:
    # A backend reads DYN_KV_LAYOUT when it is created (and only then): set it for that moment.
    before = os.environ.get("DYN_KV_LAYOUT")
    os.environ["DYN_KV_LAYOUT"] = layout
    try:
        return create_backend(name, startup_timeout=LOOK_WITHIN)
    finally:
        if before is None:
            del os.environ["DYN_KV_LAYOUT"]
        else:
            os.environ["DYN_KV_LAYOUT"] = before


async def layout_hint(backend: DiscoveryBackend, query: InstanceQuery) -> str | None:
    """When the other layout holds instances under ``query``: what to set to read them; else ``None``.

    ``backend`` is the one in use (it found nothing there).
    """
    other = other_layout(backend)
    if other is None:
        return None
    try:
        looking = _create_in(backend.name, other)
    except DyndiscError:
        return None  # this store cannot hold the other layout (NATS): nothing can be there
    found: list[object] = []
    try:
        with anyio.move_on_after(LOOK_WITHIN):
            found = list(await looking.list(query))
    except Exception:  # a hint only: whatever went wrong, say nothing rather than something wrong
        return None
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(LOOK_WITHIN):
            await looking.aclose()
    if not found:
        return None
    where = getattr(getattr(looking, "layout", None), "root", other)
    return (
        f"hint: {len(found)} instance(s) under {query} are in the {other} key layout (under {where}/), "
        f"which this process does not read: set DYN_KV_LAYOUT={other} to see them"
    )
