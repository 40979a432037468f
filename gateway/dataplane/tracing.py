"""Spans for every proxied request, exported as OTLP/HTTP protobuf.

This is a small tracer of its own rather than the OpenTelemetry SDK, because
the SDK's per-span Python work (span objects, attribute validation, message
building in the exporter) was the largest cost of a proxied request. It keeps
what the gateway needs of OpenTelemetry's model and wire format:

- W3C trace context in and out (``traceparent``, ``tracestate`` passed on);
- the SDK's ``ParentBased(TraceIdRatioBased(ratio))`` sampling decision, on the
  same low 64 bits of the trace id, so a caller's decision is always followed;
- SERVER and CLIENT spans with attributes, status, and parent links;
- OTLP ``ExportTraceServiceRequest`` protobuf, encoded here field by field
  (the encoding is checked against the official ``opentelemetry-proto`` classes
  in the tests), POSTed to ``{endpoint}/v1/traces``.

Unsampled requests get a non-recording span: two ids and nothing else.

Spans leave through a bounded queue, encoded and sent from the event loop in
small steps (``LoopExporter``). When the queue is full, or the collector is
down and an export fails, the spans are dropped and counted
(``vitalgate_telemetry_dropped_total{signal="span"}``); the proxy never waits
for a collector.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import struct
import time
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final
from urllib.parse import urlsplit

from gateway.dataplane.errors import GatewayError, UpstreamReset
from gateway.dataplane.settings import Timeouts, TraceSettings, UpstreamSettings
from gateway.dataplane.upstream import Upstream

INTERNAL: Final = 1  # OTLP Span.SpanKind
SERVER: Final = 2
CLIENT: Final = 3
STATUS_UNSET: Final = 0
STATUS_ERROR: Final = 2
_TRACE_ID_LOW: Final = (1 << 64) - 1
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
        self._bound = round(sample_ratio * (_TRACE_ID_LOW + 1))

    def start_server(self, name: str, parent: SpanContext | None, start_ns: int) -> AnySpan:
        getrandbits = self._rand.getrandbits
        span_id = getrandbits(64) or 1
        if parent is None:
            trace_id = getrandbits(128) or 1
            sampled = self._record is not None and (trace_id & _TRACE_ID_LOW) < self._bound
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


# -- OTLP protobuf, by hand ------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (one-byte tag and a short length: the common case, inline)."""
    n = len(payload)
    if field < 16:
        if n < 0x80:
            return bytes((field << 3 | 2, n)) + payload
        if n < 0x4000:
            return bytes((field << 3 | 2, n & 0x7F | 0x80, n >> 7)) + payload
    return _varint(field << 3 | 2) + _varint(n) + payload


def _any_value(value: str | int | float | bool) -> bytes:
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    return _ld(1, str(value).encode("utf-8", "replace"))


def _key_value(key: str, value: str | int | float | bool) -> bytes:
    return _ld(1, key.encode()) + _ld(2, _any_value(value))


# Span fields 1 (trace_id, 16 bytes) and 2 (span_id, 8 bytes), tags and lengths included.
_IDS: Final = struct.Struct(">HQQHQ").pack
_PARENT: Final = struct.Struct(">HQ").pack  # field 4, parent_span_id
# Fields 6 (kind, varint), 7 and 8 (start and end, fixed64).
_KIND_TIMES: Final = struct.Struct("<BBBQBQ").pack


class OtlpEncoder:
    """Spans to an ``ExportTraceServiceRequest``; attribute pairs seen before are reused."""

    def __init__(self, resource: dict[str, str], scope: str, scope_version: str) -> None:
        self._resource = _ld(1, b"".join(_ld(1, _key_value(k, v)) for k, v in resource.items()))
        self._scope = _ld(1, _ld(1, scope.encode()) + _ld(2, scope_version.encode()))
        self._attr_cache: dict[tuple[str, Any], bytes] = {}
        self._name_cache: dict[str, bytes] = {}

    def _attributes(self, attributes: dict[str, str | int | float | bool]) -> bytes:
        cache = self._attr_cache
        parts = []
        for item in attributes.items():
            enc = cache.get(item)
            if enc is None:
                enc = _ld(9, _key_value(*item))
                # (bools hash like 0 and 1, so they are not cached)
                if len(cache) < 20_000 and not isinstance(item[1], bool):
                    cache[item] = enc
            parts.append(enc)
        return b"".join(parts)

    def span(self, s: Span) -> bytes:
        ctx = s.context
        name = self._name_cache.get(s.name)
        if name is None:
            name = _ld(5, s.name.encode())
            if len(self._name_cache) < 10_000:
                self._name_cache[s.name] = name
        trace_id = ctx.trace_id
        body = [_IDS(0x0A10, trace_id >> 64, trace_id & _TRACE_ID_LOW, 0x1208, ctx.span_id)]
        if ctx.trace_state:
            body.append(_ld(3, ctx.trace_state.encode()))
        if s.parent_id:
            body.append(_PARENT(0x2208, s.parent_id))
        body.append(name)
        body.append(_KIND_TIMES(0x30, s.kind, 0x39, s.start_ns, 0x41, s.end_ns))
        body.append(self._attributes(s.attributes))
        if s.status:
            body.append(b"\x7a\x02\x18" + bytes((s.status,)))
        return _ld(2, b"".join(body))

    def spans(self, spans: Iterable[Span]) -> bytes:
        """Encoded spans, to be concatenated and wrapped by ``wrap``."""
        return b"".join(self.span(s) for s in spans)

    def wrap(self, encoded_spans: bytes) -> bytes:
        """An ``ExportTraceServiceRequest`` around spans encoded by ``spans``."""
        return _ld(1, self._resource + _ld(2, self._scope + encoded_spans))

    def request(self, spans: Iterable[Span]) -> bytes:
        return self.wrap(self.spans(spans))


