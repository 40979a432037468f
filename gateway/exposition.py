"""The gateway's Prometheus metrics, named after the OpenTelemetry HTTP conventions: the
registry's counters, the exposition of the data plane's own histogram and gauge, and, with
``--workers``, prometheus_client's multiprocess objects behind the data plane's protocols.

Which of the two request-histogram sinks a process uses is decided here, once, when the
gateway is assembled (``request_metrics``), as prometheus_client picks its value class once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import cast
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from core import conventions as names
from gateway.dataplane.bundle import status_class
from gateway.dataplane.metrics import (
    ExemplarClock,
    Gauges,
    LocalGauges,
    LocalHistograms,
    duration_buckets_s,
)
from gateway.dataplane.metrics import Gauge as GaugeChild
from gateway.dataplane.outcome import Outcome, RequestKey, RequestSink

SIGNALS = ("log", "span", "store", "audit")
DURATION_HELP = "Duration of HTTP server requests through the gateway."
ACTIVE_HELP = "Number of active HTTP server requests."
ACTIVE_LABELS = (names.FACILITY, names.SERVICE)


class FacilityPeriods:
    """``vitalgate_facility_period_start_seconds{facility, month, quarter}``: each facility's
    current local month and quarter, computed at the scrape from its time zone (zoneinfo: DST
    included), valued with the month's start. The rules' calendar windows take the period
    from it, so that they count the facility's own month, as ``slo status`` does."""

    def __init__(self, zones: dict[str, str]) -> None:
        self._zones = {fid: ZoneInfo(tz) for fid, tz in zones.items()}

    def set_zones(self, zones: dict[str, str]) -> None:
        self._zones = {fid: ZoneInfo(tz) for fid, tz in zones.items()}

    def describe(self) -> list[Metric]:
        """Nothing: a registry then takes the collector without collecting it once to learn its
        names (it is registered afresh for each scrape)."""
        return []

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            names.FACILITY_PERIOD,
            "Start of each facility's current local calendar month (Unix seconds), labelled with"
            " the month and quarter.",
            labels=(names.FACILITY, "month", "quarter"),
        )
        now = time.time()
        for fid, tz in self._zones.items():
            local = datetime.fromtimestamp(now, tz)
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            quarter = f"{local.year}-Q{(local.month - 1) // 3 + 1}"
            g.add_metric([fid, f"{local.year}-{local.month:02d}", quarter], start.timestamp())
        yield g


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


@dataclass(frozen=True)
class RequestMetrics:
    histogram: RequestSink
    active: Gauges


def request_metrics(
    registry: CollectorRegistry, buckets_s: tuple[float, ...], multiprocess: bool
) -> RequestMetrics:
    """The request histogram and active gauge for this process: the data plane's own (one
    process) or prometheus_client's multiprocess ones (workers)."""
    if multiprocess:
        return RequestMetrics(SharedHistograms(registry, buckets_s), SharedGauges(registry))
    histograms, gauges = LocalHistograms(buckets_s), LocalGauges()
    registry.register(cast(Collector, LocalCollector(histograms, gauges)))
    return RequestMetrics(histograms, gauges)


