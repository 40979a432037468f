"""W3C trace context on the wire: the caller's ``traceparent`` and ``tracestate`` read, and
the ``traceparent`` sent upstream written."""

from __future__ import annotations

from gateway.dataplane.spans import SpanContext


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
