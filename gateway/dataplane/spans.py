"""Spans: a span's identity as it travels (W3C trace context), the recording span a sampled
request gets, and the non-recording one of every other request.

The gateway's own span model rather than the OpenTelemetry SDK's (``tracing.py`` says why):
it keeps what OpenTelemetry's data model needs for SERVER and CLIENT spans with attributes,
status and parent links, and nothing else. Unsampled requests get a non-recording span: two
ids and nothing else. Ending a recording span hands it to the exporter
(``spanexport.LoopExporter.on_end``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

INTERNAL: Final = 1  # OTLP Span.SpanKind
SERVER: Final = 2
CLIENT: Final = 3
STATUS_UNSET: Final = 0
STATUS_ERROR: Final = 2
TRACE_ID_LOW: Final = (1 << 64) - 1
"""The low 64 bits of a trace id: what the sampler compares, and the second half on the wire."""
_FLAGS_HEX: Final[tuple[str, ...]] = ("00", "01", "02", "03")


class SpanContext:
    """A span's identity as it travels (W3C trace context). Treated as immutable; a plain
    slotted class because a frozen dataclass costs a microsecond per request to build."""

    __slots__ = ("_span_hex", "_trace_hex", "flags", "sampled", "span_id", "trace_id", "trace_state")

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        sampled: bool,
        flags: int,
        trace_state: str | None = None,
        trace_hex: str = "",
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.flags = flags
        """The W3C trace-flags byte as sent on (sampled bit, and the random bit of new traces)."""
        self.trace_state = trace_state
        self._trace_hex = trace_hex
        self._span_hex = ""

    def trace_hex(self) -> str:
        """The trace id as 32 lowercase hex digits, formatted once per trace in this process
        (the log line, the upstream's traceparent and a child span all use it)."""
        h = self._trace_hex
        if not h:
            h = self._trace_hex = "%032x" % self.trace_id  # noqa: UP031  faster than an f-string here
        return h

    def span_hex(self) -> str:
        """The span id as 16 lowercase hex digits, formatted once."""
        h = self._span_hex
        if not h:
            h = self._span_hex = "%016x" % self.span_id  # noqa: UP031
        return h

    def flags_hex(self) -> str:
        return _FLAGS_HEX[self.flags] if self.flags < 4 else "%02x" % self.flags  # noqa: UP031


class Span:
    """A span being recorded (sampled); ``end()`` hands it to the exporter."""

    __slots__ = (
        "_exporter",
        "attributes",
        "context",
        "end_ns",
        "kind",
        "name",
        "parent_id",
        "start_ns",
        "status",
    )

    def __init__(
        self,
        exporter: Callable[[Span], None],
        context: SpanContext,
        parent_id: int,
        name: str,
        kind: int,
        start_ns: int,
    ) -> None:
        self._exporter = exporter
        self.context = context
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = 0
        self.attributes: dict[str, str | int | float | bool] = {}
        self.status = STATUS_UNSET

    def is_recording(self) -> bool:
        return True

    def get_span_context(self) -> SpanContext:
        return self.context

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: dict[str, str | int | float | bool]) -> None:
        self.attributes.update(attributes)

    def set_error(self) -> None:
        self.status = STATUS_ERROR

    def end(self, end_ns: int | None = None) -> None:
        if self.end_ns == 0:
            self.end_ns = end_ns or time.time_ns()
            self._exporter(self)


class NonRecordingSpan:
    """An unsampled request's span: ids for the log and the upstream, nothing recorded."""

    __slots__ = ("context",)

    def __init__(self, context: SpanContext) -> None:
        self.context = context

    def is_recording(self) -> bool:
        return False

    def get_span_context(self) -> SpanContext:
        return self.context

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        return

    def set_attributes(self, attributes: dict[str, str | int | float | bool]) -> None:
        return

    def set_error(self) -> None:
        return

    def end(self, end_ns: int | None = None) -> None:
        return


AnySpan = Span | NonRecordingSpan
