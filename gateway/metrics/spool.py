"""Response buffering's counts: what it wrote to its encrypted temporary files, what failed,
and the responses that went on without a file (and so held their upstream connection)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from core import conventions as names


class SpoolMetrics:
    """The data plane's ``SpoolCounters``, in prometheus_client."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._spooled = Counter(
            names.RESPONSE_SPOOLED_BYTES,
            "Bytes of responses written to encrypted temporary files because the client took them"
            " slower than the upstream sent them (limits.max_temp_file_size).",
            registry=registry,
        )
        self._errors = Counter(
            names.RESPONSE_SPOOL_ERRORS,
            "Temporary-file operations of response buffering that failed (create, write: the response"
            " streams on at the client's pace; read: the response is cut; close, truncate).",
            ("operation",),
            registry=registry,
        )
        self._fallbacks = Counter(
            names.RESPONSE_SPOOL_FALLBACKS,
            "Responses that went on without their temporary file (error: it failed; limit: it reached"
            " limits.max_temp_file_size), holding their upstream connection at the client's pace.",
            ("reason",),
            registry=registry,
        )

    def spooled(self, n: int) -> None:
        self._spooled.inc(n)

    def spool_error(self, operation: str) -> None:
        self._errors.labels(operation).inc()

    def spool_fallback(self, reason: str) -> None:
        self._fallbacks.labels(reason).inc()
