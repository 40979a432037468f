"""The gateway's Prometheus metrics, named after the OpenTelemetry HTTP conventions.

Labelled children are resolved once per label set and cached, so a request
costs a dict lookup and an observation. A cardinality budget bounds the
request histogram: once it holds ``max_label_sets`` label sets, a new set keeps
its facility, service, method and status but its route folds into ``other``,
and the fold is counted.

In one process (no ``--workers``) the two per-request metrics, the request
histogram and the active-requests gauge, are kept by the gateway itself
(``LocalHistogram``, ``LocalGauge``: a bisect and two additions, no lock, as
only the event loop touches them and /metrics is served from the same loop)
and exposed through a collector with exactly the samples prometheus_client's
own would give. prometheus_client's observation path, interpreted Python with
a lock per value, was the largest single item of a request's cost. Workers
keep prometheus_client's objects: their values must live in its multiprocess
files for the supervisor to sum.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

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


DURATION = "http_server_request_duration_seconds"
DURATION_HELP = "Duration of HTTP server requests through the gateway."
ACTIVE = "http_server_active_requests"
ACTIVE_HELP = "Number of active HTTP server requests."
ACTIVE_LABELS = ("facility", "service")
RequestKey = tuple[str, str, str, str, int]
"""facility, service, route, method, status: one request histogram label set."""


class LocalHistogram:
    """One label set's histogram, as prometheus_client's child would count it (an observation
    goes to the first bucket whose bound is >= it), without its per-value locks."""

    __slots__ = ("bounds", "counts", "created", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ends with +Inf
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()
        self.exemplars: list[Exemplar | None] = [None] * len(bounds)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        i = bisect_left(self.bounds, amount)
        self.counts[i] += 1
        self.sum += amount
        if exemplar is not None:
            self.exemplars[i] = Exemplar(exemplar, amount, time.time())


class LocalGauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class _LocalCollector:
    """Exposes the local histogram and gauge with prometheus_client's own sample layout.

    Not a subclass of prometheus_client's ``Collector``: a registry needs only ``collect``, and
    a compiled class must not derive from a class the compiler may not see (an isolated build
    has no prometheus_client to read types from)."""

    def __init__(
        self,
        bounds: tuple[float, ...],
        histograms: dict[RequestKey, tuple[Any, RequestKey]],
        gauges: dict[tuple[str, str], Any],
    ) -> None:
        # The metrics' own child caches, read at scrape time (one process: local children only).
        self._le = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self._histograms = histograms
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        h = Metric(DURATION, DURATION_HELP, "histogram")
        for entry, key in list(self._histograms.values()):
            child: LocalHistogram = entry
            labels = dict(zip(LABELS, (*key[:4], str(key[4])), strict=True))
            counts = list(child.counts)  # one consistent copy
            total = 0
            for le, n, exemplar in zip(self._le, counts, child.exemplars, strict=True):
                total += n
                h.add_sample(f"{DURATION}_bucket", {**labels, "le": le}, float(total), None, exemplar)
            h.add_sample(f"{DURATION}_count", labels, float(total))
            h.add_sample(f"{DURATION}_sum", labels, child.sum)
            h.add_sample(f"{DURATION}_created", labels, child.created)
        yield h
        g = Metric(ACTIVE, ACTIVE_HELP, "gauge")
        for (facility, service), entry in list(self._gauges.items()):
            gauge: LocalGauge = entry
            g.add_sample(ACTIVE, {"facility": facility, "service": service}, float(gauge.value))
        yield g


class GatewayMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        thresholds_s: list[float],
        max_label_sets: int,
        facilities: dict[str, str] | None = None,
        slas: dict[str, float] | None = None,
        multiprocess: bool = False,
    ) -> None:
        self.registry = registry
        self.buckets_s = duration_buckets_s(thresholds_s)
        self._bounds = (*self.buckets_s, math.inf)
        self._duration: Histogram | None = None
        self._active_metric: Gauge | None = None
        self._last_exemplar: dict[RequestKey, float] = {}
        # Per label set, resolved once: the histogram child and the (possibly folded) key.
        self._children: dict[RequestKey, tuple[Any, RequestKey]] = {}
        self._active: dict[tuple[str, str], Any] = {}
        if multiprocess:
            self._duration = Histogram(
                DURATION, DURATION_HELP, LABELS, buckets=self.buckets_s, registry=registry
            )
            self._active_metric = Gauge(
                ACTIVE,
                ACTIVE_HELP,
                ACTIVE_LABELS,
                registry=registry,
                multiprocess_mode="livesum",  # with --workers: the sum over live workers
            )
        else:
            collector = _LocalCollector(self._bounds, self._children, self._active)
            registry.register(cast(Collector, collector))
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
        self._entries = Counter(
            "vitalgate_fhir_bundle_entries",
            "Entries of FHIR batch and transaction responses, by the entry's method, route "
            "template and status class (a batch answers 200 while its entries may fail).",
            ("facility", "service", "http_request_method", "http_route", "status_class"),
            registry=registry,
        )
        self._leaks = Counter(
            "vitalgate_upstream_url_leak",
            "Responses passed on that still name the upstream's own address (a client following "
            "it would bypass the gateway), by where the address was found.",
            ("facility", "service", "where"),
            registry=registry,
        )
        self._store_errors = Counter(
            "vitalgate_store_errors",
            "Embedded-store operations that failed (operation: write, retried until it succeeds; "
            "compaction, retention not applied).",
            ("operation",),
            registry=registry,
        )
        self._refused = Counter(
            "vitalgate_client_connections_refused",
            "Client connections closed at once with 503 because the gateway held "
            "limits.max_client_connections already.",
            registry=registry,
        )
        self._uninspected = Counter(
            "vitalgate_fhir_responses_uninspected",
            "FHIR JSON responses that could not be inspected for URLs and batch entries.",
            ("service", "reason"),
            registry=registry,
        )

    def bundle_entries(
        self, facility: str, service: str, method: str, route: str, status_class: str, n: int
    ) -> None:
        self._entries.labels(facility, service, method, route, status_class).inc(n)

    def store_error(self, operation: str) -> None:
        """A store write or compaction failed (thread-safe: the store's writer thread calls it)."""
        self._store_errors.labels(operation).inc()

    def connections_refused(self) -> None:
        self._refused.inc()

    def url_leak(self, facility: str, service: str, where: str) -> None:
        self._leaks.labels(facility, service, where).inc()

    def uninspected(self, service: str, reason: str) -> None:
        self._uninspected.labels(service, reason).inc()

    def drop(self, signal: str, n: int = 1) -> None:
        """Count ``n`` lost telemetry items; thread-safe (exporters call it)."""
        self.dropped[signal].inc(n)

    def request_child(
        self, facility: str, service: str, route: str, method: str, status: int
    ) -> tuple[Any, RequestKey]:
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
            child: Any
            if self._duration is not None:
                child = self._duration.labels(key[0], key[1], key[2], key[3], str(status))
            else:
                child = LocalHistogram(self._bounds)
            found = self._children[key] = (child, key)
        return found

    def exemplar_due(self, key: RequestKey, now: float) -> bool:
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
            if self._active_metric is not None:
                child = self._active_metric.labels(facility, service)
            else:
                child = LocalGauge()
            self._active[key] = child
        return child
