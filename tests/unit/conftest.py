"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client
import pytest

from dyndisc._metrics import PrometheusMetrics, set_metrics


@pytest.fixture
def registry() -> Iterator[prometheus_client.CollectorRegistry]:
    """A private registry recorded into for the duration of the test (made before the parts that count)."""
    fresh = prometheus_client.CollectorRegistry()
    previous = set_metrics(PrometheusMetrics(fresh))
    try:
        yield fresh
    finally:
        set_metrics(previous)
