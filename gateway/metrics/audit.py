"""The audit trail's counts: records made durable, failed writes, and its forwarding to an
audit repository (accepted, refused, still waiting). The trail and the forwarder take these
through their own protocols (``AuditCounters``, ``ForwardCounters``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from core import conventions as names
from gateway.metrics.telemetry import TelemetryMetrics


class AuditMetrics:
    """The trail's writes; a record it could not queue is lost telemetry (signal ``audit``)."""

    def __init__(self, registry: CollectorRegistry, telemetry: TelemetryMetrics) -> None:
        self._records = Counter(
            names.AUDIT_RECORDS, "AuditEvents written to the audit trail (fsynced).", registry=registry
        )
        self._errors = Counter(
            names.AUDIT_WRITE_ERRORS,
            "Failed writes of the audit trail (records, checkpoints, expiry); a failed batch is retried.",
            registry=registry,
        )
        self._telemetry = telemetry

    def audit_written(self, n: int) -> None:
        self._records.inc(n)

    def audit_dropped(self, n: int) -> None:
        self._telemetry.drop("audit", n)

    def audit_write_error(self) -> None:
        self._errors.inc()


class ForwardMetrics:
    """The forwarder's progress towards the audit repository."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._forwarded = Counter(
            names.AUDIT_FORWARDED, "AuditEvents the audit repository accepted.", registry=registry
        )
        self._failures = Counter(
            names.AUDIT_FORWARD_FAILURES,
            "Batches the audit repository did not take (retried with backoff), by reason.",
            ("reason",),
            registry=registry,
        )
        self._lag = Gauge(
            names.AUDIT_FORWARD_LAG,
            "AuditEvents on disk not yet accepted by the audit repository.",
            registry=registry,
            multiprocess_mode="max",
        )

    def audit_forwarded(self, n: int) -> None:
        self._forwarded.inc(n)

    def audit_forward_failed(self, reason: str) -> None:
        self._failures.labels(reason).inc()

    def audit_forward_lag(self, records: int) -> None:
        self._lag.set(records)
