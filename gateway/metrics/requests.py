"""The request path's metrics: the request histogram and active-requests gauge (the data
plane's own in one process, prometheus_client's multiprocess ones under ``--workers``: which,
``MetricStorage`` decides), and the path's other counts (cardinality folds, FHIR Bundle
entries, upstream URL leaks, responses not inspected, client connections refused)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from core import conventions as names
from gateway.dataplane.bundle import status_class
from gateway.dataplane.metrics import ExemplarClock, Gauges, LocalGauges, LocalHistograms
from gateway.dataplane.metrics import Gauge as GaugeChild
from gateway.dataplane.outcome import Outcome, RequestKey, RequestSink

DURATION_HELP = "Duration of HTTP server requests through the gateway."
ACTIVE_HELP = "Number of active HTTP server requests."
ACTIVE_LABELS = (names.FACILITY, names.SERVICE)


@dataclass(frozen=True)
class RequestMetrics:
    """The request histogram (a sink of every outcome) and the active-requests gauges."""

    histogram: RequestSink
    active: Gauges


class LocalCollector:
    """Exposes the data plane's own histogram and gauge with prometheus_client's sample layout."""

    def __init__(self, histograms: LocalHistograms, gauges: LocalGauges) -> None:
        self._le = [floatToGoString(b) for b in histograms.bounds]  # type: ignore[no-untyped-call]
        self._histograms = histograms
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        h = Metric(names.REQUEST_DURATION, DURATION_HELP, "histogram")
        for key, child in list(self._histograms.children.items()):
            labels = dict(zip(names.REQUEST_LABELS, (*key[:4], str(key[4])), strict=True))
            counts = list(child.counts)  # one consistent copy
            total = 0
            for le, n, exemplar in zip(self._le, counts, child.exemplars, strict=True):
                total += n
                ex = Exemplar({"trace_id": exemplar[0]}, exemplar[1], exemplar[2]) if exemplar else None
                h.add_sample(f"{names.REQUEST_DURATION}_bucket", {**labels, "le": le}, float(total), None, ex)
            h.add_sample(f"{names.REQUEST_DURATION}_count", labels, float(total))
            h.add_sample(f"{names.REQUEST_DURATION}_sum", labels, child.sum)
            h.add_sample(f"{names.REQUEST_DURATION}_created", labels, child.created)
        yield h
        g = Metric(names.ACTIVE_REQUESTS, ACTIVE_HELP, "gauge")
        for (facility, service), gauge in list(self._gauges.children.items()):
            g.add_sample(
                names.ACTIVE_REQUESTS,
                dict(zip(ACTIVE_LABELS, (facility, service), strict=True)),
                float(gauge.value),
            )
        yield g


class SharedHistograms:
    """The request histogram in prometheus_client's multiprocess files (``--workers``)."""

    def __init__(self, registry: CollectorRegistry, buckets_s: tuple[float, ...]) -> None:
        self._metric = Histogram(
            names.REQUEST_DURATION, DURATION_HELP, names.REQUEST_LABELS, buckets=buckets_s, registry=registry
        )
        self._children: dict[RequestKey, Histogram] = {}
        self._exemplars = ExemplarClock()

    def request(self, outcome: Outcome) -> None:
        key = outcome.key
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(key[0], key[1], key[2], key[3], str(key[4]))
        if self._exemplars.due(outcome):
            child.observe(outcome.duration_s, {"trace_id": outcome.context.trace_hex()})
        else:
            child.observe(outcome.duration_s)


class SharedGauges:
    """Active requests summed over live workers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._metric = Gauge(
            names.ACTIVE_REQUESTS, ACTIVE_HELP, ACTIVE_LABELS, registry=registry, multiprocess_mode="livesum"
        )
        self._children: dict[tuple[str, str], Gauge] = {}

    def child(self, facility: str, service: str) -> GaugeChild:
        key = (facility, service)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = self._metric.labels(facility, service)
        return found


class RequestCounters:
    """The request path's counts besides the histogram: the proxy's ``ProxyCounters``, for
    Bundle entries an ``EntrySink``, the cardinality limit's fold, and the HTTP server's
    refusals."""

    def __init__(self, registry: CollectorRegistry) -> None:
        overflow = Counter(
            names.CARDINALITY_OVERFLOW,
            "Label sets folded into route 'other' because the cardinality budget was spent.",
            ("metric",),
            registry=registry,
        )
        self._overflow_duration = overflow.labels(names.REQUEST_DURATION)
        self._entries = Counter(
            names.BUNDLE_ENTRIES,
            "Entries of FHIR batch and transaction responses, by the entry's method, route "
            "template and status class (a batch answers 200 while its entries may fail).",
            (names.FACILITY, names.SERVICE, names.METHOD, names.ROUTE, names.STATUS_CLASS),
            registry=registry,
        )
        self._leaks = Counter(
            names.URL_LEAK,
            "Responses passed on that still name the upstream's own address (a client following "
            "it would bypass the gateway), by where the address was found.",
            (names.FACILITY, names.SERVICE, "where"),
            registry=registry,
        )
        self._uninspected = Counter(
            names.RESPONSES_UNINSPECTED,
            "FHIR JSON responses that could not be inspected for URLs and batch entries.",
            (names.SERVICE, "reason"),
            registry=registry,
        )
        self._refused = Counter(
            names.CONNECTIONS_REFUSED,
            "Client connections closed at once with 503 because the gateway held "
            "limits.max_client_connections already.",
            registry=registry,
        )

    def folded(self) -> None:
        """A request's label set was folded by the cardinality limit."""
        self._overflow_duration.inc()

    def entries(
        self, facility: str, service: str, method: str, route: str, status: int | None, start_s: float, n: int
    ) -> None:
        self._entries.labels(facility, service, method, route, status_class(status)).inc(n)

    def url_leak(self, facility: str, service: str, where: str) -> None:
        self._leaks.labels(facility, service, where).inc()

    def uninspected(self, service: str, reason: str) -> None:
        self._uninspected.labels(service, reason).inc()

    def connections_refused(self) -> None:
        self._refused.inc()
