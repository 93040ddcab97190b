"""A TCP listener that records the endpoint path of each request the reference's TCP request plane sends it.

The reference frames a request as a big-endian u16 length, the endpoint path (``<id hex>/<ns>/<comp>/<ep>``,
what its server routes by), then headers and the payload. dyndisc has no request plane: this stands where a
dyndisc worker's server would, and proves which path a Dynamo client sent to the address dyndisc advertised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


class PathRecorder:
    """The paths received so far; :meth:`next_path` waits for the next one."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.port = 0
        self._received = anyio.Event()

    async def next_path(self, timeout: float) -> str:
        with anyio.fail_after(timeout):
            while not self.paths:
                await self._received.wait()
        return self.paths[0]

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            with anyio.move_on_after(5):
                while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                    data += await stream.receive()
            size = int.from_bytes(data[:2], "big")
            if len(data) >= 2 + size:
                self.paths.append(data[2 : 2 + size].decode(errors="replace"))
                self._received.set()
        # Closing without an answer: the client reports the call failed, after sending its path.


@asynccontextmanager
async def path_recorder() -> AsyncIterator[PathRecorder]:
    """A :class:`PathRecorder` listening on a free loopback port (``.port``) for the duration of the block."""
    recorder = PathRecorder()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    recorder.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, recorder.handle)
        try:
            yield recorder
        finally:
            tg.cancel_scope.cancel()
