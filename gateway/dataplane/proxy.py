"""The request path: route, attribute, forward, stream back, record.

Per request the gateway resolves a route template and a facility (both
bounded), opens a SERVER span and a CLIENT child span, forwards the request
with its body streamed, streams the response back, and then hands one
``Outcome`` to each sink it was assembled with (``Outputs``). Nothing here
waits on telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from core.conventions import NO_SERVICE, OTHER_METHOD, PROBE_ROUTE_PREFIX
from gateway.dataplane.bundle import inspect, is_fhir_json, request_entries, status_class
from gateway.dataplane.errors import AuditUnavailable, ClientGone, GatewayError, UpstreamError, translate
from gateway.dataplane.facility import FacilityResolver
from gateway.dataplane.httpserver import Headers, Request
from gateway.dataplane.memscan import contains
from gateway.dataplane.metrics import Gauges, LabelBudget, ProxyCounters
from gateway.dataplane.outcome import AuditFacts, AuditGate, EntrySink, Outcome, RequestSink
from gateway.dataplane.query import redact_query
from gateway.dataplane.routes import Match, Router, normalize_path
from gateway.dataplane.spans import AnySpan, Span
from gateway.dataplane.spool import ResponseBuffer, Spool
from gateway.dataplane.tracecontext import format_traceparent, parse_traceparent
from gateway.dataplane.tracing import Tracer
from gateway.dataplane.upstream import HOP_BY_HOP, Upstream, UpstreamResponse

PROBE_HEADER: Final = "x-vitalgate-probe"
"""Marks the gateway's own probe requests (with the process's secret token; never forwarded)."""

KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
# Not copied from the client: hop-by-hop headers and Host (the upstream's Host is decided by
# its ``host:`` setting), and what the gateway replaces with its own values (forwarding headers
# are believed only from a trusted proxy, and then extended, not copied).
_NOT_COPIED: Final = HOP_BY_HOP | {
    "host",
    PROBE_HEADER,
    "traceparent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
}
# Response headers that carry URLs a client follows: rewritten from the upstream's base.
_URL_HEADERS: Final = frozenset({"location", "content-location", "link"})
_PROTOS: Final = frozenset({"http", "https"})
_HOP_CACHE_SIZE: Final = 256
_NAME_CACHE_SIZE: Final = 512


_JSON: Final = [("Content-Type", "application/json; charset=utf-8")]
_NO_ROUTE: Final = b'{"error": "no route", "detail": "no configured route matches this path"}'
_BAD_PATH: Final = (
    b'{"error": "invalid_path", "detail": "the path climbs above the root, or has a backslash or an'
    b' encoded / or \\\\"}'
)


def _end_client_span(span: AnySpan, upstream_status: int | None, error: GatewayError | None) -> None:
    if not span.is_recording():
        return
    if upstream_status is not None:
        span.set_attribute("http.response.status_code", upstream_status)
    if error is not None:
        span.set_attribute("error.type", error.error_type)
    if error is not None or (upstream_status or 0) >= 400:
        span.set_error()
    span.end()


async def _answer_error(request: Request, error: GatewayError) -> int:
    """The status recorded for a request the gateway failed, after telling the client."""
    if request.prepared:
        # Headers already went out: the only honest signal left is to cut the connection.
        request.abort()
        return 502 if isinstance(error, UpstreamError) else error.status
    body = json.dumps({"error": error.error_type, "detail": str(error)}).encode()
    with contextlib.suppress(ConnectionError):  # the client left: nothing more to tell it
        await request.respond(error.status, _JSON, body)
    return error.status


def _quoted(value: str) -> str:
    """An RFC 7239 quoted-string (a host with a port, an IPv6 address are not tokens)."""
    if '"' in value or "\\" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def forwarded_element(peer: str, host: str | None, proto: str) -> str:
    """This hop's ``Forwarded`` element (RFC 7239): ``for=...;host=...;proto=...``."""
    node = _quoted(f"[{peer}]") if ":" in peer else (peer or "unknown")
    return f"for={node};host={_quoted(host)};proto={proto}" if host else f"for={node};proto={proto}"


def rebase(value: str, old_base: str, new_base: str) -> str | None:
    """``value`` with the URL prefix ``old_base`` replaced by ``new_base``; None if not under it."""
    if not value.startswith(old_base):
        return None
    rest = value[len(old_base) :]
    if rest and rest[0] not in "/?#":
        return None
    return new_base + rest


