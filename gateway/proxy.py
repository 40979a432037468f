"""The request path: route, attribute, forward, stream back, record.

Per request the gateway resolves a route template and a facility (both
bounded), opens a SERVER span and a CLIENT child span, forwards the request
with its body streamed, streams the response back, and then records one
histogram observation, one access log line and the spans. Nothing here waits
on telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import parse_qsl

from gateway.accesslog import AccessLog
from gateway.errors import ClientGone, GatewayError, translate
from gateway.facility import FacilityResolver
from gateway.fhir import CONTROL_PARAMETERS
from gateway.httpserver import Request
from gateway.metrics import GatewayMetrics
from gateway.recorder import Recorder
from gateway.routes import Router
from gateway.tracing import AnySpan, Span, Tracing, format_traceparent, parse_traceparent
from gateway.upstream import Upstream, UpstreamResponse

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
        "Host",
    )
)
# Replaced by the gateway's own values, not copied from the client.
_NOT_COPIED = HOP_BY_HOP | {"traceparent", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
_STRIP_RESPONSE = frozenset(h for h in HOP_BY_HOP if h != "host") | {"content-length"}


_JSON = [("Content-Type", "application/json; charset=utf-8")]
_NO_ROUTE = b'{"error": "no route", "detail": "no configured route matches this path"}'


def redact_query(query_string: str) -> str:
    """Parameter names, never values, except control parameters such as ``_count``."""
    if not query_string:
        return ""
    out = []
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        base = name.split(":", 1)[0]
        out.append(
            f"{name}={value}" if base in CONTROL_PARAMETERS and len(value) <= 64 else f"{name}=REDACTED"
        )
    return "&".join(out)[:2048]


class Proxy:
    """The aiohttp handler for every proxied request."""

    def __init__(
        self,
        router: Router,
        facilities: FacilityResolver,
        upstreams: dict[str, Upstream],
        metrics: GatewayMetrics,
        access_log: AccessLog,
        tracing: Tracing,
        scheme: str,
        server_port: int,
        recorder: Recorder | None = None,
    ) -> None:
        self.router = router
        self.facilities = facilities
        self.upstreams = upstreams
        self.metrics = metrics
        self.access_log = access_log
        self.tracer = tracing.tracer
        self.scheme = scheme
        self.server_port = server_port
        self.recorder = recorder
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle(self, request: Request) -> None:
        started = time.time()
        t0 = time.perf_counter()
        self.in_flight += 1
        if self.in_flight == 1:
            self.idle.clear()
        raw = request.raw_path
        path, _, query = raw.partition("?")
        method = request.method if request.method in KNOWN_METHODS else "_OTHER"
        match = self.router.match(path)
        facility = self.facilities.resolve(request.headers, path)
        service = match.service if match else "none"
        route = match.route if match else ""
        headers_in = request.headers
        parent = parse_traceparent(headers_in.get_lower("traceparent"), headers_in.get_lower("tracestate"))
        span = self.tracer.start_server(f"{method} {route}" if route else method, parent, int(started * 1e9))
        if span.is_recording():  # an unsampled request builds no attributes at all
            attrs: dict[str, Any] = {
                "http.request.method": method,
                "url.scheme": self.scheme,
                "server.port": self.server_port,
                "facility": facility,
                "vitalgate.service": service,
                "network.protocol.version": request.version,
            }
            if route:
                attrs["http.route"] = route
            if query:
                attrs["url.query"] = redact_query(query)
            if method == "_OTHER":
                attrs["http.request.method_original"] = request.method[:16]
            span.set_attributes(attrs)
        active = self.metrics.active_child(facility, service)
        active.inc()
        status = 500
        error_type: str | None = None
        upstream_ms: float | None = None
        try:
            if match is None:
                status, error_type = 404, "no_route"
                with contextlib.suppress(ConnectionError):
                    await request.respond(404, _JSON, _NO_ROUTE)
                return
            status, error_type, upstream_ms = await self._forward(
                request, match.upstream, route, method, span
            )
        finally:
            active.dec()
            duration_s = time.perf_counter() - t0
            ctx = span.get_span_context()
            sampled = ctx.sampled
            child, key = self.metrics.request_child(facility, service, route, method, status)
            if self.recorder is not None:
                self.recorder.record(key, started, duration_s)
            if sampled and self.metrics.exemplar_due(key, t0):
                child.observe(duration_s, {"trace_id": ctx.trace_hex()})
            else:
                child.observe(duration_s)
            if span.is_recording():
                span.set_attribute("http.response.status_code", status)
                if error_type is not None:
                    span.set_attribute("error.type", error_type)
                if status >= 500:
                    span.set_error()
                span.end()
            log = self.access_log
            log.request(
                log.format(
                    started,
                    ctx.trace_hex(),
                    ctx.span_hex(),
                    ctx.flags_hex(),
                    facility,
                    service,
                    route or None,
                    method,
                    status,
                    duration_s * 1000,
                    upstream_ms,
                    error_type,
                )
            )
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    def _forward_headers(self, request: Request, traceparent: str) -> list[tuple[str, str]]:
        incoming = request.headers
        hop = _NOT_COPIED
        connection = incoming.get_lower("connection")
        if connection:
            hop = hop | {h.strip().lower() for h in connection.split(",")}
        raw, lower = incoming.raw, incoming.lower_names()
        # (an index loop: compiled, zip(..., strict=True) is a slow generic call)
        out = [raw[i] for i in range(len(raw)) if lower[i] not in hop]
        peer = request.remote or ""
        prior = incoming.get_lower("x-forwarded-for")
        out.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
        out.append(("X-Forwarded-Proto", incoming.get_lower("x-forwarded-proto") or self.scheme))
        host = incoming.get_lower("x-forwarded-host") or incoming.get_lower("host")
        if host:
            out.append(("X-Forwarded-Host", host))
        out.append(("traceparent", traceparent))
        return out

    async def _forward(
        self, request: Request, upstream_name: str, route: str, method: str, server_span: AnySpan
    ) -> tuple[int, str | None, float | None]:
        """Forward and answer; the status recorded, the error type, the upstream time in ms."""
        upstream = self.upstreams[upstream_name]
        if isinstance(server_span, Span):
            client_span: AnySpan = self.tracer.start_client(
                f"{method} {route}",
                server_span,
                {
                    "http.request.method": method,
                    "server.address": upstream.host,
                    "server.port": upstream.port,
                    "url.template": route,
                    "vitalgate.upstream": upstream_name,
                },
            )
        else:
            # Not sampled: no span to record, so the upstream's parent is the server span itself.
            client_span = server_span
        headers = self._forward_headers(request, format_traceparent(client_span.get_span_context()))
        body = request.content if request.can_read_body else None
        expect = body is not None and body.expect_continue
        u0 = time.perf_counter()
        upstream_status: int | None = None
        error: GatewayError | None = None
        try:
            upstream_response = await upstream.send(request.method, request.raw_path, headers, body, expect)
            try:
                upstream_status = upstream_status_ = upstream_response.status
                out, length = self._response_headers(upstream_response)
                reason = upstream_response.reason or None
                try:
                    if upstream_response.complete:
                        # The whole response is already here (the common case): one write.
                        await request.respond(
                            upstream_status_, out, upstream_response.read_all_buffered(), reason, length
                        )
                    else:
                        request.start(upstream_status_, out, length, reason)
                        while chunk := await upstream_response.read():
                            await request.write(chunk)
                        await request.write_eof()
                except ConnectionError as exc:
                    raise ClientGone("client went away") from exc
            finally:
                upstream_response.release()
        except GatewayError as exc:
            error = exc
        except (TimeoutError, ConnectionError) as exc:
            error = translate(exc)
        finally:
            upstream_ms = (time.perf_counter() - u0) * 1000
            if client_span is not server_span and client_span.is_recording():
                if upstream_status is not None:
                    client_span.set_attribute("http.response.status_code", upstream_status)
                if error is not None:
                    client_span.set_attribute("error.type", error.error_type)
                if error is not None or (upstream_status or 0) >= 400:
                    client_span.set_error()
                client_span.end()
        if error is None:
            assert upstream_status is not None
            return upstream_status, None, upstream_ms
        if request.prepared:
            # Headers already went out: the only honest signal left is to cut the connection.
            request.abort()
            status = error.status if isinstance(error, ClientGone) else 502
            return status, error.error_type, upstream_ms
        body_out = json.dumps({"error": error.error_type, "detail": str(error)}).encode()
        with contextlib.suppress(ConnectionError):
            await request.respond(error.status, _JSON, body_out)
        return error.status, error.error_type, upstream_ms

    @staticmethod
    def _response_headers(upstream_response: UpstreamResponse) -> tuple[list[tuple[str, str]], str | None]:
        """The upstream's headers to pass on, and its Content-Length (framing is the server's)."""
        raw, lower = upstream_response.headers, upstream_response.lower_names
        out = [raw[i] for i in range(len(raw)) if lower[i] not in _STRIP_RESPONSE]
        return out, upstream_response.content_length
