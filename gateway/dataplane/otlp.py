"""OTLP protobuf, by hand: spans to an ``ExportTraceServiceRequest``.

Encoded here field by field rather than with the official ``opentelemetry-proto`` classes,
whose message building was a large part of a span's cost; the tests decode the output with
those classes (tests/gateway/test_tracing.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Final

from gateway.dataplane.spans import TRACE_ID_LOW, Span


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
        body = [_IDS(0x0A10, trace_id >> 64, trace_id & TRACE_ID_LOW, 0x1208, ctx.span_id)]
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
