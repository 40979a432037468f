"""A finished request as the proxy hands it to its sinks, for the sinks' own tests."""

from __future__ import annotations

from gateway.dataplane.outcome import Outcome
from gateway.dataplane.spans import NonRecordingSpan, SpanContext


def make_outcome(
    facility: str = "st-marys",
    service: str = "fhir",
    route: str = "/fhir/Patient/{id}",
    method: str = "GET",
    status: int = 200,
    duration_s: float = 0.01,
    *,
    started: float = 1_800_000_000.0,
    error_type: str | None = None,
    upstream_ms: float | None = None,
    trace_id: str = "ab" * 16,
    span_id: str = "cd" * 8,
    sampled: bool = False,
    key_route: str | None = None,
) -> Outcome:
    """A finished request as the proxy hands it to its sinks (``key_route``: its route after
    the cardinality budget, when folded)."""
    ctx = SpanContext(int(trace_id, 16), int(span_id, 16), sampled, 0x01 if sampled else 0x00)
    key = (facility, service, route if key_route is None else key_route, method, status)
    return Outcome(
        started,
        duration_s,
        facility,
        service,
        route,
        method,
        status,
        error_type,
        upstream_ms,
        key,
        NonRecordingSpan(ctx),
    )
