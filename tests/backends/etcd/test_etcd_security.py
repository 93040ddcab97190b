"""etcd with TLS client certificates and with user/password auth, on real servers of their own."""

from __future__ import annotations

import time

import anyio
import pytest
import trustme
from etcd_helpers import MakeServer, MakeStore, next_event, unique_prefix

from dyndisc import AccessDeniedError, ConfigurationError
from dyndisc.backends.kv import StoreDelete, StorePut, StoreSnapshot

#: A misconfigured client must fail this fast, not after the startup wait.
FAIL_FAST = 5.0


async def test_tls_with_client_certificates_from_paths_and_pem_text(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd(tls=True)
    tls = server.tls
    assert tls is not None
    by_path = make_store(
        server.client_url,
        auth_ca=str(tls.ca_path),
        auth_client_cert=str(tls.cert_path),
        auth_client_key=str(tls.key_path),
    )
    by_pem = make_store(
        server.client_url, auth_ca=tls.ca_pem, auth_client_cert=tls.cert_pem, auth_client_key=tls.key_pem
    )
    prefix = unique_prefix()
    lease = await by_path.grant(5)
    async with by_pem.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={})
        assert await by_path.create(f"{prefix}a", b"1", lease.id) is None
        assert await next_event(events) == StorePut(key=f"{prefix}a", value=b"1")
        assert await by_pem.keep_alive(lease.id) > 0
        await by_pem.revoke(lease.id)
        assert await next_event(events) == StoreDelete(key=f"{prefix}a")


async def test_tls_without_a_client_certificate_is_refused_clearly(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd(tls=True)
    assert server.tls is not None
    store = make_store(server.client_url, auth_ca=str(server.tls.ca_path))
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match=r"TLS handshake with etcd at https://127\.0\.0\.1") as info:
        await store.get_prefix("/")
    assert "ETCD_AUTH_CLIENT_CERT" in str(info.value)
    assert time.monotonic() - started < FAIL_FAST


async def test_tls_with_the_wrong_ca_is_refused_clearly(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd(tls=True)
    assert server.tls is not None
    stranger = trustme.CA().cert_pem.bytes().decode()
    store = make_store(
        server.client_url,
        auth_ca=stranger,
        auth_client_cert=str(server.tls.cert_path),
        auth_client_key=str(server.tls.key_path),
    )
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match=r"TLS handshake .* failed .*ETCD_AUTH_CA"):
        await store.grant(5)
    assert time.monotonic() - started < FAIL_FAST


def test_tls_material_with_an_http_endpoint_is_a_configuration_error(make_store: MakeStore) -> None:
    with pytest.raises(ConfigurationError, match=r"uses http://; use https://"):
        make_store(
            "http://127.0.0.1:2379", auth_ca="-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----"
        )


async def test_user_and_password(private_etcd: MakeServer, make_store: MakeStore) -> None:
    server = private_etcd(auth=True)
    store = make_store(server.client_url, auth_username=server.username, auth_password=server.password)
    prefix = unique_prefix()
    lease = await store.grant(5)
    assert await store.create(f"{prefix}a", b"1", lease.id) is None
    assert await store.get_prefix(prefix) == {f"{prefix}a": b"1"}
    assert await store.keep_alive(lease.id) > 0


async def test_wrong_password_is_a_clear_error_at_once(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd(auth=True)
    store = make_store(server.client_url, auth_username="root", auth_password="not-the-password")
    started = time.monotonic()
    with pytest.raises(
        AccessDeniedError,
        match=rf"etcd at {server.client_url} refused the password for user 'root' \(ETCD_AUTH_USERNAME",
    ):
        await store.grant(5)
    assert time.monotonic() - started < FAIL_FAST, "a refused password must not wait for the startup timeout"


async def test_a_watch_with_a_wrong_password_fails_at_once(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd(auth=True)
    store = make_store(server.client_url, auth_username="root", auth_password="not-the-password")
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match="refused the password for user 'root'"):
        async with store.watch(unique_prefix()):
            pytest.fail("the watch must not start")
    assert time.monotonic() - started < FAIL_FAST


async def test_missing_credentials_are_a_clear_error(private_etcd: MakeServer, make_store: MakeStore) -> None:
    server = private_etcd(auth=True)
    store = make_store(server.client_url)
    with pytest.raises(AccessDeniedError, match=r"requires authentication.*set ETCD_AUTH_USERNAME"):
        await store.put(f"{unique_prefix()}a", b"1", 0)


async def test_a_user_without_permission_is_told_what_to_grant(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd(auth=True)
    server.api("/v3/auth/user/add", {"name": "svc", "password": "pw"})  # no role: no access to any key
    store = make_store(server.client_url, auth_username="svc", auth_password="pw")
    key = f"{unique_prefix()}a"
    with pytest.raises(
        AccessDeniedError,
        match=rf"refused user 'svc' writing {key} \(etcdserver: permission denied\): it holds no role, so it "
        r"may write nothing; grant one of its roles readwrite on that key's prefix \(etcdctl role",
    ):
        await store.put(key, b"1", 0)
    with pytest.raises(
        AccessDeniedError,
        match=r"denied user 'svc' access .*grant the user's role readwrite on the key prefix .*"
        r"dyndisc access etcd --user <user> --role worker\|frontend\|operator",
    ):
        await store.get_prefix(unique_prefix())


async def test_auth_token_is_renewed_after_an_etcd_restart(
    private_etcd: MakeServer, make_store: MakeStore
) -> None:
    server = private_etcd(auth=True)
    store = make_store(server.client_url, auth_username=server.username, auth_password=server.password)
    writer = make_store(server.client_url, auth_username=server.username, auth_password=server.password)
    prefix = unique_prefix()
    async with store.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={})
        await anyio.to_thread.run_sync(server.restart)  # etcd's simple tokens do not survive a restart
        await writer.put(f"{prefix}a", b"1", 0)
        assert await next_event(events) == StorePut(key=f"{prefix}a", value=b"1")
    assert await store.get_prefix(prefix) == {f"{prefix}a": b"1"}
