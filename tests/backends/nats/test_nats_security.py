"""Credentials, TLS, settings, server checks: a misconfiguration is a clear error at start, never a hang."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream
from nats_helpers import MakeServer, MakeStore, next_event, unique_prefix

from dyndisc import AccessDeniedError, BackendUnavailableError, ConfigurationError, KvDiscovery
from dyndisc.backends import create_backend
from dyndisc.backends.kv import StorePut, StoreSnapshot
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.servers import NatsServer
from dyndisc.testing.servers._tls import generate_tls

#: A misconfigured client must fail this fast.
FAIL_FAST = 5.0


async def test_wrong_password_is_a_clear_error_at_start(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats(user="svc", password="right")
    store = make_store(server.url, user="svc", password="wrong")
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match=r"refused the password for user 'svc' \(NATS_USER") as info:
        await store.grant(5)
    assert time.monotonic() - started < FAIL_FAST
    assert "wrong" not in str(info.value), "the password must never appear in messages"


async def test_missing_credentials_say_what_to_set(private_nats: MakeServer, make_store: MakeStore) -> None:
    server = private_nats(user="svc", password="right")
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match="set NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS"):
        async with make_store(server.url).watch("/"):
            pass
    assert time.monotonic() - started < FAIL_FAST


async def test_right_credentials_work_and_never_appear_in_messages(
    private_nats: MakeServer, make_store: MakeStore
) -> None:
    server = private_nats(user="svc", password="s3cret")
    store = make_store(server.url, user="svc", password="s3cret")
    prefix = unique_prefix()
    async with store.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={})
        await store.put(f"{prefix}a", b"1", 0)
        assert await next_event(events) == StorePut(key=f"{prefix}a", value=b"1")
    in_url = NatsSettings.load(server=server.url_with_credentials)
    assert "s3cret" not in in_url.display_servers
    assert "s3cret" not in repr(NatsSettings.load(server=server.url, user="svc", password="s3cret"))


async def test_an_unreachable_server_is_a_clear_error(make_store: MakeStore) -> None:
    store = make_store("nats://127.0.0.1:1", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(
        BackendUnavailableError, match=r"cannot connect to nats-server at nats://127\.0\.0\.1:1.*NATS_SERVER"
    ):
        await store.get_prefix("/")
    assert time.monotonic() - started < FAIL_FAST


class _TlsNatsServer(NatsServer):
    """A nats-server requiring TLS with client certificates (mutual TLS)."""

    def __init__(self) -> None:
        super().__init__()
        self.tls = generate_tls(self.base_dir / "tls")

    def _argv(self) -> list[str]:
        tls = self.tls
        return [
            *super()._argv(),
            "--tls",
            "--tlscert", str(tls.server_cert_path),
            "--tlskey", str(tls.server_key_path),
            "--tlsverify",
            "--tlscacert", str(tls.ca_path),
        ]  # fmt: skip


async def test_mutual_tls(make_store: MakeStore) -> None:
    with _TlsNatsServer() as server:
        tls = server.tls
        good = make_store(
            f"tls://{server.host}:{server.port}", ca=tls.ca_path, cert=tls.cert_path, key=tls.key_path
        )
        lease = await good.grant(5)
        assert await good.create("/a", b"1", lease.id) is None
        assert await good.get_prefix("/") == {"/a": b"1"}
        no_cert = make_store(f"tls://{server.host}:{server.port}", ca=tls.ca_path)
        with pytest.raises(BackendUnavailableError, match="cannot connect"):
            await no_cert.get_prefix("/")
        await good.aclose()


def test_settings_are_checked_and_name_their_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match="NATS_USER and NATS_PASSWORD"):
        NatsSettings.load(user="svc")
    with pytest.raises(ConfigurationError, match="NATS_CERT and NATS_KEY"):
        NatsSettings.load(cert=tmp_path / "c.pem")
    with pytest.raises(ConfigurationError, match=r"NATS_CA=.*not a readable file"):
        NatsSettings.load(ca=tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="NATS_KV_BUCKET"):
        NatsSettings.load(kv_bucket="has.dot")
    with pytest.raises(ConfigurationError, match=r"NATS_SERVER.*not a URL"):
        NatsSettings.load(server="localhost:4222")

    monkeypatch.setenv("NATS_SERVER", "nats://10.0.0.1:4222, nats://10.0.0.2:4222")
    monkeypatch.setenv("NATS_TOKEN", "tok")
    monkeypatch.setenv("NATS_KV_BUCKET", "prod_discovery")
    backend = create_backend("nats")
    assert isinstance(backend, KvDiscovery)
    assert isinstance(backend.store, NatsStore)
    assert backend.store.settings.servers == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert backend.store.bucket == "prod_discovery"


@asynccontextmanager
async def _fake_server(version: str) -> AsyncIterator[str]:
    """A loopback server speaking just enough of the NATS protocol to announce ``version``."""

    async def handle(stream: SocketStream) -> None:
        info = {"server_id": "fake", "version": version, "proto": 1, "max_payload": 1048576, "headers": True}
        await stream.send(b"INFO " + json.dumps(info).encode() + b"\r\n")
        buffer = b""
        while b"PING\r\n" not in buffer:
            buffer += await stream.receive()
        await stream.send(b"PONG\r\n")
        await anyio.sleep(10)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"nats://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def test_a_server_older_than_2_11_is_refused(make_store: MakeStore) -> None:
    async with _fake_server("2.9.25") as url:
        store = make_store(url)
        with pytest.raises(ConfigurationError, match=r"version 2\.9\.25.*needs >= 2\.11.*per-key TTLs"):
            await store.grant(5)


@pytest.mark.parametrize(
    ("credentials", "principal"),
    [
        ({}, None),
        ({"token": "s3cret"}, "the token user (NATS_TOKEN)"),
        ({"user": "worker", "password": "pw"}, "user 'worker'"),
        ({"user": "worker", "password": "pw", "scope": "team-a"}, "user 'worker' (NATS_SCOPE='team-a')"),
    ],
)
def test_the_principal_the_doctor_names_is_the_one_the_settings_sign_in_as(
    credentials: dict[str, str], principal: str | None
) -> None:
    """No credentials: nobody to name (the server lets anyone in); a token alone is the token user."""
    assert NatsStore(NatsSettings(server="nats://127.0.0.1:1", **credentials)).principal == principal  # type: ignore[arg-type]
