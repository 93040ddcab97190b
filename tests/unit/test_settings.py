"""Settings from the environment and backend selection."""

from __future__ import annotations

import pytest

from dyndisc import ConfigurationError, DistributedRuntime, LeaseLossPolicy, MemoryStore
from dyndisc._settings import load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DYN_DISCOVERY_BACKEND", "DYN_LEASE_TTL", "ETCD_LEASE_TTL", "DYN_LEASE_LOSS_POLICY"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings()
    assert settings.discovery_backend == "etcd"
    assert settings.effective_lease_ttl() == 10.0
    assert settings.lease_loss_policy is LeaseLossPolicy.REREGISTER


def test_env_and_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "mem")
    monkeypatch.setenv("DYN_LEASE_TTL", "2.5")
    monkeypatch.setenv("DYN_LEASE_LOSS_POLICY", "shutdown")
    runtime = DistributedRuntime.from_env()
    assert runtime.settings.discovery_backend == "memory"
    assert runtime.lease_ttl == 2.5
    assert runtime.lease_loss_policy is LeaseLossPolicy.SHUTDOWN


def test_etcd_lease_ttl_is_honoured_on_etcd_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYN_LEASE_TTL", raising=False)
    monkeypatch.setenv("ETCD_LEASE_TTL", "30")
    assert DistributedRuntime("etcd").lease_ttl == 30
    assert DistributedRuntime("memory").lease_ttl == 10
    monkeypatch.setenv("ETCD_LEASE_TTL", "soon")
    with pytest.raises(ConfigurationError, match="ETCD_LEASE_TTL"):
        DistributedRuntime("etcd")


def test_unknown_backend_lists_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "zookeeper")
    with pytest.raises(ConfigurationError) as info:
        DistributedRuntime.from_env()
    for name in ("zookeeper", "etcd", "kubernetes", "memory", "nats", "file"):
        assert name in str(info.value)


@pytest.mark.parametrize("ttl", ["0", "-1", "abc"])
def test_bad_ttl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, ttl: str) -> None:
    monkeypatch.setenv("DYN_LEASE_TTL", ttl)
    with pytest.raises(ConfigurationError, match="DYN_LEASE_TTL"):
        DistributedRuntime(MemoryStore())
