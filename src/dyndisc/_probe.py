"""An optional HTTP endpoint for Kubernetes probes, answered from the runtime's health (off by default).

``DYN_HEALTH_PORT`` (or ``DistributedRuntime(health_port=...)``) turns it on; ``DYN_HEALTH_HOST`` is where it
listens (default ``0.0.0.0``: a kubelet probes the pod's address). It answers ``GET`` only:

* ``/live``: 200 while the runtime works, 503 once a permanent error stopped it (restart the container);
* ``/ready``: 200 while the lease is held and every registration is written, 503 during an outage or a lease
  replacement (take the pod out of service, do not restart it);
* ``/health``: 200 with the whole :class:`~dyndisc.RuntimeHealth` as JSON (also the body of the others).

It is a few lines over anyio's sockets rather than a web framework: it serves three fixed answers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import suppress

import anyio
from anyio.abc import SocketStream, TaskStatus

from dyndisc._health import RuntimeHealth

log = logging.getLogger("dyndisc.probe")

#: The longest request line and headers read (probes send a few hundred bytes).
MAX_REQUEST_BYTES = 8192


async def serve_probes(
    health: Callable[[], RuntimeHealth],
    host: str,
    port: int,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the probe endpoint until cancelled; report the port it listens on once listening."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    async with listener:
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        log.info("health probes on http://%s:%d (/live, /ready, /health)", host, bound)
        task_status.started(bound)
        await listener.serve(lambda client: _answer(client, health))


async def _answer(client: SocketStream, health: Callable[[], RuntimeHealth]) -> None:
    async with client:
        request = b""
        with anyio.move_on_after(5):
            while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
                try:
                    request += await client.receive(4096)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
        method, _, rest = request.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0].decode("ascii", "replace")
        now = health()
        body: dict[str, object]
        if method != b"GET":
            status, body = 405, {"error": "only GET"}
        elif path in ("/live", "/livez"):
            status, body = (200 if now.live else 503), now.to_dict()
        elif path in ("/ready", "/readyz"):
            status, body = (200 if now.ready else 503), now.to_dict()
        elif path in ("/health", "/"):
            status, body = 200, now.to_dict()
        else:
            status, body = 404, {"error": f"no {path}: try /live, /ready or /health"}
        payload = json.dumps(body).encode()
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):  # the prober went away
            await client.send(head.encode() + payload)