def _rebase_header(name: str, value: str, old_base: str, new_base: str) -> str:
    if name.lower() == "link":  # <url>; rel="next", <url>; rel="prev"
        return value.replace("<" + old_base, "<" + new_base)
    return rebase(value.strip(), old_base, new_base) or value


def _forwarding_lines(xff: str, proto: str, host: str | None, port: str, forwarded: str) -> str:
    xfh = f"X-Forwarded-Host: {host}\r\n" if host else ""
    return (
        f"X-Forwarded-For: {xff}\r\nX-Forwarded-Proto: {proto}\r\n{xfh}"
        f"X-Forwarded-Port: {port}\r\nForwarded: {forwarded}\r\n"
    )


class _Hop:
    """What this hop adds for one (peer, host, scheme): the headers for a client that is not a
    trusted proxy, this hop's ``Forwarded`` element, and the origin the client sees
    (``https://ehr.example.org``), which the upstream's own URLs are rewritten to."""

    __slots__ = ("element", "external", "lines")

    def __init__(self, peer: str, host: str | None, proto: str, port: str, default_host: str) -> None:
        self.element = forwarded_element(peer, host, proto)
        self.external = f"{proto}://{host or default_host}"
        self.lines = _forwarding_lines(peer, proto, host, port, self.element)
        """The five headers (four without a Host) written out, for ``Upstream.send``."""


@dataclass(frozen=True)
class Outputs:
    """Where the proxy's observations go, chosen once by the composition root."""

    tracer: Tracer
    budget: LabelBudget
    """The request histogram's label sets (``Outcome.key``)."""
    active: Gauges
    counters: ProxyCounters
    sinks: tuple[RequestSink, ...]
    """Each finished request, in this order (the span sink first: its end time is closest)."""
    entry_sinks: tuple[EntrySink, ...]
    """The entries of each FHIR batch or transaction."""
    audit: bool = False
    """An audit trail is configured: requests on audited routes carry ``AuditFacts``."""
    audit_user_header: str = ""
    """The lower-case header an authenticating proxy names the user in ("" for none)."""
    audit_gate: AuditGate | None = None
    """``durability: strict``: each audited response waits until its record is on disk."""
    probe_token: str = ""
    """A request whose ``X-Vitalgate-Probe`` header carries this is the gateway's own probe."""
    spool: Spool | None = None
    """Response buffering (``limits.max_temp_file_size``); None streams at the client's pace."""


