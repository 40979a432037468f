"""The gateway's Prometheus metrics, named after the OpenTelemetry HTTP conventions.

Labelled children are resolved once per label set and cached, so a request
costs a dict lookup and an observation. A cardinality budget bounds the
request histogram: once it holds ``max_label_sets`` label sets, a new set keeps
its facility, service, method and status but its route folds into ``other``,
and the fold is counted.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# OTel advisory boundaries for http.server.request.duration, in seconds.
OTEL_DURATION_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
LABELS = ("facility", "service", "http_route", "http_request_method", "http_response_status_code")
OTHER = "other"
SIGNALS = ("log", "span", "store")
EXEMPLAR_INTERVAL_S = 1.0


def duration_buckets_s(thresholds_s: list[float]) -> tuple[float, ...]:
    """OTel's buckets plus every SLO latency threshold, so a latency SLI is exact."""
    return tuple(sorted({*OTEL_DURATION_BUCKETS_S, *(round(t, 6) for t in thresholds_s)}))


class GatewayMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        thresholds_s: list[float],
        max_label_sets: int,
        facilities: dict[str, str] | None = None,
        slas: dict[str, float] | None = None,
    ) -> None:
        self.registry = registry
        self.buckets_s = duration_buckets_s(thresholds_s)
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests through the gateway.",
            LABELS,
            buckets=self.buckets_s,
            registry=registry,
        )
        self.active = Gauge(
            "http_server_active_requests",
            "Number of active HTTP server requests.",
            ("facility", "service"),
            registry=registry,
            multiprocess_mode="livesum",  # with --workers: the sum over live workers
        )
        self._dropped = Counter(
            "vitalgate_telemetry_dropped",
            "Telemetry items dropped because a queue was full or an exporter failed.",
            ("signal",),
            registry=registry,
        )
        self._overflow = Counter(
            "vitalgate_cardinality_overflow",
            "Label sets folded into route 'other' because the cardinality budget was spent.",
            ("metric",),
            registry=registry,
        )
        self.dropped = {s: self._dropped.labels(s) for s in SIGNALS}
        info = Gauge(
            "vitalgate_facility_info",
            "Configured facilities (1 each): the display name for dashboards and alerts.",
            ("facility", "facility_name"),
            registry=registry,
            multiprocess_mode="max",  # with --workers: 1, not one per process
        )
        for fid, name in (facilities or {}).items():
            info.labels(fid, name).set(1)
        sla = Gauge(
            "vitalgate_facility_sla_ratio",
            "Contractual availability per facility (0..1), for dashboards beside the SLO objective.",
            ("facility",),
            registry=registry,
            multiprocess_mode="max",
        )
        for fid, value in (slas or {}).items():
            sla.labels(fid).set(value)
        self._overflow_duration = self._overflow.labels("http_server_request_duration_seconds")
        self._max = max_label_sets
        self._last_exemplar: dict[tuple[str, str, str, str, int], float] = {}
        self._children: dict[tuple[str, str, str, str, int], tuple[Any, tuple[str, str, str, str, int]]] = {}
        self._active: dict[tuple[str, str], Any] = {}

    def drop(self, signal: str, n: int = 1) -> None:
        """Count ``n`` lost telemetry items; thread-safe (exporters call it)."""
        self.dropped[signal].inc(n)

    def request_child(
        self, facility: str, service: str, route: str, method: str, status: int
    ) -> tuple[Any, tuple[str, str, str, str, int]]:
        """The histogram child for a label set, and the (possibly folded) label set itself."""
        key = (facility, service, route, method, status)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= self._max:
                self._overflow_duration.inc()
                folded = (facility, service, OTHER, method, status)
                found = self._children.get(folded)
                if found is not None:
                    return found
                key = folded
            child = self.duration.labels(key[0], key[1], key[2], key[3], str(status))
            found = self._children[key] = (child, key)
        return found

    def exemplar_due(self, key: tuple[str, str, str, str, int], now: float) -> bool:
        """At most one exemplar a second per label set: Prometheus keeps only the latest per
        bucket, and attaching one costs more than the observation itself."""
        if now - self._last_exemplar.get(key, -math.inf) < EXEMPLAR_INTERVAL_S:
            return False
        self._last_exemplar[key] = now
        return True

    def active_child(self, facility: str, service: str) -> Any:
        key = (facility, service)
        child = self._active.get(key)
        if child is None:
            child = self._active[key] = self.active.labels(facility, service)
        return child
