"""EtcdStore against the session's real etcd: leases, create-if-absent, shared watches, settings."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from etcd_helpers import PROMPT, MakeStore, next_event, unique_prefix

from dyndisc import (
    ConfigurationError,
    DistributedRuntime,
    Instance,
    InstanceQuery,
    KvDiscovery,
    LeaseNotFoundError,
    RegistrationConflictError,
)
from dyndisc.backends import create_backend
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.backends.kv import StoreDelete, StoredValue, StorePut, StoreSnapshot
from dyndisc.testing import RuntimeHost
from dyndisc.testing.servers import EtcdServer


@pytest.fixture
def url(dyndisc_etcd_server: EtcdServer) -> str:
    return dyndisc_etcd_server.client_url


async def test_create_is_if_absent_and_reports_the_holder(url: str, make_store: MakeStore) -> None:
    first, second = make_store(url), make_store(url)
    key = f"{unique_prefix()}k"
    mine, theirs = await first.grant(5), await second.grant(5)
    assert await first.create(key, b"v1", mine.id) is None
    assert await first.create(key, b"v2", mine.id) == StoredValue(value=b"v1", lease_id=mine.id)
    assert await second.create(key, b"v3", theirs.id) == StoredValue(value=b"v1", lease_id=mine.id)
    assert await second.get_prefix(key) == {key: b"v1"}


async def test_a_key_held_by_another_lease_names_the_holder(url: str, make_store: MakeStore) -> None:
    first, second = KvDiscovery(make_store(url)), KvDiscovery(make_store(url))
    ns = unique_prefix().strip("/")
    holder, other = await first.grant_lease(5), await second.grant_lease(5)
    instance = Instance(
        namespace=ns, component="c", endpoint="e", instance_id=holder.id, transport="tcp://h:1"
    )
    assert await first.register(instance, holder) == instance
    assert await first.register(instance, holder) == instance  # idempotent for the same owner
    with pytest.raises(RegistrationConflictError, match=f"already registered under lease {holder.id:x}"):
        await second.register(instance, other)


async def test_lease_ttl_is_rounded_up_to_whole_seconds(url: str, make_store: MakeStore) -> None:
    store = make_store(url)
    assert (await store.grant(0.3)).ttl == 1.0
    assert (await store.grant(2.5)).ttl == 3.0


async def test_keep_alive_uses_one_stream_and_reports_a_lost_lease(url: str, make_store: MakeStore) -> None:
    store, other = make_store(url), make_store(url)
    a, b = await store.grant(5), await store.grant(5)
    assert await store.keep_alive(a.id) == 5.0
    stream = store.connection._keepalive_call
    assert stream is not None
    assert await store.keep_alive(b.id) == 5.0
    assert await store.keep_alive(a.id) == 5.0
    assert store.connection._keepalive_call is stream, "every renewal of the process shares one stream"

    await other.revoke(a.id)
    with pytest.raises(LeaseNotFoundError, match=f"no longer knows lease {a.id:x}"):
        await store.keep_alive(a.id)
    await store.revoke(a.id)  # revoking an unknown lease is a no-op
    with pytest.raises(LeaseNotFoundError, match="does not know the lease"):
        await store.create(f"{unique_prefix()}k", b"v", a.id)


async def test_revoke_deletes_every_key_of_the_lease_at_once(url: str, make_store: MakeStore) -> None:
    store, watcher = make_store(url), make_store(url)
    prefix = unique_prefix()
    lease = await store.grant(30)
    for name in ("a", "b"):
        assert await store.create(f"{prefix}{name}", b"1", lease.id) is None
    async with watcher.watch(prefix) as events:
        assert await next_event(events) == StoreSnapshot(items={f"{prefix}a": b"1", f"{prefix}b": b"1"})
        await store.revoke(lease.id)
        assert {await next_event(events), await next_event(events)} == {
            StoreDelete(key=f"{prefix}a"),
            StoreDelete(key=f"{prefix}b"),
        }
    assert await watcher.get_prefix(prefix) == {}


async def test_watchers_of_one_prefix_share_one_etcd_watch(url: str, make_store: MakeStore) -> None:
    store, writer = make_store(url), make_store(url)
    prefix = unique_prefix()
    await writer.put(f"{prefix}a", b"1", 0)
    async with store.watch(prefix) as first:
        assert await next_event(first) == StoreSnapshot(items={f"{prefix}a": b"1"})
        await writer.put(f"{prefix}b", b"2", 0)
        assert await next_event(first) == StorePut(key=f"{prefix}b", value=b"2")
        async with store.watch(prefix) as second:
            assert len(store._watches) == 1
            shared = store._watches[prefix]
            assert await next_event(second) == StoreSnapshot(items={f"{prefix}a": b"1", f"{prefix}b": b"2"})
            await writer.delete(f"{prefix}a")
            assert await next_event(first) == StoreDelete(key=f"{prefix}a")
            assert await next_event(second) == StoreDelete(key=f"{prefix}a")
        # The second subscriber leaves; then the first one leaves while a third keeps the watch going.
        async with store.watch(prefix) as third:
            assert await next_event(third) == StoreSnapshot(items={f"{prefix}b": b"2"})
            assert store._watches[prefix] is shared
    assert store._watches == {}
    async with store.watch(prefix) as fourth:
        assert await next_event(fourth) == StoreSnapshot(items={f"{prefix}b": b"2"})


async def test_the_watch_goes_on_when_its_first_subscriber_leaves(url: str, make_store: MakeStore) -> None:
    store, writer = make_store(url), make_store(url)
    prefix = unique_prefix()
    first_ready, first_leave, first_left = anyio.Event(), anyio.Event(), anyio.Event()

    async def first() -> None:  # the subscriber that starts (and so pumps) the shared watch
        async with store.watch(prefix) as events:
            assert await next_event(events) == StoreSnapshot(items={})
            first_ready.set()
            await first_leave.wait()
        first_left.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        with anyio.fail_after(PROMPT):
            await first_ready.wait()
        async with store.watch(prefix) as events:
            assert await next_event(events) == StoreSnapshot(items={})
            first_leave.set()
            with anyio.fail_after(PROMPT):
                await first_left.wait()
            await writer.put(f"{prefix}x", b"1", 0)
            assert await next_event(events) == StorePut(key=f"{prefix}x", value=b"1")
            assert store._watches[prefix].relists == 0, "the next subscriber resumes, it does not relist"


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ETCD_ENDPOINTS", "https://10.0.0.1:2379, https://10.0.0.2:2379")
    monkeypatch.setenv("ETCD_AUTH_USERNAME", "svc")
    monkeypatch.setenv("ETCD_AUTH_PASSWORD", "pw")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("ETCD_AUTH_CA", str(ca))
    monkeypatch.setenv("ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS", "7")
    store = EtcdStore.from_env()
    assert [t.address for t in store.connection.targets] == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert store.connection.username == "svc"
    assert store.connection.tls is not None
    assert store.connection.tls.ca == ca.read_bytes()
    assert store.connection.startup_timeout == 7.0
    backend = create_backend("etcd")
    assert isinstance(backend, KvDiscovery)
    assert isinstance(backend.store, EtcdStore)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"endpoints": ""}, "ETCD_ENDPOINTS is empty"),
        ({"endpoints": "ftp://h:1"}, "is not an etcd client URL"),
        ({"endpoints": "http://h:1,https://h:2"}, "mixes http:// and https://"),
        (
            {"endpoints": "https://h:1", "auth_ca": "/no/such/ca.pem"},
            "ETCD_AUTH_CA must be PEM text or the path",
        ),
        (
            {"endpoints": "https://h:1", "auth_client_cert": "-----BEGIN X-----"},
            "ETCD_AUTH_CLIENT_KEY go together",
        ),
        ({"auth_username": "svc"}, "ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD go together"),
        ({"startup_connect_timeout_seconds": -1}, "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS"),
    ],
)
def test_bad_settings_are_clear_configuration_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        EtcdStore(EtcdSettings.load(**overrides))


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "ca.txt"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match=r"ETCD_AUTH_CA=.*ca\.txt' is not a PEM file"):
        EtcdStore(EtcdSettings.load(endpoints="https://h:1", auth_ca=str(junk)))


async def test_a_runtime_configured_from_the_environment(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "etcd")
    monkeypatch.setenv("ETCD_ENDPOINTS", url)
    monkeypatch.setenv("ETCD_LEASE_TTL", "3")
    host = await RuntimeHost.start(DistributedRuntime.from_env())
    try:
        runtime = host.runtime
        assert runtime.backend.name == "etcd"
        assert runtime.lease.ttl == 3.0
        ns = unique_prefix().strip("/")
        registered = await runtime.endpoint(f"{ns}.c.e").register("tcp://h:1")
        assert registered.instance_id == runtime.lease.id
        assert await runtime.endpoint(f"{ns}.c.e").list() == [registered]
    finally:
        await host.stop()
    async with KvDiscovery(EtcdStore(EtcdSettings.load(endpoints=url))) as other:
        assert await other.list(InstanceQuery(namespace=ns)) == [], "a clean exit revokes the lease"
