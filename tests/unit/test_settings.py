"""Settings from the environment and backend selection: each setting is read by its owner only."""

from __future__ import annotations

import pytest

from dyndisc import ConfigurationError, DistributedRuntime, KvDiscovery, LeaseLossPolicy, MemoryStore
from dyndisc._settings import RuntimeSettings, canonical_backend_name
from dyndisc.backends.etcd import EtcdSettings, EtcdStore


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DYN_DISCOVERY_BACKEND", "DYN_LEASE_TTL", "ETCD_LEASE_TTL", "DYN_LEASE_LOSS_POLICY"):
        monkeypatch.delenv(var, raising=False)
    settings = RuntimeSettings.load()
    assert settings.discovery_backend == "etcd"
    assert settings.lease_ttl is None
    assert settings.lease_loss_policy is LeaseLossPolicy.REREGISTER
    assert DistributedRuntime().lease_ttl == 10.0
    assert DistributedRuntime(MemoryStore()).lease_ttl == 10.0


def test_env_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "mem")
    monkeypatch.setenv("DYN_LEASE_TTL", "2.5")
    monkeypatch.setenv("DYN_LEASE_LOSS_POLICY", "shutdown")
    runtime = DistributedRuntime.from_env()
    assert runtime.lease_ttl == 2.5
    assert runtime.lease_loss_policy is LeaseLossPolicy.SHUTDOWN


def test_etcd_lease_ttl_is_the_etcd_backends_own_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYN_LEASE_TTL", raising=False)
    monkeypatch.setenv("ETCD_LEASE_TTL", "30")
    assert DistributedRuntime("etcd").lease_ttl == 30
    assert DistributedRuntime(KvDiscovery(EtcdStore(EtcdSettings.load()))).lease_ttl == 30
    assert DistributedRuntime("memory").lease_ttl == 10
    assert DistributedRuntime(MemoryStore()).lease_ttl == 10, "a memory runtime never reads ETCD_LEASE_TTL"
    monkeypatch.setenv("DYN_LEASE_TTL", "4")
    assert DistributedRuntime("etcd").lease_ttl == 4, "DYN_LEASE_TTL wins over the backend's TTL"
    assert DistributedRuntime("etcd", lease_ttl=3).lease_ttl == 3, "the argument wins over both"
    monkeypatch.setenv("ETCD_LEASE_TTL", "soon")
    with pytest.raises(ConfigurationError, match="ETCD_LEASE_TTL"):
        DistributedRuntime("etcd")
    assert DistributedRuntime(MemoryStore()).lease_ttl == 4, "a bad etcd setting does not concern memory"


def test_a_runtime_given_a_backend_does_not_read_the_backend_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "kv_store-or-anything")
    assert DistributedRuntime(MemoryStore()).lease_ttl == 10
    with pytest.raises(ConfigurationError, match="DYN_DISCOVERY_BACKEND"):
        DistributedRuntime()


def test_unknown_backend_lists_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "zookeeper")
    with pytest.raises(ConfigurationError) as info:
        DistributedRuntime.from_env()
    for name in ("zookeeper", "etcd", "kubernetes", "memory", "nats", "file", "DYN_DISCOVERY_BACKEND"):
        assert name in str(info.value)


def test_a_bad_backend_argument_is_blamed_on_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYN_DISCOVERY_BACKEND", raising=False)
    with pytest.raises(ConfigurationError) as info:
        DistributedRuntime("etcdd")
    assert "argument" in str(info.value)
    assert "DYN_DISCOVERY_BACKEND" not in str(info.value)


@pytest.mark.parametrize("ttl", ["0", "-1", "abc"])
def test_bad_ttl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, ttl: str) -> None:
    monkeypatch.setenv("DYN_LEASE_TTL", ttl)
    with pytest.raises(ConfigurationError, match="DYN_LEASE_TTL"):
        DistributedRuntime(MemoryStore())


@pytest.mark.parametrize(
    ("value", "store", "expected"),
    [
        ("mem", None, "memory"),
        ("file", None, "file"),
        ("etcd", None, "etcd"),
        ("kubernetes", None, "kubernetes"),
        ("kv_store", None, "etcd"),
        ("kv_store", "file", "file"),
        ("kv_store", "mem", "memory"),
        ("KV_STORE", "etcd", "etcd"),
    ],
)
def test_the_reference_runtimes_values_mean_the_same(
    monkeypatch: pytest.MonkeyPatch, value: str, store: str | None, expected: str
) -> None:
    if store is None:
        monkeypatch.delenv("DYN_STORE_KV", raising=False)
    else:
        monkeypatch.setenv("DYN_STORE_KV", store)
    assert canonical_backend_name(value) == expected


def test_kv_store_names_the_store_variable_when_it_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "kv_store")
    monkeypatch.setenv("DYN_STORE_KV", "nats")
    with pytest.raises(ConfigurationError, match=r"'nats' \(DYN_STORE_KV.*valid: etcd, file, mem"):
        DistributedRuntime.from_env()
