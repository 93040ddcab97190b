"""What the agents of a real run print: one JSON object a line (an agent's reports, or the CLI's
``watch --json`` events, read back as watch events)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from anyio.abc import Process

from dyndisc._events import Added, RemovalReason, Removed, Resync
from dyndisc._models import Instance
from dyndisc._names import EndpointId


async def json_lines(process: Process) -> AsyncIterator[dict[str, Any]]:
    """Each JSON line a process prints on its standard output."""
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def cli_event(line: dict[str, Any]) -> Resync | Added | Removed | None:
    """An event of ``dyndisc watch --json`` back as a watch event; ``None`` for a ``status`` record (the
    view went stale, or is current again)."""
    if line["event"] == "status":
        return None
    if line["event"] == "resync":
        return Resync(instances=tuple(cli_instance(i) for i in line["instances"]))
    if line["event"] == "added":
        return Added(instance=cli_instance(line["instance"]))
    reason = RemovalReason(line["reason"]) if line.get("reason") else None
    return Removed(EndpointId.parse(line["endpoint"]), int(line["instance_id"], 16), reason)


def cli_instance(found: dict[str, Any]) -> Instance:
    endpoint = EndpointId.parse(found["endpoint"])
    return Instance(
        endpoint.namespace,
        endpoint.component,
        endpoint.endpoint,
        int(found["instance_id"], 16),
        found.get("transport"),
        found.get("metadata"),
        found.get("readiness", "ready"),
    )
