"""How a request ends: one ``Outcome`` record, handed to each sink the gateway was assembled
with (histogram, access log, store recorder, spans; an audit trail would be one more).

The sinks are chosen once, by the composition root (``gateway/server.py``): in one process
the histogram is the gateway's own, with ``--workers`` prometheus_client's multiprocess one;
without a store there is no recorder sink at all. The request path calls each in turn and
knows nothing else about them.
"""

from __future__ import annotations

from typing import Protocol

from gateway.dataplane.spans import AnySpan, SpanContext

RequestKey = tuple[str, str, str, str, int]
"""facility, service, route, method, status: one label set of the request histogram."""


class AuditFacts:
    """What the audit trail needs of a request on an audited route, and telemetry never
    carries: the path and query as sent (ids included), the credentials, the client's
    address, the request id, and a FHIR JSON response small enough to look for patients in.
    Built only when an audit trail is configured; read only by its sink."""

    __slots__ = (
        "authorization",
        "body",
        "committed",
        "forwarded_for",
        "method",
        "path",
        "peer",
        "prefix",
        "probe",
        "query",
        "request_body",
        "request_id",
        "upstream",
        "user",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        prefix: str,
        upstream: str,
        peer: str | None,
        forwarded_for: str | None,
        authorization: str | None,
        user: str | None,
        request_id: str | None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.prefix = prefix
        self.upstream = upstream
        self.peer = peer
        self.forwarded_for = forwarded_for
        """The client's address a trusted proxy in front gave (X-Forwarded-For), if any."""
        self.authorization = authorization
        self.user = user
        """The value of the identity header, when the peer is a trusted source of it."""
        self.request_id = request_id
        self.body: bytes | None = None
        """The whole response, when it was FHIR JSON within the route's inspection limit."""
        self.request_body: bytes | None = None
        """The (bounded) Bundle posted to the base, for its batch or transaction type."""
        self.committed = False
        """Already on disk before its response was served (``durability: strict``)."""
        self.probe = False
        """The gateway's own synthetic probe: recorded as its system agent, never as a user."""


class Outcome:
    """One finished request (or one the HTTP parser refused), as every sink sees it."""

    __slots__ = (
        "audit",
        "context",
        "duration_s",
        "error_type",
        "facility",
        "key",
        "method",
        "route",
        "service",
        "span",
        "started",
        "status",
        "upstream_ms",
    )

    def __init__(
        self,
        started: float,
        duration_s: float,
        facility: str,
        service: str,
        route: str,
        method: str,
        status: int,
        error_type: str | None,
        upstream_ms: float | None,
        key: RequestKey,
        span: AnySpan,
    ) -> None:
        self.started = started
        """Wall-clock start, seconds since the epoch."""
        self.duration_s = duration_s
        self.facility = facility
        self.service = service
        self.route = route
        """The route template; "" when no route matched."""
        self.method = method
        self.status = status
        self.error_type = error_type
        self.upstream_ms = upstream_ms
        self.key = key
        """The label set after the cardinality budget (its route may be folded to ``other``):
        what bounded stores (the histogram, the embedded store) count under."""
        self.span = span
        self.context: SpanContext = span.get_span_context()
        self.audit: AuditFacts | None = None
        """Set on audited routes only, when the gateway has an audit trail."""


class AuditGate(Protocol):
    async def hold(
        self,
        facts: AuditFacts,
        facility: str,
        service: str,
        route: str,
        method: str,
        status: int,
        error_type: str | None,
        span: AnySpan,
    ) -> bool:
        """Record the request as it is about to be answered with ``status``, and return once the
        record is on disk (True), or when it cannot be made durable (False: not served)."""


class RequestSink(Protocol):
    def request(self, outcome: Outcome) -> None:
        """Take one finished request. Runs on the event loop for every request: never block."""


class EntrySink(Protocol):
    def entries(
        self, facility: str, service: str, method: str, route: str, status: int | None, start_s: float, n: int
    ) -> None:
        """Take ``n`` entries of a FHIR batch or transaction with one outcome (``status`` None:
        the entry had no readable status)."""


class SpanSink:
    """Ends the request's server span with its status and error type."""

    def request(self, outcome: Outcome) -> None:
        span = outcome.span
        if span.is_recording():
            span.set_attribute("http.response.status_code", outcome.status)
            if outcome.error_type is not None:
                span.set_attribute("error.type", outcome.error_type)
            if outcome.status >= 500:
                span.set_error()
            span.end()