# -- export ----------------------------------------------------------------------------------------


class _OneShot:
    """A request body already in memory, as the upstream client reads bodies."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    async def readany(self) -> bytes:
        data, self._data = self._data, None
        return data or b""


class LoopExporter:
    """Encodes spans as they end; POSTs them in batches from the event loop.

    No export thread: a thread encoding a batch holds the GIL for milliseconds,
    and the event loop waits for it (that showed as p99 latency). A span is
    encoded when it ends (about 7 us) and waits as bytes; the loop wakes every
    ``interval_s`` and POSTs batches of up to ``batch_size`` spans with the
    gateway's own upstream client, one at a time, never waited on by a request.
    """

    def __init__(
        self,
        encoder: OtlpEncoder,
        endpoint: str,
        timeout_s: float,
        queue_size: int,
        on_drop: Callable[[int], None],
        batch_size: int = 512,
        interval_s: float = 0.1,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._encoder = encoder
        self._on_failure = on_failure
        parts = urlsplit(endpoint)
        self._path = parts.path.rstrip("/") + "/v1/traces"
        origin = f"{parts.scheme}://{parts.netloc}"
        self._client = Upstream(
            "otlp",
            # Waiting longer than the export timeout for one of its two connections is no use.
            UpstreamSettings(origin, Timeouts(timeout_s, None, timeout_s, timeout_s), None, 2, "upstream"),
            None,
        )
        # Spans are encoded when they end and wait as bytes: no span object outlives its
        # request, so none is left for the garbage collector to walk (its pauses were the
        # gateway's largest latency outliers).
        self._spans: collections.deque[bytes] = collections.deque()
        self._queue_size = queue_size
        self._on_drop = on_drop
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def on_end(self, span: Span) -> None:
        if len(self._spans) >= self._queue_size:
            self._on_drop(1)
            return
        try:
            encoded = self._encoder.span(span)
        except Exception:  # an encoding bug loses this span, counted, never the request
            self._on_drop(1)
            return
        self._spans.append(encoded)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.drain()

    async def drain(self) -> None:
        """Export everything ended so far."""
        spans = self._spans
        while spans:
            n = min(len(spans), self._batch_size)
            body = self._encoder.wrap(b"".join([spans.popleft() for _ in range(n)]))
            failure = await self._post(body)
            if failure is not None:
                self._on_drop(n)
                if self._on_failure is not None:
                    self._on_failure(failure)

    @property
    def depth(self) -> int:
        """Spans ended and not yet exported."""
        return len(self._spans)

    async def _post(self, body: bytes) -> str | None:
        """None once the collector took the batch, else why not (a bounded reason: the error
        type, or the status class the collector answered)."""
        headers = [("Content-Type", "application/x-protobuf"), ("Content-Length", str(len(body)))]
        for attempt in (0, 1):
            try:
                resp = await self._client.send("POST", self._path, headers, _OneShot(body))
                try:
                    while await resp.read():
                        pass
                finally:
                    resp.release()
                return None if 200 <= resp.status < 300 else f"http_{resp.status // 100}xx"
            except UpstreamReset as exc:
                # A kept-alive connection the collector had closed: once more, on a new one.
                if attempt or not getattr(exc, "before_response", False):
                    return exc.error_type
            except GatewayError as failed:  # (its own name: mypyc types a name once)
                return failed.error_type
            except OSError:
                return "os_error"
        return "upstream_reset"

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await asyncio.wait_for(self.drain(), timeout_s)
        except TimeoutError:
            # The collector did not take the rest in time: what is still queued is lost at exit,
            # so it is counted as dropped (the batch in flight was counted by drain()).
            self._on_drop(len(self._spans))
            self._spans.clear()
        await self._client.close()


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


def parse_traceparent(value: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The caller's span context from a W3C ``traceparent`` header, or None when absent or invalid."""
    if not value or len(value) < 55:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or parts[0] == "ff" or len(parts[0]) != 2:
        return None
    version_, trace_hex, span_hex, flags_hex = parts[0], parts[1], parts[2], parts[3]
    if (
        len(trace_hex) != 32
        or len(span_hex) != 16
        or len(flags_hex) != 2
        or (version_ == "00" and len(parts) != 4)
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
        state = _valid_tracestate(tracestate)
    # Pass on the flags this version defines (sampled, random), nothing unknown.
    return SpanContext(trace_id, span_id, bool(flags & 1), flags & 0x03, state)


def _valid_tracestate(value: str) -> str | None:
    """The header as received when it is well-formed (at most 32 members), else None."""
    members = [m.strip() for m in value.split(",") if m.strip()]
    if not members or len(members) > 32 or len(value) > 512:
        return None
    for m in members:
        key, eq, val = m.partition("=")
        if not eq or not key or not val or " " in key or len(val) > 256:
            return None
    return ",".join(members)


def format_traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_hex()}-{ctx.span_hex()}-{ctx.flags_hex()}"