class Proxy:
    """The handler of every request on the proxy listener (``HttpServer``): route, attribute,
    forward, and record it."""

    def __init__(
        self,
        router: Router,
        facilities: FacilityResolver,
        upstreams: dict[str, Upstream],
        outputs: Outputs,
        scheme: str,
        server_port: int,
    ) -> None:
        self.router = router
        self.facilities = facilities
        self.upstreams = upstreams
        self.tracer = outputs.tracer
        self._budget = outputs.budget
        self._active = outputs.active
        self.counters = outputs.counters
        self._sinks = outputs.sinks
        self._entry_sinks = outputs.entry_sinks
        self._audit = outputs.audit
        self._audit_user_header = outputs.audit_user_header
        self._audit_gate = outputs.audit_gate
        self._probe_token = outputs.probe_token.encode()
        self._spool = outputs.spool
        self.scheme = scheme
        self.server_port = server_port
        self._port_str = str(server_port)
        self.default_host = f"127.0.0.1:{server_port}"
        """The gateway's own authority, for a client that sent no Host (HTTP/1.0)."""
        self._hops: dict[tuple[str, str | None, str], _Hop] = {}
        self._copyable: dict[str, bool] = {}
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def bound(self, host: str, port: int) -> None:
        """The listener is up on ``port`` (a configured port 0 is known only now)."""
        self.server_port = port
        self._port_str = str(port)
        self.default_host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._hops.clear()

    async def handle(self, request: Request) -> None:
        started = time.time()
        t0 = time.perf_counter()
        self.in_flight += 1
        if self.in_flight == 1:
            self.idle.clear()
        raw = request.raw_path
        if "#" in raw:  # a fragment is the client's own: never forwarded, never recorded
            raw = request.raw_path = raw.partition("#")[0]
        path, _, query = raw.partition("?")
        refused = False
        if "/." in path or "%" in path or "\\" in path:
            normal = normalize_path(path)
            if normal is None:
                refused = True
            elif normal != path:
                path = normal
                request.raw_path = f"{path}?{query}" if query else path
        method = request.method if request.method in KNOWN_METHODS else OTHER_METHOD
        match = self.router.match(path) if not refused else None
        facility = self.facilities.resolve(request.headers, path)
        service = match.service if match else NO_SERVICE
        route = match.route if match else ""
        headers_in = request.headers
        mark = headers_in.get_lower(PROBE_HEADER)
        # Compared in constant time: a client must not learn the token by timing its guesses.
        probe = (
            mark is not None
            and bool(self._probe_token)
            and hmac.compare_digest(mark.encode(), self._probe_token)
        )
        # tracestate is passed on to the upstream as sent, but never onto the gateway's spans: its
        # values are the client's free text.
        parent = parse_traceparent(headers_in.get_lower("traceparent"))
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
                attrs["url.query"] = redact_query(query, match.query_names if match else frozenset())
            if method == OTHER_METHOD:
                attrs["http.request.method_original"] = request.method[:16]
            if probe:
                attrs["vitalgate.probe"] = True
            span.set_attributes(attrs)
        facts = self._audit_facts(request, match, path, query) if self._audit and match is not None else None
        if probe and facts is not None:
            facts.probe = True
        active = self._active.child(facility, service)
        active.inc()
        status = 500
        error_type: str | None = None
        upstream_ms: float | None = None
        try:
            if refused:
                # The client's fault, answered before any upstream sees it (nginx answers 400 too).
                status, error_type = 400, "invalid_path"
                with contextlib.suppress(ConnectionError):
                    await request.respond(400, _JSON, _BAD_PATH)
                return
            if match is None:
                status, error_type = 404, "no_route"
                with contextlib.suppress(ConnectionError):
                    await request.respond(404, _JSON, _NO_ROUTE)
                return
            status, error_type, upstream_ms = await self._forward(
                request, match, facility, method, span, facts
            )
        except asyncio.CancelledError:
            # Still running at limits.shutdown_timeout: cut by our own shutdown, so the
            # gateway's fault (503, counted bad), and recorded like any other request.
            status, error_type = 503, "shutdown"
            raise
        except Exception:
            # A defect of ours (the server logs its traceback): counted bad, never unlabelled.
            status, error_type = 500, "gateway_error"
            raise
        finally:
            active.dec()
            if probe:  # its own series everywhere (the span keeps the route, marked as a probe)
                route = PROBE_ROUTE_PREFIX + route
            self._record(
                started, t0, span, facility, service, route, method, status, error_type, upstream_ms, facts
            )
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    def _record(
        self,
        started: float,
        t0: float,
        span: AnySpan,
        facility: str,
        service: str,
        route: str,
        method: str,
        status: int,
        error_type: str | None,
        upstream_ms: float | None,
        facts: AuditFacts | None = None,
    ) -> None:
        """A finished request, as one outcome, into every sink."""
        duration_s = time.perf_counter() - t0
        key = self._budget.key(facility, service, route, method, status)
        outcome = Outcome(
            started, duration_s, facility, service, route, method, status, error_type, upstream_ms, key, span
        )
        outcome.audit = facts
        for sink in self._sinks:
            sink.request(outcome)

    def rejected(self, status: int, error_type: str, headers: Headers, target: str, peer: str | None) -> None:
        """A request the HTTP parser refused (400, 408, 431, 501): never handled, still seen,
        so an attack shows in the log and the metrics (service "none", method "_OTHER")."""
        started = time.time()
        t0 = time.perf_counter()
        facility = self.facilities.resolve(headers, target.partition("?")[0])
        span = self.tracer.start_server(OTHER_METHOD, None, int(started * 1e9))
        if span.is_recording():
            span.set_attributes(
                {"url.scheme": self.scheme, "server.port": self.server_port, "facility": facility}
            )
        self._record(started, t0, span, facility, NO_SERVICE, "", OTHER_METHOD, status, error_type, None)

    def _forward_headers(
        self, request: Request, traceparent: str
    ) -> tuple[list[tuple[str, str]], str, str | None, str]:
        """The headers sent upstream (the client's, then this hop's forwarding headers written
        out), the client's Host, and the origin the client sees (``https://ehr.example.org``):
        what the upstream's own URLs are rewritten to."""
        incoming = request.headers
        connection = incoming.get_lower("connection")
        listed = {h.strip().lower() for h in connection.split(",")} if connection else None
        copyable = self._copyable
        out = []
        for header in incoming.raw:
            # Decided by the name as the client spelled it: clients repeat their spellings, so
            # the common case lowercases nothing.
            copy = copyable.get(header[0])
            if copy is None:
                copy = self._learn_name(header[0])
            if copy and (listed is None or header[0].lower() not in listed):
                out.append(header)
        peer = request.remote or ""
        host = incoming.get_lower("host")
        out.append(("traceparent", traceparent))
        if not request.trusted:
            # The common case: what this hop adds depends on the peer and Host alone (and the
            # listener's scheme and port), so its lines are written once per peer and Host.
            hop = self._hop(peer, host, self.scheme)
            return out, hop.lines, host, hop.external
        # A proxy in front that we trust: it saw the client; extend what it says.
        prior_for = incoming.get_lower("x-forwarded-for")
        prior_fwd = incoming.get_lower("forwarded")
        said = (incoming.get_lower("x-forwarded-proto") or "").strip().lower()
        proto = said if said in _PROTOS else self.scheme
        xfh = incoming.get_lower("x-forwarded-host") or host
        port = incoming.get_lower("x-forwarded-port") or self._port_str
        hop = self._hop(peer, xfh, proto)
        lines = _forwarding_lines(
            f"{prior_for}, {peer}" if prior_for else peer,
            proto,
            xfh,
            port,
            f"{prior_fwd}, {hop.element}" if prior_fwd else hop.element,
        )
        return out, lines, host, hop.external

    def _learn_name(self, name: str) -> bool:
        """Is a request header name (as spelled) passed on? Not a hop-by-hop name, nor one with
        "_", dropped as nginx does (some servers read Content_Length or X_Forwarded_For as their
        dashed twins). Remembered for the few hundred spellings clients send (bounded)."""
        copy = name.lower() not in _NOT_COPIED and "_" not in name
        if len(self._copyable) < _NAME_CACHE_SIZE:
            self._copyable[name] = copy
        return copy

    def _hop(self, peer: str, host: str | None, proto: str) -> _Hop:
        """This hop's forwarding headers and the client's origin, kept for the few (peer, host,
        scheme) a gateway behind a load balancer sees (bounded)."""
        key = (peer, host, proto)
        hop = self._hops.get(key)
        if hop is None:
            if len(self._hops) >= _HOP_CACHE_SIZE:
                self._hops.clear()
            hop = self._hops[key] = _Hop(peer, host, proto, self._port_str, self.default_host)
        return hop

    def _audit_facts(self, request: Request, match: Match, path: str, query: str) -> AuditFacts | None:
        """What the audit trail records of a request on an audited route (None elsewhere)."""
        if not match.audit:
            return None
        h = request.headers
        return AuditFacts(
            request.method,
            path,
            query,
            match.prefix,
            match.upstream,
            request.remote,
            h.get_lower("x-forwarded-for") if request.trusted else None,
            h.get_lower("authorization"),
            h.get_lower(self._audit_user_header) if self._audit_user_header else None,
            h.get_lower("x-request-id"),
        )

    async def _forward(
        self,
        request: Request,
        match: Match,
        facility: str,
        method: str,
        server_span: AnySpan,
        facts: AuditFacts | None,
    ) -> tuple[int, str | None, float | None]:
        """Forward and answer; the status recorded, the error type, the upstream time in ms."""
        upstream = self.upstreams[match.upstream]
        client_span = self._client_span(server_span, method, match, upstream)
        headers, forwarding, host, external = self._forward_headers(
            request, format_traceparent(client_span.get_span_context())
        )
        body: Any = request.content if request.can_read_body else None
        expect = body is not None and body.expect_continue
        tee: _Tee | None = None
        if body is not None and match.inspect_max and method == "POST" and match.is_base:
            # A batch or transaction: keep (a bounded copy of) its entries' methods and URLs.
            body = tee = _Tee(body, match.inspect_max)
        u0 = time.perf_counter()
        upstream_status: int | None = None
        error: GatewayError | None = None
        try:
            upstream_response = await upstream.send(
                request.method, request.raw_path, headers, body, expect, host, True, forwarding
            )
            try:
                upstream_status = status = upstream_response.status
                out, length, ctype, urls = self._response_headers(upstream_response, upstream, external)
                if urls and self._header_leak(out, upstream):
                    self.counters.url_leak(facility, match.service, "header")
                reason = upstream_response.reason or None
                inspect_max = match.inspect_max if is_fhir_json(ctype) else 0
                try:
                    if inspect_max and not upstream_response.complete:
                        # Small enough to inspect: gather it (bounded), then answer it whole.
                        await upstream_response.gather(inspect_max)
                    if upstream_response.complete:
                        # The whole response is already here (the common case): one write.
                        data = self._whole(
                            upstream_response,
                            inspect_max,
                            match,
                            facility,
                            upstream,
                            external,
                            tee,
                            server_span,
                        )
                        if (
                            facts is not None
                            and inspect_max
                            and len(data) <= inspect_max
                            and match.route[-1:] != "}"
                        ):
                            # A search's results (not a read of one resource: its template ends
                            # in an id), for the audit sink to find the patients in.
                            facts.body = data
                        await self._held(facts, facility, match, method, status, None, server_span)
                        await request.respond(status, out, data, reason, length)
                    else:
                        if inspect_max:
                            self.counters.uninspected(match.service, "too_large")
                        await self._held(facts, facility, match, method, status, None, server_span)
                        request.start(status, out, length, reason)
                        await self._stream(request, upstream_response, match, facility, upstream)
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
            if client_span is not server_span:
                _end_client_span(client_span, upstream_status, error)
        if facts is not None and tee is not None and not tee.overflow:
            facts.request_body = tee.data
        if error is None:
            assert upstream_status is not None
            return upstream_status, None, upstream_ms
        if facts is not None and not facts.committed and not isinstance(error, AuditUnavailable):
            # An error answer discloses nothing: when its record cannot be made durable it is
            # still served, and recorded (as batched) once the disk takes it.
            with contextlib.suppress(AuditUnavailable):
                await self._held(facts, facility, match, method, error.status, error.error_type, server_span)
        return await _answer_error(request, error), error.error_type, upstream_ms

    async def _held(
        self,
        facts: AuditFacts | None,
        facility: str,
        match: Match,
        method: str,
        status: int,
        error_type: str | None,
        span: AnySpan,
    ) -> None:
        """Under ``durability: strict``, the request's audit record is on disk before any of its
        response is; raises ``AuditUnavailable`` (503, not served) when it cannot be."""
        gate = self._audit_gate
        if gate is None or facts is None:
            return
        if not await gate.hold(facts, facility, match.service, match.route, method, status, error_type, span):
            raise AuditUnavailable("the audit record could not be written")
        facts.committed = True

    def _client_span(self, server_span: AnySpan, method: str, match: Match, upstream: Upstream) -> AnySpan:
        """The CLIENT span of the upstream call; not sampled, the server span itself (the
        upstream's parent), as there is nothing to record."""
        if not isinstance(server_span, Span):
            return server_span
        return self.tracer.start_client(
            f"{method} {match.route}",
            server_span,
            {
                "http.request.method": method,
                "server.address": upstream.host,
                "server.port": upstream.port,
                "url.template": match.route,
                "vitalgate.upstream": match.upstream,
            },
        )

    def _whole(
        self,
        upstream_response: UpstreamResponse,
        inspect_max: int,
        match: Match,
        facility: str,
        upstream: Upstream,
        external: str,
        tee: _Tee | None,
        server_span: AnySpan,
    ) -> bytes:
        """A response body that is here whole, as the client gets it: inspected (and rewritten)
        only when there is something to do, a batch's entries to count or the upstream's
        address to rewrite (two byte searches decide it)."""
        data = upstream_response.read_all_buffered()
        leak = upstream.leak_needles
        leaked = bool(data) and contains(data, upstream.leak_authority) and _leaks(data, leak)
        if inspect_max and (leaked or tee is not None) and len(data) <= inspect_max:
            # FHIR JSON: its upstream URLs rewritten, a batch's entries counted.
            found = inspect(data, upstream.base, upstream.base_literals, external, tee is not None)
            if found is not None:
                if found.entry_statuses is not None:
                    self._count_entries(found.entry_statuses, match, facility, tee, server_span)
                data = found.body
            leaked = _leaks(data, leak)
        if leaked:
            self.counters.url_leak(facility, match.service, "body")
        return data

    async def _stream(
        self,
        request: Request,
        upstream_response: UpstreamResponse,
        match: Match,
        facility: str,
        upstream: Upstream,
    ) -> None:
        """A response too large (or too slow) to hold, streamed through, searched for leaks.
        With a spool, a client that falls behind does not hold the upstream: what it has not
        taken yet is queued (``ResponseBuffer``), and the upstream connection goes back to the
        pool as soon as the upstream's last byte is read."""
        leak = upstream.leak_needles
        leaked = False
        tail = b""
        width = len(leak[1])
        spool = self._spool
        queued: ResponseBuffer | None = None
        try:
            while chunk := await upstream_response.read():
                if not leaked:
                    # Also across chunk boundaries: the last bytes of the one before.
                    seam = tail + chunk[:width]
                    leaked = _leaks(chunk, leak) or _leaks(seam, leak)
                    tail = chunk[-width:]
                if queued is not None:
                    await queued.put(chunk)
                elif spool is None:
                    await request.write(chunk)
                else:
                    request.send(chunk)
                    if request.must_drain:  # the client is behind: what follows is queued
                        queued = spool.buffer(request)
            # (the upstream connection is back in the pool here: read() released it)
            if queued is not None:
                await queued.finish()
        finally:
            if queued is not None:
                queued.close()
        await request.write_eof()
        if leaked:
            self.counters.url_leak(facility, match.service, "body")

    def _count_entries(
        self,
        statuses: list[int | None],
        match: Match,
        facility: str,
        tee: _Tee | None,
        server_span: AnySpan,
    ) -> None:
        requested = request_entries(tee.data) if tee is not None and not tee.overflow else None
        if requested is None or len(requested) != len(statuses):
            if tee is not None and tee.overflow:
                self.counters.uninspected(match.service, "request_too_large")
            requested = [(OTHER_METHOD, "")] * len(statuses)
        counts: dict[tuple[str, str, int | None], int] = {}
        by_class: dict[str, int] = {}
        for (entry_method, url), status in zip(requested, statuses, strict=True):
            key = (entry_method, self._entry_route(match, url), status)
            counts[key] = counts.get(key, 0) + 1
            cls = status_class(status)
            by_class[cls] = by_class.get(cls, 0) + 1
        now = time.time()
        for (entry_method, entry_route, status), n in counts.items():
            for sink in self._entry_sinks:
                sink.entries(facility, match.service, entry_method, entry_route, status, now, n)
        if server_span.is_recording():
            server_span.set_attributes({f"vitalgate.bundle.entries.{c}": n for c, n in by_class.items()})

    def _entry_route(self, match: Match, url: str) -> str:
        """The route template of a batch entry's URL (``Patient/123`` -> ``/fhir/Patient/{id}``)."""
        if "://" in url:
            url = urlsplit(url).path
            if not url.startswith(match.prefix):
                return match.prefix + "{path}"
            url = url[len(match.prefix) :]
        path = match.prefix + url.partition("?")[0].partition("#")[0].lstrip("/")
        found = self.router.match(path)
        return found.route if found is not None and found.prefix == match.prefix else match.prefix + "{path}"

    @staticmethod
    def _header_leak(headers: list[tuple[str, str]], upstream: Upstream) -> bool:
        needle = upstream.leak_needles[0].decode("latin-1")
        return any(needle in v for n, v in headers if n.lower() in _URL_HEADERS)

    @staticmethod
    def _response_headers(
        upstream_response: UpstreamResponse, upstream: Upstream, external: str
    ) -> tuple[list[tuple[str, str]], str | None, str | None, bool]:
        """The upstream's headers to pass on (URLs that point at the upstream rewritten to the
        gateway, as nginx's ``proxy_redirect default``), its Content-Length (framing is the
        server's), its Content-Type, and whether it had a header carrying a URL."""
        out = upstream_response.passed_on
        urls = upstream_response.has_urls  # noted while the head was parsed: no scan here
        if urls:
            base = upstream.base
            out = [
                (n, _rebase_header(n, v, base, external)) if n.lower() in _URL_HEADERS else (n, v)
                for n, v in out
            ]
        return out, upstream_response.content_length, upstream_response.content_type, urls


def _leaks(data: bytes, needles: tuple[bytes, bytes]) -> bool:
    return contains(data, needles[0]) or contains(data, needles[1])


class _Tee:
    """A request body passed on as it is read, with a copy of its first ``limit`` bytes."""

    __slots__ = ("_body", "_limit", "_parts", "_size", "expect_continue", "overflow")

    def __init__(self, body: Any, limit: int) -> None:
        self._body = body
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self.overflow = False
        self.expect_continue = body.expect_continue

    async def readany(self) -> bytes:
        chunk: bytes = await self._body.readany()
        if chunk and not self.overflow:
            self._size += len(chunk)
            if self._size > self._limit:
                self.overflow = True
                self._parts = []
            else:
                self._parts.append(chunk)
        return chunk

    @property
    def data(self) -> bytes:
        return b"".join(self._parts)
