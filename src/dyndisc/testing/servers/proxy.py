"""A TCP proxy on loopback that can pass traffic, cut connections, or black-hole them (partition tests).

It runs its own asyncio loop in a daemon thread, so the control methods are plain (briefly blocking) calls
that work the same from sync tests and from async tests without stalling the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

from dyndisc.testing.servers._process import LOOPBACK

__all__ = ["ProxyMode", "TcpProxy"]

_CHUNK = 64 * 1024


class ProxyMode(enum.Enum):
    """What the proxy does with traffic."""

    PASS = "pass"
    CUT = "cut"
    BLACKHOLE = "blackhole"


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) so the peer sees a reset, like a crashed middlebox or server."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)
        if self.task is not None:
            self.task.cancel()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``, with switchable failure modes.

    * :meth:`pass_` (``pass`` is a Python keyword) or its synonym :meth:`restore`: forward bytes both ways.
    * :meth:`cut`: reset every open connection now and reset new ones as soon as they are accepted.
    * :meth:`blackhole`: keep connections open (and accept new ones) but deliver nothing in either
      direction; the peers just see silence. By default bytes are held back (left unread, as a network
      partition would); they flow again after :meth:`restore`. ``blackhole(discard=True)`` reads and drops
      them instead, so they are lost for good.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = LOOPBACK, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._requested_port = port
        self.port = 0
        self._mode = ProxyMode.PASS
        self._discard = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._flowing: asyncio.Event | None = None  # set while bytes may be delivered (PASS)
        self.accepted = 0

    # -- public API ----------------------------------------------------------------------------------
    @property
    def mode(self) -> ProxyMode:
        """The current mode."""
        return self._mode

    @property
    def address(self) -> str:
        """``host:port`` to dial instead of the target."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port`` (use :meth:`url_for` for another scheme)."""
        return self.url_for("http")

    def url_for(self, scheme: str) -> str:
        """``<scheme>://host:port``, e.g. ``url_for("nats")``."""
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """How many client connections are currently open through the proxy."""
        return len(self._connections)

    def start(self) -> Self:
        """Bind the listening socket and start forwarding (mode PASS)."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready: Future[None] = Future()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name=f"TcpProxy-{self.target_port}", daemon=True
        )
        self._thread.start()
        ready.result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and stop the proxy thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def pass_(self) -> None:
        """Forward traffic normally (same as :meth:`restore`)."""
        self._call(self._set_mode(ProxyMode.PASS))

    def restore(self) -> None:
        """Back to forwarding; held (black-holed) bytes are delivered, new connections pass."""
        self.pass_()

    def cut(self) -> None:
        """Reset every open connection now and every new one until :meth:`restore`."""
        self._call(self._set_mode(ProxyMode.CUT))

    def blackhole(self, *, discard: bool = False) -> None:
        """Deliver nothing either way, keep connections open; ``discard`` drops bytes instead of holding."""
        self._discard = discard
        self._call(self._set_mode(ProxyMode.BLACKHOLE))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TcpProxy({self.address} -> {self.target_host}:{self.target_port}, {self._mode.value})"

    # -- loop thread ---------------------------------------------------------------------------------
    def _call(self, coro: Any) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _run(self, loop: asyncio.AbstractEventLoop, ready: Future[None]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, self.host, self._requested_port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [conn.task for conn in self._connections if conn.task is not None]
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()
        # Let the handlers finish their cleanup before the loop goes away.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set_mode(self, mode: ProxyMode) -> None:
        assert self._flowing is not None
        self._mode = mode
        if mode is ProxyMode.PASS:
            self._flowing.set()
            return
        self._flowing.clear()
        if mode is ProxyMode.CUT:
            for conn in list(self._connections):
                conn.abort()
            self._connections.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._mode is ProxyMode.CUT:
            _abort(writer)
            return
        conn = _Connection(writer)
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        try:
            await self._serve(conn, reader, writer)
        except (asyncio.CancelledError, OSError):
            pass  # cut() or a peer reset: the connection is gone either way
        finally:
            self._connections.discard(conn)
            for side in (conn.client, conn.upstream):
                if side is not None and not side.transport.is_closing():
                    side.transport.abort()

    async def _serve(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # A connection accepted while black-holed only dials the target once traffic may flow.
        await self._wait_flowing(reader)
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        conn.upstream = up_writer
        to_upstream = asyncio.ensure_future(self._pump(reader, up_writer))
        to_client = asyncio.ensure_future(self._pump(up_reader, writer))
        try:
            # Both directions run to their own EOF (half-close); an error in either ends the connection.
            await asyncio.gather(to_upstream, to_client)
        finally:
            to_upstream.cancel()
            to_client.cancel()
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)

    async def _wait_flowing(self, reader: asyncio.StreamReader) -> None:
        assert self._flowing is not None
        while not self._flowing.is_set():
            if self._discard:
                # Drain-and-drop while waiting so the sender never sees backpressure.
                drain = asyncio.ensure_future(reader.read(_CHUNK))
                flowing = asyncio.ensure_future(self._flowing.wait())
                done, _ = await asyncio.wait({drain, flowing}, return_when=asyncio.FIRST_COMPLETED)
                flowing.cancel()
                if drain in done:
                    if not drain.result():
                        raise ConnectionResetError("peer closed while black-holed")
                else:
                    # Wait for the cancelled read to unwind: a StreamReader allows one reader at a time.
                    drain.cancel()
                    await asyncio.gather(drain, return_exceptions=True)
            else:
                await self._flowing.wait()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while True:
            await self._wait_flowing(src)
            data = await src.read(_CHUNK)
            if not data:
                # Half-close: pass the EOF on so request/response protocols still finish.
                if dst.can_write_eof():
                    dst.write_eof()
                return
            # Bytes read just as a black-hole started are held (or dropped) like the rest.
            if not self._flowing.is_set():
                if self._discard:
                    continue
                await self._wait_flowing(src)
            dst.write(data)
            await dst.drain()