class GatewayMetrics:
    """Every other metric of the gateway (counters and the facility info gauges); the proxy's
    ``ProxyCounters`` and, for bundle entries, an entry sink."""

    def __init__(
        self,
        registry: CollectorRegistry,
        thresholds_s: list[float],
        facilities: dict[str, str] | None = None,
        slas: dict[str, float] | None = None,
    ) -> None:
        self.registry = registry
        self.buckets_s = duration_buckets_s(thresholds_s)
        self._dropped = Counter(
            names.TELEMETRY_DROPPED,
            "Telemetry items dropped because a queue was full or an exporter failed.",
            ("signal",),
            registry=registry,
        )
        self._overflow = Counter(
            names.CARDINALITY_OVERFLOW,
            "Label sets folded into route 'other' because the cardinality budget was spent.",
            ("metric",),
            registry=registry,
        )
        self.dropped = {s: self._dropped.labels(s) for s in SIGNALS}
        info = Gauge(
            names.FACILITY_INFO,
            "Configured facilities (1 each): the display name for dashboards and alerts.",
            (names.FACILITY, names.FACILITY_NAME),
            registry=registry,
            multiprocess_mode="max",  # with --workers: 1, not one per process
        )
        self._info = info
        sla = Gauge(
            names.FACILITY_SLA,
            "Contractual availability per facility (0..1), for dashboards beside the SLO objective.",
            (names.FACILITY,),
            registry=registry,
            multiprocess_mode="max",
        )
        self._sla = sla
        self._facility_names: dict[str, str] = {}
        self._slas: dict[str, float] = {}
        self.set_facilities(facilities or {}, slas or {})
        self._overflow_duration = self._overflow.labels(names.REQUEST_DURATION)
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
        self._store_errors = Counter(
            names.STORE_ERRORS,
            "Embedded-store operations that failed (operation: write, retried until it succeeds; "
            "compaction, retention not applied).",
            ("operation",),
            registry=registry,
        )
        self._refused = Counter(
            names.CONNECTIONS_REFUSED,
            "Client connections closed at once with 503 because the gateway held "
            "limits.max_client_connections already.",
            registry=registry,
        )
        self._uninspected = Counter(
            names.RESPONSES_UNINSPECTED,
            "FHIR JSON responses that could not be inspected for URLs and batch entries.",
            (names.SERVICE, "reason"),
            registry=registry,
        )
        self._spooled = Counter(
            names.RESPONSE_SPOOLED_BYTES,
            "Bytes of responses written to encrypted temporary files because the client took them"
            " slower than the upstream sent them (limits.max_temp_file_size).",
            registry=registry,
        )
        self._spool_errors = Counter(
            names.RESPONSE_SPOOL_ERRORS,
            "Temporary-file operations of response buffering that failed (create, write: the response"
            " streams on at the client's pace; read: the response is cut; close, truncate).",
            ("operation",),
            registry=registry,
        )
        self._spool_fallbacks = Counter(
            names.RESPONSE_SPOOL_FALLBACKS,
            "Responses that went on without their temporary file (error: it failed; limit: it reached"
            " limits.max_temp_file_size), holding their upstream connection at the client's pace.",
            ("reason",),
            registry=registry,
        )

        self._audit_records = Counter(
            names.AUDIT_RECORDS, "AuditEvents written to the audit trail (fsynced).", registry=registry
        )
        self._audit_errors = Counter(
            names.AUDIT_WRITE_ERRORS,
            "Failed writes of the audit trail (records, checkpoints, expiry); a failed batch is retried.",
            registry=registry,
        )

        self._forwarded = Counter(
            names.AUDIT_FORWARDED, "AuditEvents the audit repository accepted.", registry=registry
        )
        self._forward_failures = Counter(
            names.AUDIT_FORWARD_FAILURES,
            "Batches the audit repository did not take (retried with backoff), by reason.",
            ("reason",),
            registry=registry,
        )
        self._forward_lag = Gauge(
            names.AUDIT_FORWARD_LAG,
            "AuditEvents on disk not yet accepted by the audit repository.",
            registry=registry,
            multiprocess_mode="max",
        )

        self._span_failures = Counter(
            names.SPAN_EXPORT_FAILURES,
            "Span batches the collector did not take (their spans are counted as dropped), by"
            " reason: the error type, or the status class the collector answered.",
            ("reason",),
            registry=registry,
        )
        self._log_errors = Counter(
            names.ACCESS_LOG_WRITE_ERRORS,
            "Failed writes of the access log (a full disk, a closed pipe); their lines are dropped.",
            registry=registry,
        )
        self._depth = Gauge(
            names.QUEUE_DEPTH,
            "Telemetry waiting in the gateway's bounded queues, by signal (log: lines, span:"
            " spans, store: batches, audit: records); a full queue drops"
            " (vitalgate_telemetry_dropped_total).",
            ("signal",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.depth = {sig: self._depth.labels(sig) for sig in ("log", "span", "store", "audit")}
        self._cert_expiry = Gauge(
            names.UPSTREAM_CERT_EXPIRY,
            "notAfter of the TLS certificate each https upstream last presented.",
            ("upstream",),
            registry=registry,
            multiprocess_mode="livemin",
        )

    def span_export_failed(self, reason: str) -> None:
        self._span_failures.labels(reason).inc()

    def access_log_error(self) -> None:
        self._log_errors.inc()

    def certificate_expiry(self, upstream: str, not_after_s: float) -> None:
        self._cert_expiry.labels(upstream).set(not_after_s)

    def set_facilities(self, facilities: dict[str, str], slas: dict[str, float]) -> None:
        """The configured facilities' info and SLA gauges (again after a reload: a facility no
        longer configured loses its series, a renamed one changes its name label)."""
        for fid, name in self._facility_names.items():
            if facilities.get(fid) != name:
                self._info.remove(fid, name)
        for fid, name in facilities.items():
            self._info.labels(fid, name).set(1)
        for fid in self._slas.keys() - slas.keys():
            self._sla.remove(fid)
        for fid, value in slas.items():
            self._sla.labels(fid).set(value)
        self._facility_names, self._slas = dict(facilities), dict(slas)

    def audit_forwarded(self, n: int) -> None:
        self._forwarded.inc(n)

    def audit_forward_failed(self, reason: str) -> None:
        self._forward_failures.labels(reason).inc()

    def audit_forward_lag(self, records: int) -> None:
        self._forward_lag.set(records)

    def audit_written(self, n: int) -> None:
        self._audit_records.inc(n)

    def audit_dropped(self, n: int) -> None:
        self.drop("audit", n)

    def audit_write_error(self) -> None:
        self._audit_errors.inc()

    def entries(
        self, facility: str, service: str, method: str, route: str, status: int | None, start_s: float, n: int
    ) -> None:
        self._entries.labels(facility, service, method, route, status_class(status)).inc(n)

    def folded(self) -> None:
        """A request's label set was folded by the cardinality budget."""
        self._overflow_duration.inc()

    def store_error(self, operation: str) -> None:
        """A store write or compaction failed (thread-safe: the store's writer thread calls it)."""
        self._store_errors.labels(operation).inc()

    def connections_refused(self) -> None:
        self._refused.inc()

    def url_leak(self, facility: str, service: str, where: str) -> None:
        self._leaks.labels(facility, service, where).inc()

    def uninspected(self, service: str, reason: str) -> None:
        self._uninspected.labels(service, reason).inc()

    def spooled(self, n: int) -> None:
        self._spooled.inc(n)

    def spool_error(self, operation: str) -> None:
        self._spool_errors.labels(operation).inc()

    def spool_fallback(self, reason: str) -> None:
        self._spool_fallbacks.labels(reason).inc()

    def drop(self, signal: str, n: int = 1) -> None:
        """Count ``n`` lost telemetry items; thread-safe (exporters call it)."""
        self.dropped[signal].inc(n)


class StoreHealth:
    """The embedded store's flush gauges, in a process that writes the store only (a gauge
    that exists reads 0 until set, which would read as a store never flushed)."""

    def __init__(self, registry: CollectorRegistry, flush_interval_s: float) -> None:
        self.last_flush = Gauge(
            names.STORE_LAST_FLUSH,
            "When the embedded store last held every request counted before then (a batch"
            " written, or nothing waiting); with --workers, the oldest live worker's.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.flush_duration = Gauge(
            names.STORE_FLUSH_DURATION,
            "How long the embedded store's last batch took to write.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.flush_interval = Gauge(
            names.STORE_FLUSH_INTERVAL,
            "telemetry.store.flush_interval: the store's flush stale alert fires past 3 of them.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.flush_interval.set(flush_interval_s)
        self.last_flush.set(time.time())  # (opened now: nothing counted is waiting yet)


class Joined:
    """Several collectors as one, for one registry per scrape."""

    def __init__(self, *parts: Collector | CollectorRegistry) -> None:
        self._parts = parts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.collect()


class RestartCounts:
    """``vitalgate_worker_restarts_total{worker}``: workers the supervisor replaced after they
    died, counted in the supervisor (a dead worker cannot count its own death)."""

    def __init__(self, count: int) -> None:
        self.restarts = dict.fromkeys(range(count), 0)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            names.WORKER_RESTARTS.removesuffix("_total"),
            "Workers that died and were started again, by worker index.",
            labels=("worker",),
        )
        for index, n in sorted(self.restarts.items()):
            c.add_metric([str(index)], n)
        yield c
