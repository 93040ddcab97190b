"""Instance metadata: JSON-native, read-only, and the same for every reader as it was for the writer.

Metadata is accepted only if it survives the trip through JSON exactly: string keys, and values that are
``None``, booleans, integers, finite floats, strings, lists and mappings of those, nested at most
:data:`MAX_METADATA_DEPTH` levels. Anything else (a tuple, a set, an integer key, ``NaN``, an object) is
refused with :class:`~dyndisc.InvalidRecordError` before anything is written, instead of being read back
different by every watcher. Readers apply the same depth limit, so a record one side writes is never one the
other skips.

What a record holds is frozen: :class:`FrozenDict` and :class:`FrozenList` are a ``dict`` and a ``list`` that
refuse changes, so an instance shared by every client of a runtime cannot be changed by one of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NoReturn

from pydantic_core import core_schema

from dyndisc._errors import InvalidRecordError

#: Deepest nesting of metadata (a mapping or list inside another counts one level each) that writers accept
#: and readers read. The JSON parsers below stop far deeper; this keeps both sides on one rule.
MAX_METADATA_DEPTH = 32


def _read_only(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise TypeError(
        "instance metadata is read-only (it is shared by every reader of the instance); build a new dict "
        "and register again to change it"
    )


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses changes: the metadata of an :class:`~dyndisc.Instance`."""

    __slots__ = ()
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only

    def __hash__(self) -> int:  # type: ignore[override]
        # Immutable, so hashable (like a tuple, only if its values are). It also tells pydantic-core that
        # the shared EMPTY default needs no deep copy: it would otherwise copy it for every record decoded.
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        return self


class FrozenList(list[Any]):
    """A ``list`` that refuses changes, inside instance metadata."""

    __slots__ = ()
    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = _read_only
    sort = reverse = __iadd__ = __imul__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenList:
        return self


#: The metadata of an instance registered without any (shared: it cannot change).
EMPTY = FrozenDict()


def freeze_metadata(value: Mapping[str, Any] | None, owner: object = "the instance") -> FrozenDict:
    """Check metadata given by an application and return a frozen copy; raise :class:`InvalidRecordError`
    naming the offending path (``metadata['a'][2]['b']``) if it would not round-trip through JSON."""
    if value is None:
        return EMPTY
    if not isinstance(value, Mapping):
        raise InvalidRecordError(
            f"metadata of {owner} must be a mapping (a JSON object), got {type(value).__name__}"
        )
    return _freeze_mapping(value, "metadata", 1, owner) if value else EMPTY


def _too_deep(path: str, owner: object) -> InvalidRecordError:
    return InvalidRecordError(
        f"{path} of {owner} is nested deeper than {MAX_METADATA_DEPTH} levels "
        "(the limit every reader applies)"
    )


def check_text(value: str, what: str) -> str:
    """``value`` if UTF-8 can carry it (no lone surrogate); else :class:`InvalidRecordError` on ``what``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecordError(
            f"{what} is not valid Unicode text ({value!r} holds a lone surrogate)"
        ) from None
    return value


def _freeze(value: Any, path: str, depth: int, owner: object) -> Any:
    if isinstance(value, str):
        return check_text(value, f"{path} of {owner}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum would come back as a plain int
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRecordError(f"{path} of {owner} is {value!r}: JSON has no NaN or infinity")
        return float(value)
    if isinstance(value, Mapping):
        return _freeze_mapping(value, path, depth, owner)
    if isinstance(value, list):
        if depth > MAX_METADATA_DEPTH:
            raise _too_deep(path, owner)
        return FrozenList(_freeze(v, f"{path}[{i}]", depth + 1, owner) for i, v in enumerate(value))
    hint = " (use a list)" if isinstance(value, tuple | set | frozenset) else ""
    raise InvalidRecordError(
        f"{path} of {owner} is a {type(value).__name__}, which JSON cannot carry unchanged{hint}; metadata "
        "holds None, booleans, numbers, strings, lists and string-keyed mappings"
    )


def _freeze_mapping(value: Mapping[Any, Any], path: str, depth: int, owner: object) -> FrozenDict:
    if depth > MAX_METADATA_DEPTH:
        raise _too_deep(path, owner)
    items: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidRecordError(
                f"{path} of {owner} has the key {key!r} ({type(key).__name__}): JSON keys are strings"
            )
        check_text(key, f"a key of {path} of {owner}")
        items[key] = _freeze(item, f"{path}[{key!r}]", depth + 1, owner)
    return FrozenDict(items)


def freeze_wire(value: dict[str, Any]) -> FrozenDict:
    """Freeze metadata decoded from a record (JSON-native already); ``ValueError`` past the depth limit."""
    if not value:
        return EMPTY
    return FrozenDict((k, _freeze_wire(v, 2)) for k, v in value.items())


def _freeze_wire(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"its metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        return FrozenDict((k, _freeze_wire(v, depth + 1)) for k, v in value.items())
    if isinstance(value, list):
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"its metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        return FrozenList(_freeze_wire(v, depth + 1) for v in value)
    return value


def wire_schema() -> core_schema.CoreSchema:
    """pydantic-core's schema of the metadata of a stored record, frozen as it is read.

    From JSON, pydantic-core freezes it itself (it calls :class:`FrozenDict` and :class:`FrozenList`, types
    it calls without a Python frame, and no Python function runs per record); a level of lists or mappings
    past :data:`MAX_METADATA_DEPTH` is refused. A mapping already parsed (``Instance.from_dict``) is frozen
    by :func:`freeze_wire`.
    """
    # One schema per level (a value at level n, the top mapping being level 1), so the depth is counted by
    # which schema reads a value: the last level reads only scalars. Strict, and int before float, so that
    # every JSON value keeps its type (a lax or float-first union would read 1 as 1.0 or "1" as 1). Every
    # JSON value is one of these, so a level fails only past the last one: its error says so.
    scalars: list[core_schema.CoreSchema] = [
        core_schema.str_schema(strict=True),
        core_schema.int_schema(strict=True),
        core_schema.bool_schema(strict=True),
        core_schema.float_schema(strict=True),
        core_schema.none_schema(),
    ]
    levels: list[core_schema.CoreSchema] = []
    for depth in range(2, MAX_METADATA_DEPTH + 2):
        choices: list[core_schema.CoreSchema | tuple[core_schema.CoreSchema, str]] = [*scalars]
        if depth <= MAX_METADATA_DEPTH:
            inner = core_schema.definition_reference_schema(f"dyndisc-metadata-{depth + 1}")
            choices.append(
                core_schema.no_info_after_validator_function(FrozenList, core_schema.list_schema(inner))
            )
            choices.append(
                core_schema.no_info_after_validator_function(
                    FrozenDict, core_schema.dict_schema(core_schema.str_schema(), inner)
                )
            )
        levels.append(
            core_schema.union_schema(
                choices,
                mode="left_to_right",
                custom_error_type="metadata_depth",
                custom_error_message=f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels",
                ref=f"dyndisc-metadata-{depth}",
            )
        )
    top = core_schema.dict_schema(
        core_schema.str_schema(), core_schema.definition_reference_schema("dyndisc-metadata-2")
    )
    return core_schema.json_or_python_schema(
        json_schema=core_schema.definitions_schema(
            core_schema.no_info_after_validator_function(FrozenDict, top), levels
        ),
        python_schema=core_schema.no_info_after_validator_function(
            freeze_wire, core_schema.dict_schema(core_schema.str_schema(), core_schema.any_schema())
        ),
    )
