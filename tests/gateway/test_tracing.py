"""The tracer's wire format and sampling, checked against OpenTelemetry's own implementations."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from gateway.dataplane.otlp import OtlpEncoder
from gateway.dataplane.spans import CLIENT, SERVER, Span, SpanContext
from gateway.dataplane.tracecontext import format_traceparent, parse_traceparent
from gateway.dataplane.tracing import Tracer


def _span(kind: int, parent: int, attrs: dict[str, str | int | float | bool], error: bool) -> Span:
    ctx = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, 1, "vendor=a,other=b")
    s = Span(lambda _s: None, ctx, parent, "GET /fhir/Patient/{id}", kind, 1_700_000_000_123_456_789)
    s.set_attributes(attrs)
    if error:
        s.set_error()
    s.end(1_700_000_000_223_456_789)
    return s


def test_encoding_decodes_with_the_official_protobuf_classes() -> None:
    enc = OtlpEncoder(
        {"service.name": "vitalgate", "telemetry.sdk.language": "python"}, "vitalgate.gateway", "1.2"
    )
    attrs: dict[str, str | int | float | bool] = {
        "http.request.method": "GET",
        "server.port": 8080,
        "neg": -5,
        "big": 2**62,
        "ratio": 0.25,
        "flag": True,
        "off": False,
        "unicode": "Zürich ✓",
    }
    spans = [_span(SERVER, 0, attrs, False), _span(CLIENT, 0x1122334455667788, {"server.port": 1}, True)]
    # Twice: the second time the attribute encodings come from the cache.
    for _ in range(2):
        req = ExportTraceServiceRequest.FromString(enc.request(spans))
        (rs,) = req.resource_spans
        assert {kv.key: kv.value.string_value for kv in rs.resource.attributes} == {
            "service.name": "vitalgate",
            "telemetry.sdk.language": "python",
        }
        (ss,) = rs.scope_spans
        assert (ss.scope.name, ss.scope.version) == ("vitalgate.gateway", "1.2")
        server, client = ss.spans
        assert server.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
        assert server.span_id.hex() == "b7ad6b7169203331"
        assert server.parent_span_id == b"" and client.parent_span_id.hex() == "1122334455667788"
        assert server.trace_state == "vendor=a,other=b"
        assert server.name == "GET /fhir/Patient/{id}"
        assert (server.kind, client.kind) == (2, 3)  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT
        assert server.start_time_unix_nano == 1_700_000_000_123_456_789
        assert server.end_time_unix_nano == 1_700_000_000_223_456_789
        got = {}
        for kv in server.attributes:
            field = kv.value.WhichOneof("value")
            got[kv.key] = getattr(kv.value, field)
        assert got == attrs
        assert (server.status.code, client.status.code) == (0, 2)  # UNSET, ERROR


def test_sampling_decision_matches_the_sdk_ratio_sampler() -> None:
    for ratio in (0.0, 0.1, 0.5, 1.0):
        sdk = TraceIdRatioBased(ratio)
        tracer = Tracer(ratio, lambda _s: None)
        tracer._rand = random.Random(11)  # the same ids for both
        sampled = 0
        for _ in range(4000):
            span = tracer.start_server("GET", None, 0)
            ctx = span.get_span_context()
            want = sdk.should_sample(None, ctx.trace_id, "GET").decision == Decision.RECORD_AND_SAMPLE
            assert span.is_recording() == want == ctx.sampled
            sampled += want
        assert abs(sampled / 4000 - ratio) < 0.03


def test_parent_decision_is_followed_and_context_passed_on() -> None:
    tracer = Tracer(0.0, lambda _s: None)  # would sample no new trace
    parent = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k=v")
    assert parent is not None and parent.sampled
    span = tracer.start_server("GET", parent, 0)
    assert span.is_recording()
    assert isinstance(span, Span) and span.parent_id == 0xB7AD6B7169203331
    out = format_traceparent(span.get_span_context())
    assert out.startswith("00-0af7651916cd43dd8448eb211c80319c-") and out.endswith("-01")
    assert span.get_span_context().trace_state == "k=v"
    # An unsampled caller: not recorded, flag passed on as 00.
    unsampled = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
    span2 = Tracer(1.0, lambda _s: None).start_server("GET", unsampled, 0)
    assert not span2.is_recording() and format_traceparent(span2.get_span_context()).endswith("-00")
    # No collector: nothing is recorded even when the caller sampled, but the flag goes on.
    span3 = Tracer(1.0, None).start_server("GET", parent, 0)
    assert not span3.is_recording() and format_traceparent(span3.get_span_context()).endswith("-01")
    for bad in (
        "",
        "00-0-0-0",
        "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
    ):
        assert parse_traceparent(bad) is None
