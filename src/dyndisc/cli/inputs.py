"""What an operator types, checked when it is parsed: paths, instance references, transports, metadata.

Every parser raises :class:`click.BadParameter` with a message that says what was expected and, where a
likely intent is clear, what to type instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

from dyndisc._errors import DyndiscError
from dyndisc._models import EndpointId, InstanceQuery, Transport

#: The transport kinds the command line registers; the library itself accepts any kind.
TRANSPORT_KINDS = ("tcp", "nats_tcp", "http", "https", "grpc")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})(?P<rest>/.*)?$")


def parse_query(text: str | None) -> InstanceQuery:
    """``ns``, ``ns.comp`` or ``ns.comp.ep`` (everything when empty)."""
    try:
        return InstanceQuery.parse(text)
    except (ValueError, DyndiscError) as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from None


def parse_endpoint(text: str) -> EndpointId:
    """``ns.comp.ep``."""
    try:
        return EndpointId.parse(text)
    except (ValueError, DyndiscError) as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from None


def parse_instance_ref(text: str) -> tuple[EndpointId, int, int | None]:
    """``ns.comp.ep/<id>`` with the id as the tables print it (hex; ``0x`` optional).

    Returns the endpoint, the id read as hex, and the id read as decimal when the text could be one (the
    reference runtime logs decimal ids), so a caller can try it second and say which it matched.
    """
    path, slash, raw = text.partition("/")
    if not slash or not raw:
        raise click.BadParameter(
            f"{text!r} is not an instance: expected ns.comp.ep/<instance id in hex>, e.g. ns.comp.ep/1a2b3c",
            param_hint="INSTANCE",
        )
    endpoint = parse_endpoint(path)
    digits = raw.lower().removeprefix("0x")
    try:
        as_hex = int(digits, 16)
    except ValueError:
        raise click.BadParameter(
            f"instance id {raw!r} is not hexadecimal (ids print as hex, e.g. 694d7a3c1f2e)",
            param_hint="INSTANCE",
        ) from None
    as_decimal = int(raw) if raw.isdecimal() and not raw.lower().startswith("0x") else None
    return endpoint, as_hex, as_decimal


def parse_transport(text: str) -> Transport:
    """``kind://address`` with a kind the command line knows and, for network kinds, a ``host:port``."""
    kind, sep, address = text.partition("://")
    if not sep:
        hint = f"; did you mean tcp://{text}?" if _HOST_PORT.match(text) else ""
        raise click.BadParameter(
            f"{text!r} has no kind: give kind://address, e.g. tcp://10.0.0.5:9000{hint}",
            param_hint="--transport",
        )
    if kind not in TRANSPORT_KINDS:
        raise click.BadParameter(
            f"unknown transport kind {kind!r}; known: {', '.join(TRANSPORT_KINDS)}", param_hint="--transport"
        )
    target = address.removeprefix("//")
    match = _HOST_PORT.match(target)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise click.BadParameter(
            f"{text!r}: the address must be host:port (a port from 1 to 65535), e.g. {kind}://10.0.0.5:9000",
            param_hint="--transport",
        )
    try:
        found = Transport.coerce(text)
    except DyndiscError as exc:
        raise click.BadParameter(str(exc), param_hint="--transport") from None
    assert found is not None
    return found


def parse_metadata(text: str) -> dict[str, Any]:
    """A JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise click.BadParameter(
            f"not valid JSON ({exc.msg} at column {exc.colno}): {shown!r}; give an object, e.g. "
            """'{"model": "llama"}'""",
            param_hint="--metadata",
        ) from None
    if not isinstance(value, dict):
        raise click.BadParameter(
            f"must be a JSON object, not {type(value).__name__}: e.g. "
            """'{"model": "llama"}'""",
            param_hint="--metadata",
        )
    return value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, param_hint: str = "--since") -> float:
    """A duration in seconds: ``90``, ``90s``, ``10m``, ``2h``, ``1d``, ``1h30m``."""
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not cleaned or "".join(number + unit for number, unit in parts) != cleaned:
        raise click.BadParameter(
            f"{text!r} is not a duration: give e.g. 90s, 10m, 2h, 1d or 1h30m", param_hint=param_hint
        )
    return sum(float(number) * _UNIT[unit] for number, unit in parts)
