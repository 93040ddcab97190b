"""Smoke tests for the TCP proxy against an echo server: pass, cut, blackhole (held or discarded), restore."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from dyndisc.testing.server_fixtures import TcpProxyFactory
from dyndisc.testing.servers import ProxyMode, TcpProxy

# Long enough that a working proxy answers; short enough that "nothing arrives" tests stay quick.
SILENCE = 0.3
ANSWER = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


async def _connect(proxy: TcpProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(proxy.host, proxy.port), ANSWER)


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), ANSWER)


async def _closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), ANSWER)
    except ConnectionError:
        return True
    return data == b""


async def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + ANSWER
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_pass_forwards_both_ways(dyndisc_tcp_proxy: TcpProxyFactory, echo_port: int) -> None:
    proxy = dyndisc_tcp_proxy("127.0.0.1", echo_port)
    assert proxy.mode is ProxyMode.PASS
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"hello") == b"hello"
    big = bytes(range(256)) * 4096  # 1 MiB: exercises backpressure through the proxy
    assert await _roundtrip(reader, writer, big) == big
    writer.close()


@pytest.mark.asyncio
async def test_cut_resets_open_and_new_connections(
    dyndisc_tcp_proxy: TcpProxyFactory, echo_port: int
) -> None:
    proxy = dyndisc_tcp_proxy("127.0.0.1", echo_port)
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"before") == b"before"

    proxy.cut()
    assert await _closed_by_peer(reader)
    await _wait_for(lambda: proxy.open_connections == 0, "connections to close")

    writer.close()
    # New connections are reset on accept; the reset can even beat the client's connect() returning.
    try:
        reader2, writer2 = await _connect(proxy)
    except ConnectionError:
        pass
    else:
        assert await _closed_by_peer(reader2)
        writer2.close()

    proxy.restore()
    reader3, writer3 = await _connect(proxy)
    assert await _roundtrip(reader3, writer3, b"after") == b"after"
    writer3.close()


@pytest.mark.asyncio
async def test_blackhole_holds_bytes_until_restore(
    dyndisc_tcp_proxy: TcpProxyFactory, echo_port: int
) -> None:
    proxy = dyndisc_tcp_proxy("127.0.0.1", echo_port)
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"ping") == b"ping"

    proxy.blackhole()
    writer.write(b"lost?")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(5), SILENCE)  # silence, but the connection stays open
    reader2, writer2 = await _connect(proxy)  # new connections are accepted and kept open too
    writer2.write(b"new")
    await writer2.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader2.read(3), SILENCE)
    assert proxy.open_connections == 2

    proxy.restore()  # like a healed partition: what was held back is delivered
    assert await asyncio.wait_for(reader.readexactly(5), ANSWER) == b"lost?"
    assert await asyncio.wait_for(reader2.readexactly(3), ANSWER) == b"new"
    writer.close()
    writer2.close()


@pytest.mark.asyncio
async def test_blackhole_discard_drops_bytes(dyndisc_tcp_proxy: TcpProxyFactory, echo_port: int) -> None:
    proxy = dyndisc_tcp_proxy("127.0.0.1", echo_port)
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"ping") == b"ping"

    proxy.blackhole(discard=True)
    writer.write(b"dropped")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(7), SILENCE)

    proxy.restore()
    assert await _roundtrip(reader, writer, b"fresh") == b"fresh"
    writer.close()


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_sync_use_and_stop_closes_connections() -> None:
    # A sync test has no running event loop, so the echo server here is threaded.
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler) as echo:
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        try:
            with (
                TcpProxy("127.0.0.1", echo.server_address[1]) as proxy,
                socket.create_connection((proxy.host, proxy.port), timeout=ANSWER) as sock,
            ):
                sock.sendall(b"sync")
                assert sock.recv(4) == b"sync"
                proxy.stop()
                with contextlib.suppress(ConnectionResetError):  # stop() resets: also a close
                    assert sock.recv(1) == b""
        finally:
            echo.shutdown()
    with pytest.raises(RuntimeError, match="not started"):
        proxy.cut()
