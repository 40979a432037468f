"""What the telemetry outputs lost or still hold: items dropped, queue depths, span batches the
collector refused, failed access-log writes. The proxy never waits on telemetry, so a loss is
counted here instead, at the moment it happens (from the exporters' threads too:
prometheus_client's counters are thread-safe)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from core import conventions as names

SIGNALS = ("log", "span", "store", "audit")


class TelemetryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        dropped = Counter(
            names.TELEMETRY_DROPPED,
            "Telemetry items dropped because a queue was full or an exporter failed.",
            ("signal",),
            registry=registry,
        )
        self._dropped = {s: dropped.labels(s) for s in SIGNALS}
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
        depth = Gauge(
            names.QUEUE_DEPTH,
            "Telemetry waiting in the gateway's bounded queues, by signal (log: lines, span:"
            " spans, store: batches, audit: records); a full queue drops"
            " (vitalgate_telemetry_dropped_total).",
            ("signal",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._depth = {s: depth.labels(s) for s in SIGNALS}

    def drop(self, signal: str, n: int = 1) -> None:
        """Count ``n`` lost telemetry items of ``signal`` (one of SIGNALS)."""
        self._dropped[signal].inc(n)

    def queue_depth(self, signal: str, items: int) -> None:
        self._depth[signal].set(items)

    def span_export_failed(self, reason: str) -> None:
        self._span_failures.labels(reason).inc()

    def access_log_error(self) -> None:
        self._log_errors.inc()
