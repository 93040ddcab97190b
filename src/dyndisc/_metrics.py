"""Optional Prometheus metrics (``pip install 'dyndisc[metrics]'``).

The runtime, the keep-alive loop and the watches report to :func:`metrics`. Without ``prometheus-client``
(or with ``DYN_METRICS=off``) that is a :class:`Metrics` whose methods do nothing and whose ``enabled`` is
``False``, so callers skip even reading the clock: the extra costs nothing when absent. With it, the series
below are registered in ``prometheus_client``'s default registry; serve them as usual, e.g.
``prometheus_client.start_http_server(9100)``.

=============================================== ======= ===================================================
series                                          type    meaning
=============================================== ======= ===================================================
``dyndisc_registered_endpoints``                gauge   endpoints registered by this process, per backend
``dyndisc_lease_keepalive_seconds``             histo.  round trip of each successful lease renewal
``dyndisc_lease_keepalive_failures_total``      counter failed renewals (each is retried until the deadline)
``dyndisc_lease_losses_total``                  counter leases lost (expired or revoked behind our back)
``dyndisc_lease_seconds_since_renewal``         gauge   time since the last successful renewal
``dyndisc_watch_events_total``                  counter watch events received, by ``type``
``dyndisc_watch_resyncs_total``                 counter resyncs after a watch's first (reconnects, lost
                                                        history)
``dyndisc_watch_lag_seconds``                   histo.  from an event reaching the runtime to a
                                                        subscriber taking it
=============================================== ======= ===================================================

Every series has a ``backend`` label (``etcd``, ``nats`` ...).
"""

from __future__ import annotations

import os
import time
from typing import Any

from dyndisc._errors import ConfigurationError

__all__ = ["Metrics", "PrometheusMetrics", "metrics", "set_metrics"]

_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")


class Metrics:
    """The no-op recorder; :class:`PrometheusMetrics` overrides every method."""

    #: False when nothing is recorded: callers skip the work of measuring.
    enabled = False

    def registered(self, backend: str, delta: int) -> None:
        """``delta`` endpoints were registered (positive) or unregistered (negative)."""

    def keep_alive_succeeded(self, backend: str, seconds: float) -> None:
        """A renewal succeeded after ``seconds``."""

    def keep_alive_failed(self, backend: str) -> None:
        """A renewal failed (it will be retried)."""

    def lease_lost(self, backend: str) -> None:
        """The lease was lost."""

    def watch_event(self, backend: str, kind: str) -> None:
        """A watch received an event of ``kind`` (``resync``, ``added``, ``removed``)."""

    def resync(self, backend: str) -> None:
        """A watch resynced after its first snapshot."""

    def watch_lag(self, backend: str, seconds: float) -> None:
        """A subscriber took an event ``seconds`` after the runtime received it."""


class PrometheusMetrics(Metrics):
    """Records into ``prometheus_client`` collectors, registered in ``registry`` (default: the global one)."""

    enabled = True

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom

        kwargs: dict[str, Any] = {} if registry is None else {"registry": registry}
        labels = ["backend"]
        self._registered = prom.Gauge(
            "dyndisc_registered_endpoints", "Endpoints registered by this process.", labels, **kwargs
        )
        self._keep_alive = prom.Histogram(
            "dyndisc_lease_keepalive_seconds",
            "Round trip of successful lease renewals.",
            labels,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            **kwargs,
        )
        self._failures = prom.Counter(
            "dyndisc_lease_keepalive_failures", "Failed lease renewals (retried).", labels, **kwargs
        )
        self._losses = prom.Counter("dyndisc_lease_losses", "Leases lost.", labels, **kwargs)
        self._since = prom.Gauge(
            "dyndisc_lease_seconds_since_renewal",
            "Seconds since the last successful lease renewal.",
            labels,
            **kwargs,
        )
        self._events = prom.Counter(
            "dyndisc_watch_events", "Watch events received.", [*labels, "type"], **kwargs
        )
        self._resyncs = prom.Counter(
            "dyndisc_watch_resyncs", "Watch resyncs after the first snapshot.", labels, **kwargs
        )
        self._lag = prom.Histogram(
            "dyndisc_watch_lag_seconds",
            "From an event reaching the runtime to a subscriber taking it.",
            labels,
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            **kwargs,
        )
        self._last_renewal: dict[str, float] = {}
        # Labelled series, looked up once: prometheus_client's labels() takes a lock and checks its
        # arguments on every call, and some of these are on every registration and every watch event.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _series(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def registered(self, backend: str, delta: int) -> None:
        self._series(self._registered, backend).inc(delta)

    def keep_alive_succeeded(self, backend: str, seconds: float) -> None:
        self._series(self._keep_alive, backend).observe(seconds)
        if backend not in self._last_renewal:
            # Computed when scraped, so the gauge grows while renewals stall.
            since = self._series(self._since, backend)
            since.set_function(lambda: time.monotonic() - self._last_renewal[backend])
        self._last_renewal[backend] = time.monotonic()

    def keep_alive_failed(self, backend: str) -> None:
        self._series(self._failures, backend).inc()

    def lease_lost(self, backend: str) -> None:
        self._series(self._losses, backend).inc()

    def watch_event(self, backend: str, kind: str) -> None:
        self._series(self._events, backend, kind).inc()

    def resync(self, backend: str) -> None:
        self._series(self._resyncs, backend).inc()

    def watch_lag(self, backend: str, seconds: float) -> None:
        self._series(self._lag, backend).observe(seconds)


_current: Metrics | None = None


def _choose() -> Metrics:
    wanted = os.environ.get("DYN_METRICS", "auto").strip().lower()
    if wanted in _OFF:
        return Metrics()
    if wanted not in (*_ON, "auto", ""):
        raise ConfigurationError(f"DYN_METRICS={wanted!r} must be auto (default), on or off")
    try:
        import prometheus_client  # noqa: F401 - only probing for the extra
    except ImportError:
        if wanted in _ON:
            raise ConfigurationError(
                "DYN_METRICS=on needs prometheus-client: pip install 'dyndisc[metrics]' "
                "(or unset DYN_METRICS)"
            ) from None
        return Metrics()
    return PrometheusMetrics()


def metrics() -> Metrics:
    """The process-wide recorder, chosen on first use from ``DYN_METRICS`` and the installed extras."""
    global _current
    if _current is None:
        _current = _choose()
    return _current


def set_metrics(recorder: Metrics | None) -> Metrics | None:
    """Replace the process-wide recorder (``None``: choose again on next use); returns the previous one."""
    global _current
    previous, _current = _current, recorder
    return previous
