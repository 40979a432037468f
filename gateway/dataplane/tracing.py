"""The tracer every proxied request starts its spans with, and tracing as a gateway runs it:
the tracer wired to the encoder and the exporter.

This is a small tracer of its own rather than the OpenTelemetry SDK, because the SDK's
per-span Python work (span objects, attribute validation, message building in the exporter)
was the largest cost of a proxied request. It keeps what the gateway needs of OpenTelemetry's
model and wire format, one job a module:

- ``spans``: span contexts, recording and non-recording spans;
- ``tracecontext``: W3C trace context in and out (``traceparent``, ``tracestate`` passed on);
- here: the SDK's ``ParentBased(TraceIdRatioBased(ratio))`` sampling decision, on the same
  low 64 bits of the trace id, so a caller's decision is always followed;
- ``otlp``: the OTLP ``ExportTraceServiceRequest`` protobuf, encoded field by field (checked
  against the official ``opentelemetry-proto`` classes in the tests);
- ``spanexport``: the bounded queue and the POSTs to ``{endpoint}/v1/traces``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from gateway.dataplane.otlp import OtlpEncoder
from gateway.dataplane.settings import TraceSettings
from gateway.dataplane.spanexport import LoopExporter
from gateway.dataplane.spans import (
    CLIENT,
    INTERNAL,
    SERVER,
    TRACE_ID_LOW,
    AnySpan,
    NonRecordingSpan,
    Span,
    SpanContext,
)


class Tracer:
    """Starts spans with the parent-based ratio sampler."""

    def __init__(self, sample_ratio: float, record: Callable[[Span], None] | None) -> None:
        self._bound = 0
        self.set_sample_ratio(sample_ratio)
        self._record = record
        self._rand = random.Random()

    def set_sample_ratio(self, sample_ratio: float) -> None:
        """The ratio new traces are sampled at (again after a reload)."""
        # TraceIdRatioBased's bound, compared with the low 64 bits of the trace id.
        self._bound = round(sample_ratio * (TRACE_ID_LOW + 1))

    def start_server(self, name: str, parent: SpanContext | None, start_ns: int) -> AnySpan:
        getrandbits = self._rand.getrandbits
        span_id = getrandbits(64) or 1
        if parent is None:
            trace_id = getrandbits(128) or 1
            sampled = self._record is not None and (trace_id & TRACE_ID_LOW) < self._bound
            ctx = SpanContext(trace_id, span_id, sampled, 0x03 if sampled else 0x02)
            parent_id = 0
        else:
            sampled = parent.sampled
            ctx = SpanContext(
                parent.trace_id, span_id, sampled, parent.flags, parent.trace_state, parent._trace_hex
            )
            parent_id = parent.span_id
        if sampled and self._record is not None:
            return Span(self._record, ctx, parent_id, name, SERVER, start_ns)
        return NonRecordingSpan(ctx)

    def start_client(self, name: str, parent: Span, attributes: dict[str, str | int | float | bool]) -> Span:
        pctx = parent.context
        span_id = self._rand.getrandbits(64) or 1
        ctx = SpanContext(pctx.trace_id, span_id, True, pctx.flags, pctx.trace_state, pctx.trace_hex())
        assert self._record is not None
        span = Span(self._record, ctx, pctx.span_id, name, CLIENT, time.time_ns())
        span.attributes = attributes
        return span


def _version() -> str:
    try:
        return version("vitalgate")
    except PackageNotFoundError:
        return "0"


class Tracing:
    """The tracer the proxy uses, and the processor that owns export."""

    def __init__(
        self,
        cfg: TraceSettings,
        on_drop: Callable[[int], None],
        instance: str = "",
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.enabled = cfg.otlp_endpoint is not None
        self.processor: LoopExporter | None = None
        if cfg.otlp_endpoint is not None:
            sdk_version = _version()
            encoder = OtlpEncoder(
                {
                    "service.name": cfg.service_name,
                    **({"service.instance.id": instance} if instance else {}),
                    "telemetry.sdk.language": "python",
                    "telemetry.sdk.name": "vitalgate",
                    "telemetry.sdk.version": sdk_version,
                },
                "vitalgate.gateway",
                sdk_version,
            )
            self.processor = LoopExporter(
                encoder, cfg.otlp_endpoint, cfg.export_timeout, cfg.queue_size, on_drop, on_failure=on_failure
            )
        # No collector: new traces are not recorded, but ids still go to the log and the
        # upstream, and a caller's sampling decision is passed on unchanged.
        self.tracer = Tracer(cfg.sample_ratio, self.processor.on_end if self.processor else None)

    def event_span(self, name: str, attributes: dict[str, str | int | float | bool]) -> bool:
        """Export one INTERNAL span of its own trace, always sampled (an event of the gateway's,
        such as an audit checkpoint, rather than of a request). Thread-safe: the exporter's
        queue is a deque. False when no traces are exported."""
        if self.processor is None:
            return False
        rand = random.Random()
        ctx = SpanContext(rand.getrandbits(128) or 1, rand.getrandbits(64) or 1, True, 0x01)
        now = time.time_ns()
        span = Span(self.processor.on_end, ctx, 0, name, INTERNAL, now)
        span.attributes = attributes
        span.end(now)
        return True

    async def start(self) -> None:
        if self.processor is not None:
            await self.processor.start()

    async def shutdown(self) -> None:
        """Export what is left, then stop."""
        if self.processor is not None:
            await self.processor.shutdown()
