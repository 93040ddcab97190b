"""Optional Prometheus metrics: recorded by the runtime, keep-alive loop and watches; a no-op without the
extra."""

from __future__ import annotations

import sys
from collections.abc import Callable

import anyio
import prometheus_client
import pytest

from dyndisc import Added, DistributedRuntime, KvDiscovery, Lease, MemoryStore
from dyndisc._errors import ConfigurationError
from dyndisc._metrics import Metrics, _choose, metrics, set_metrics
from dyndisc.testing import FaultyStore


class FailingOnce(KvDiscovery):
    """A memory backend whose next keep-alive fails, as a network blip would make it."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, owns_store=False)
        self.fail_next = True

    async def keep_alive(self, lease: Lease) -> float:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("simulated blip")
        return await super().keep_alive(lease)


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` (a scrape: metrics have no change notification), failing after ``timeout``."""
    with anyio.fail_after(timeout, shield=False):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the registry itself
            await anyio.sleep(0.02)
    assert condition(), what


def sample(registry: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"backend": "memory", **labels}) or 0.0


async def test_the_runtime_records_registrations_renewals_and_watches(
    registry: prometheus_client.CollectorRegistry,
) -> None:
    store = FaultyStore(MemoryStore())
    backend = FailingOnce(store)
    async with DistributedRuntime(backend, lease_ttl=1.0) as runtime:  # TTL 1 s: renewals every ~0.5 s
        endpoint = runtime.endpoint("ns.c.e")
        client = await endpoint.client()
        await endpoint.register("tcp://h:1")
        assert sample(registry, "dyndisc_registered_endpoints") == 1
        await client.wait_for_instances(timeout=5)
        # One failed renewal (retried), then successful ones.
        await until(lambda: sample(registry, "dyndisc_lease_keepalive_seconds_count") >= 1, "a renewal")
        assert sample(registry, "dyndisc_lease_keepalive_failures_total") == 1
        # A renewal on memory takes microseconds (a wrong sign would make it twice the clock's reading).
        assert 0 <= sample(registry, "dyndisc_lease_keepalive_seconds_sum") < 1.0
        assert 0 <= sample(registry, "dyndisc_lease_seconds_since_renewal") < 1.0
        # Events: the first resync and the added instance; the resync is not counted as a recovery.
        assert sample(registry, "dyndisc_watch_events_total", type="resync") == 1
        assert sample(registry, "dyndisc_watch_events_total", type="added") == 1
        assert sample(registry, "dyndisc_watch_resyncs_total") == 0
        # A broken watch resyncs, and that is counted.
        store.break_watches()
        await until(lambda: sample(registry, "dyndisc_watch_resyncs_total") == 1, "a resync")
        # A subscriber taking events measures the lag.
        async with runtime.namespace("ns").watch() as events:
            first = await anext(events)
            assert first.type == "resync"
            await endpoint.register("tcp://h:2")
            with anyio.fail_after(5):
                async for event in events:
                    if isinstance(event, Added):
                        break
        assert sample(registry, "dyndisc_watch_lag_seconds_count") >= 2
        # Taken at once: the lag is a few milliseconds (a wrong sign would make it days).
        assert 0 <= sample(registry, "dyndisc_watch_lag_seconds_sum") < 1.0
        await endpoint.unregister()
        assert sample(registry, "dyndisc_registered_endpoints") == 0
        await endpoint.register("tcp://h:3")
        # A lease revoked behind the runtime's back is lost (and replaced).
        await store.expire_lease(runtime.instance_id)
        await until(lambda: sample(registry, "dyndisc_lease_losses_total") == 1, "a lease loss")
    assert sample(registry, "dyndisc_registered_endpoints") == 0, (
        "leaving the runtime drops its registrations"
    )


def test_without_the_extra_nothing_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delenv("DYN_METRICS", raising=False)
    chosen = _choose()
    assert type(chosen) is Metrics
    assert not chosen.enabled
    monkeypatch.setenv("DYN_METRICS", "on")
    with pytest.raises(ConfigurationError, match=r"pip install 'dyndisc\[metrics\]'"):
        _choose()


def test_metrics_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_METRICS", "off")
    assert not _choose().enabled
    monkeypatch.setenv("DYN_METRICS", "sometimes")
    with pytest.raises(ConfigurationError, match="DYN_METRICS='sometimes' must be auto"):
        _choose()


def test_the_process_recorder_is_chosen_once(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = set_metrics(None)
    try:
        monkeypatch.setenv("DYN_METRICS", "off")
        assert metrics() is metrics()
        assert not metrics().enabled
    finally:
        set_metrics(previous)
