"""Ids as every view prints them: in hex. Tables, JSON, keys and logs show an instance id as
``694d98147d54be25``; a ``repr`` that showed ``7587888160958627365`` could not be matched against any of
them by eye.

A repr shows an id as a hex literal (``instance_id=0x694d98147d54be25``): the same number, still valid
Python, and the digits the other views print.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: The fields (and JSON keys) that hold an instance or publisher id.
ID_FIELDS = frozenset({"instance_id", "publisher_id"})


def hex_id(value: object) -> str:
    """``repr`` of a field value, as a hex literal when it is an id (an ``int``, not a ``bool``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return hex(value)
    return repr(value)


def repr_value(value: object) -> str:
    """``repr(value)`` with every integer under an id key of a mapping (at any depth) as a hex literal."""
    if isinstance(value, Mapping):
        items = (f"{k!r}: {hex_id(v) if k in ID_FIELDS else repr_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(repr_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def dataclass_repr(obj: object, names: Iterable[str]) -> str:
    """``Class(field=value, ...)`` for ``names``, ids in hex and id keys inside mappings too."""
    fields = []
    for name in names:
        value: Any = getattr(obj, name)
        shown = hex_id(value) if name in ID_FIELDS else repr_value(value)
        fields.append(f"{name}={shown}")
    return f"{type(obj).__name__}({', '.join(fields)})"
