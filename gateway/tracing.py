"""OpenTelemetry spans for every proxied request, exported over OTLP/HTTP protobuf.

Spans leave through a bounded queue and one export thread. When the queue is
full, or the collector is down and an export fails, the spans are dropped and
counted (``vitalgate_telemetry_dropped_total{signal="span"}``); the proxy never
waits for a collector.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    Tracer,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from gateway.config import TracesConfig

_STOP = object()


class BoundedExportProcessor(SpanProcessor):
    """Queue ended spans; export them in batches from one thread; count what is lost."""

    def __init__(
        self,
        exporter: SpanExporter,
        queue_size: int,
        on_drop: Callable[[int], None],
        batch_size: int = 512,
        interval_s: float = 0.5,
    ) -> None:
        self._exporter = exporter
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._on_drop = on_drop
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._flush_requests: queue.Queue[threading.Event] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="vitalgate-span-export", daemon=True)
        self._thread.start()

    def on_start(self, span: object, parent_context: Context | None = None) -> None:
        return

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._queue.put_nowait(span)
        except queue.Full:
            self._on_drop(1)

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        if not batch:
            return
        try:
            result = self._exporter.export(batch)
        except Exception:  # an exporter bug must not kill the export thread
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._on_drop(len(batch))

    def _run(self) -> None:
        batch: list[ReadableSpan] = []
        deadline = time.monotonic() + self._interval_s
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._export(batch)
                return
            if isinstance(item, ReadableSpan):
                batch.append(item)
            flush_waiters = []
            while not self._flush_requests.empty():
                flush_waiters.append(self._flush_requests.get_nowait())
            if flush_waiters:
                # Everything queued before the flush request goes out now.
                while True:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        self._export(batch)
                        for w in flush_waiters:
                            w.set()
                        return
                    batch.append(more)  # type: ignore[arg-type]
            if flush_waiters or len(batch) >= self._batch_size or time.monotonic() >= deadline:
                self._export(batch)
                batch = []
                deadline = time.monotonic() + self._interval_s
                for w in flush_waiters:
                    w.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if not self._thread.is_alive():
            return True
        done = threading.Event()
        self._flush_requests.put(done)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wake the thread
        return done.wait(timeout_millis / 1000)

    def shutdown(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(30)
        self._exporter.shutdown()


class Tracing:
    """The tracer the proxy uses, and the provider that owns export."""

    def __init__(self, cfg: TracesConfig, on_drop: Callable[[int], None]) -> None:
        resource = Resource.create({"service.name": cfg.service_name})
        self.enabled = cfg.otlp_endpoint is not None
        if self.enabled:
            sampler = ParentBased(TraceIdRatioBased(cfg.sample_ratio))
        else:
            # No collector: new traces are not recorded, but ids still go to the log and
            # upstream, and a caller's sampling decision is passed on unchanged.
            sampler = ParentBased(ALWAYS_OFF)
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        if cfg.otlp_endpoint is not None:
            exporter = OTLPSpanExporter(endpoint=f"{cfg.otlp_endpoint}/v1/traces", timeout=cfg.export_timeout)
            self.provider.add_span_processor(BoundedExportProcessor(exporter, cfg.queue_size, on_drop))
        self.tracer: Tracer = self.provider.get_tracer("vitalgate.gateway")

    def shutdown(self) -> None:
        self.provider.force_flush()
        self.provider.shutdown()


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Context | None:
    """A parent context from a W3C ``traceparent`` header, or None when absent or invalid."""
    if not value or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or parts[0] == "ff" or len(parts[0]) != 2:
        return None
    version, trace_hex, span_hex, flags_hex = parts[0], parts[1], parts[2], parts[3]
    if (
        len(trace_hex) != 32
        or len(span_hex) != 16
        or len(flags_hex) != 2
        or (version == "00" and len(parts) != 4)
    ):
        return None
    try:
        trace_id = int(trace_hex, 16)
        span_id = int(span_hex, 16)
        flags = int(flags_hex, 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    state = None
    if tracestate:
        try:
            state = TraceState.from_header([tracestate])
        except ValueError:
            state = None
    sc = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1), trace_state=state)
    return set_span_in_context(NonRecordingSpan(sc))


def format_traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
