"""The proxy listener's HTTP/1.1 server: an asyncio protocol on llhttp (httptools).

The admin listener runs on aiohttp; the proxy listener, where every clinical
request passes, runs on this small server because a general-purpose
framework's per-request objects cost more than everything the gateway itself
does. It keeps HTTP/1.1's rules for a proxy's client side:

- requests are parsed by llhttp: malformed requests get 400, header blocks
  over ``max_header_size`` get 431, and the connection is closed;
- request bodies (``Content-Length`` or chunked) are streamed to the handler
  with back-pressure (reading pauses while too much is buffered);
- ``Expect: 100-continue`` is answered with ``100 Continue`` when the handler
  starts reading the body;
- keep-alive follows the request (HTTP/1.0 needs ``Connection: keep-alive``;
  ``Connection: close`` closes after the response); pipelined requests are
  answered in order; idle connections close after ``keepalive_s``;
- responses are written with ``Content-Length`` when known, chunked otherwise
  (close-delimited to HTTP/1.0 clients); HEAD, 1xx, 204 and 304 get no body;
- ``close()`` stops accepting, closes idle connections, and lets in-flight
  requests finish (their connections close after the response).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import http
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, NoReturn

import httptools

from gateway.dataplane.errors import ClientBodyInvalid, ClientTimeout
from gateway.dataplane.flow import FlowControlled, wake

_HIGH_WATER: Final = 256 * 1024
_REASONS: Final = {s.value: s.phrase for s in http.HTTPStatus}
_TOO_MANY_BODY: Final = (
    b'{"error": "too_many_connections", "detail": "the gateway is at its client connection limit"}'
)
_TOO_MANY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)
_NO_BODY_STATUS: Final = frozenset({204, 304})


class Headers:
    """Request headers: the raw list in order, and case-insensitive ``get`` (repeats joined,
    names lowered once, on first use)."""

    __slots__ = ("_map", "raw")

    def __init__(self, raw: list[tuple[str, str]]) -> None:
        self.raw = raw
        self._map: dict[str, str] | None = None

    def _lookup(self) -> dict[str, str]:
        m: dict[str, str] = {}
        for name, value in self.raw:
            key = name.lower()
            m[key] = f"{m[key]}, {value}" if key in m else value
        self._map = m
        return m

    def get(self, name: str, default: str | None = None) -> str | None:
        m = self._map if self._map is not None else self._lookup()
        return m.get(name.lower(), default)

    def get_lower(self, name: str) -> str | None:
        """``get`` for a name already in lower case (the gateway's own lookups)."""
        m = self._map if self._map is not None else self._lookup()
        return m.get(name)

    def replace_lower(self, name: str, raw_name: str, value: str) -> None:
        """Every ``name`` (lower case) header replaced by one ``raw_name: value``."""
        raw = [(n, v) for n, v in self.raw if n.lower() != name]
        raw.append((raw_name, value))
        self.raw[:] = raw
        self._map = None

    def items(self) -> list[tuple[str, str]]:
        return self.raw


class Body:
    """A request body as it arrives; ``readany()`` returns ``b""`` at its end."""

    __slots__ = ("_chunks", "_conn", "_continue", "_error", "_size", "_waiter", "done", "expect_continue")

    def __init__(self, conn: _Conn, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expect_continue
        self.expect_continue = expect_continue
        """The client sent ``Expect: 100-continue`` (answered when the body is first read)."""
        self._error: BaseException | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > _HIGH_WATER:
            self._conn.pause_reading()
        wake(self._waiter)

    def finish(self) -> None:
        self.done = True
        wake(self._waiter)

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self._error = exc
            wake(self._waiter)

    async def readany(self) -> bytes:
        if self._continue:
            self._continue = False
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._size = 0
                self._conn.resume_reading()
                return data
            if self.done:
                return b""
            if self._error is not None:
                raise self._error
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            # nginx's client_body_timeout: a client that sends nothing for this long is cut
            # (408), not left to hold an upstream connection until the upstream's timeout.
            timeout = self._conn.server.body_timeout_s
            stall = loop.call_later(timeout, self._stalled, timeout) if timeout > 0 else None
            try:
                await self._waiter
            finally:
                self._waiter = None
                if stall is not None:
                    stall.cancel()

    def _stalled(self, timeout: float) -> None:
        self._conn.closing = True  # the rest of this body will never be read
        self.fail(ClientTimeout(f"the client sent no request body bytes for {timeout:g} s"))


class Request:
    """One request on a connection; the handler answers through ``respond`` or ``start``/``write``."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_head_only",
        "body_complete",
        "can_read_body",
        "content",
        "headers",
        "keep_alive",
        "method",
        "prepared",
        "raw_path",
        "version",
    )

    def __init__(self, conn: _Conn, method: str, raw_path: str, version: str, headers: Headers) -> None:
        self._conn = conn
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.headers = headers
        self.keep_alive = True
        self.content: Body | None = None
        self.can_read_body = False
        self.body_complete = False
        self.prepared = False
        self._chunked = False
        self._head_only = method == "HEAD"

    @property
    def remote(self) -> str | None:
        return self._conn.peer

    @property
    def trusted(self) -> bool:
        """The peer is a configured trusted proxy: its forwarding headers are believed."""
        return self._conn.trusted

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    def _head(self, status: int, reason: str | None, headers: Iterable[tuple[str, str]], extra: str) -> bytes:
        conn = self._conn
        # (after the client's EOF, the last request it sent is answered with Connection: close)
        keep = self.keep_alive and not conn.closing and not (conn.read_closed and len(conn.queue) <= 1)
        self.keep_alive = keep
        parts = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}\r\n"]
        has_date = False
        for name, value in headers:
            if not has_date and len(name) == 4 and name.lower() == "date":
                has_date = True
            # Pieces joined once at the end: no string per header line.
            parts.append(name)
            parts.append(": ")
            parts.append(value)
            parts.append("\r\n")
        if not has_date:
            parts.append(f"Date: {conn.server.date()}\r\n")
        parts.append(extra)
        if not keep:
            parts.append("Connection: close\r\n")
        elif self.version == "1.0":
            parts.append("Connection: keep-alive\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    async def respond(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        reason: str | None = None,
        content_length: str | None = None,
    ) -> None:
        """A whole response. ``content_length`` is what a HEAD, 204 or 304 response announces."""
        if status in _NO_BODY_STATUS or self._head_only:
            extra = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
            self.prepared = True
            self._conn.write(self._head(status, reason, headers, extra))
        else:
            self.prepared = True
            self._conn.write(self._head(status, reason, headers, f"Content-Length: {len(body)}\r\n") + body)
        if self._conn.must_drain():
            await self._conn.drain()

    def start(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        content_length: str | None,
        reason: str | None = None,
    ) -> None:
        """Send the status line and headers of a streamed response."""
        if status in _NO_BODY_STATUS or self._head_only:
            extra = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
            self._head_only = True
        elif content_length is not None:
            extra = f"Content-Length: {content_length}\r\n"
        elif self.version == "1.1":
            extra = "Transfer-Encoding: chunked\r\n"
            self._chunked = True
        else:
            extra = ""
            self.keep_alive = False  # an HTTP/1.0 client reads to the close
        self.prepared = True
        self._conn.write(self._head(status, reason, headers, extra))

    async def write(self, data: bytes) -> None:
        if self._head_only or not data:
            return
        self.send(data)
        await self._conn.drain()

    def send(self, data: bytes) -> None:
        """``write`` without waiting for the client to take it: the caller reads
        ``must_drain`` to learn that the client is behind."""
        if self._head_only or not data:
            return
        if self._chunked:
            self._conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._conn.write(data)

    @property
    def must_drain(self) -> bool:
        """The client's socket is full (or gone): a ``write`` now would wait."""
        return self._conn.must_drain()

    async def write_eof(self) -> None:
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        await self._conn.drain()

    def abort(self) -> None:
        """Cut the connection (a response that cannot be completed honestly)."""
        self.keep_alive = False
        self._conn.abort()


Handler = Callable[[Request], Awaitable[None]]
RejectHook = Callable[[int, str, Headers, str, "str | None"], None]
"""``(status, error_type, headers so far, request target so far, peer)`` of a refused request."""


class _Conn(FlowControlled):
    def __init__(self, server: HttpServer) -> None:
        super().__init__()
        self.server = server
        self.peer: str | None = None
        self.trusted = False
        self.parser = httptools.HttpRequestParser(self)
        self.closing = False
        self.current: Request | None = None  # being parsed
        self.queue: collections.deque[Request] = collections.deque()  # parsed, waiting or running
        self.running = False
        self.task: asyncio.Task[None] | None = None
        self._next: asyncio.Future[None] | None = None
        self.last_active = 0.0
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self.in_head = False
        self._head_seen = 0
        self._too_large = False
        self._refused: tuple[int, str, str] | None = None  # a head refused after llhttp parsed it
        self.head_started = 0.0
        self.served = 0
        self._stalled = False  # cut by the client write timeout
        self.read_closed = False  # the client sent EOF: answer what it asked, then close

    # -- transport ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else None
        self.trusted = self.peer is not None and self.server.is_trusted(self.peer)
        self.last_active = time.monotonic()
        if not self.server.admit(self):
            self.closing = True
            if self.transport is not None:
                self.transport.write(_TOO_MANY)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server.conns.discard(self)
        self.closing = True
        gone = ConnectionResetError("client closed the connection")
        for req in self.queue:
            if req.content is not None:
                req.content.fail(gone)
        if self.current is not None and self.current.content is not None:
            self.current.content.fail(gone)
        wake(self._next)  # the parked task ends

    def eof_received(self) -> bool:
        """The client closed its sending side: requests it completed are still answered
        (keeping the connection open for writing), then the connection closes."""
        self.read_closed = True
        req = self.current
        if req is not None and req.content is not None and not req.body_complete:
            req.content.fail(ConnectionResetError("the client closed its side in the middle of a body"))
        if self.queue or self.running:
            return True
        self.closing = True
        return False

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.in_head:
            # llhttp keeps a header's pieces until it ends: bound what a head may take.
            self._head_seen += len(data)
            if self._head_seen > 2 * self.server.max_header_size + 65536:
                self._reject(431, "request header fields too large", "header_too_large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "upgrade not supported", "not_implemented")
        except httptools.HttpParserError:
            if self._refused is not None:
                self._reject(*self._refused)
            elif self._too_large:
                self._reject(431, "request header fields too large", "header_too_large")
            else:
                self._reject(400, "malformed request", "bad_request")

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        """``FlowControlled.drain`` bounded by the client write timeout: a client that stops
        reading is cut (ClientTimeout), and what it held (an upstream connection) freed."""
        if self._write_paused and self.transport is not None:
            loop = asyncio.get_running_loop()
            self._drain_waiter = loop.create_future()
            timeout = self.server.write_timeout_s
            stall = loop.call_later(timeout, self._write_stalled) if timeout > 0 else None
            try:
                await self._drain_waiter
            finally:
                if stall is not None:
                    stall.cancel()
            if self._stalled:
                raise ClientTimeout(f"the client read nothing of the response for {timeout:g} s")
        if self.transport is None:
            raise ConnectionResetError("connection closed")

    def _write_stalled(self) -> None:
        self._stalled = True
        self.abort()  # (connection_lost wakes the waiter)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _reject(self, status: int, detail: str, error_type: str) -> None:
        self.closing = True
        req = self.current
        if req is not None and req.content is not None and not req.body_complete:
            # The head was accepted (and may be upstream already); the body is malformed. The
            # handler reading it answers 400 and records it; the upstream exchange is cut.
            self.pause_reading()
            req.content.fail(ClientBodyInvalid(f"malformed request body: {detail}"))
            return
        self.pause_reading()
        # Seen, whatever it was: one log line and one sample (service "none").
        self.server.rejected(status, error_type, Headers(list(self._headers)), self._url, self.peer)
        if self.running:
            # The requests before the bad bytes are answered first, with Connection: close; a
            # response after that one would be a protocol error, so this one gets none.
            return
        body = json.dumps({"error": error_type, "detail": detail}).encode()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        self.close()

    def head_timeout(self, timeout: float) -> None:
        self.in_head = False
        self._reject(408, f"the request head did not arrive within {timeout:g} s", "header_timeout")

    # -- llhttp callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self.in_head = True
        self._head_seen = 0
        self.head_started = self.last_active  # set by data_received, which called us

    def _origin_form(self, target: str, headers: Headers, host: str | None) -> tuple[str, str | None]:
        """An absolute-form target (``GET http://ehr.example.org/fhir/Patient``, RFC 9112
        3.2.2) as origin form; its authority replaces Host, as the RFC says a server must."""
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            self._refuse_head(400, "the request target is not a path or an http(s) URL", "bad_request")
        authority, slash, path = rest.partition("/")
        authority = authority.rpartition("@")[2]  # userinfo is never passed on
        if not authority:
            self._refuse_head(400, "the request target has no host", "bad_request")
        headers.replace_lower("host", "Host", authority)
        return "/" + path if slash else "/", authority

    def _refuse_head(self, status: int, detail: str, error_type: str) -> NoReturn:
        """Stop llhttp on a head it accepted but the gateway does not (data_received answers)."""
        self._refused = (status, detail, error_type)
        raise _Stop

    def _too_big(self) -> NoReturn:
        self._too_large = True
        raise _Stop  # stops llhttp; data_received answers 431

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.server.max_header_size:
            self._too_big()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.server.max_header_size:
            self._too_big()
        if not self.in_head:
            # A chunked body's trailer: bounded with the head, and not passed on (the body is
            # framed afresh upstream, as nginx does). The head's list is the request's own.
            return
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        headers = Headers(self._headers)
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":  # noqa: PLR1714  (compiled: plain compares)
            if version == "0.9":  # "GET /": no headers, no status line expected back
                self._refuse_head(400, "HTTP/0.9 is not supported", "bad_request")
            self._refuse_head(505, "only HTTP/1.0 and HTTP/1.1 are supported", "not_implemented")
        method = parser.get_method().decode("ascii")
        if method == "CONNECT":  # a tunnel: not what a reverse proxy for an API offers
            self._refuse_head(501, "CONNECT is not supported", "not_implemented")
        target = self._url.decode("latin-1")
        host = headers.get_lower("host")
        if target[:1] != "/":
            target, host = self._origin_form(target, headers, host)
        if host is None:
            if version == "1.1":  # RFC 9112 3.2: a 1.1 request without Host is refused
                self._refuse_head(400, "the request has no Host header", "bad_request")
        elif "," in host:  # two Host headers (joined) or a list: never a single authority
            self._refuse_head(400, "the request has more than one Host", "bad_request")
        req = Request(self, method, target, version, headers)
        req.keep_alive = parser.should_keep_alive()
        length = headers.get_lower("content-length")
        coding = headers.get_lower("transfer-encoding")
        chunked = False
        if coding is not None:
            # As nginx: only a lone, final "chunked" is framing the gateway can pass on (a gzip
            # before it would be dropped on the way; "xchunked" is no framing at all), and
            # HTTP/1.0 has no transfer codings.
            if req.version == "1.0":
                self._refuse_head(400, "Transfer-Encoding in an HTTP/1.0 request", "bad_request")
            if coding.strip().lower() != "chunked":
                self._refuse_head(501, "only Transfer-Encoding: chunked is supported", "not_implemented")
            chunked = True
        if chunked or (length is not None and length.strip() != "0"):
            expect = (headers.get_lower("expect") or "").lower() == "100-continue" and req.version == "1.1"
            req.content = Body(self, expect)
            req.can_read_body = True
        self.current = req
        self.queue.append(req)
        if not self.running:
            self.running = True
            if self.task is None:
                # One task per connection, parked between requests (cheaper than one per request).
                self.task = asyncio.get_running_loop().create_task(self._serve())
            else:
                wake(self._next)

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req is not None and req.content is not None:
            req.content.feed(body)

    def on_message_complete(self) -> None:
        req = self.current
        if req is not None:
            req.body_complete = True
            if req.content is not None:
                req.content.finish()
        self.current = None

    # -- requests -----------------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while True:
                await self._serve_queue()
                self.running = False
                if self.closing or self.read_closed or self.transport is None:
                    self.closing = True
                    return
                self._next = asyncio.get_running_loop().create_future()
                await self._next  # the next request, or the connection's end
                self._next = None
                if not self.queue:
                    return
        finally:
            self.running = False
            self.task = None
            if self.closing and self.transport is not None and not self.queue:
                self.close()

    async def _serve_queue(self) -> None:
        handler = self.server.handler
        while self.queue:
            req = self.queue[0]
            try:
                await handler(req)
            except Exception:  # a handler bug: answer 500 if nothing was sent, else cut
                if req.prepared:
                    self.abort()
                else:
                    with contextlib.suppress(ConnectionError):
                        await req.respond(
                            500, [("Content-Type", "application/json")], b'{"error":"internal"}'
                        )
                self.server.log_error()
            if not req.prepared or not req.keep_alive or not req.body_complete:
                # Unanswered, closing, or a request body left unread: end the connection.
                self.queue.clear()
                self.close()
                return
            self.queue.popleft()
            self.served += 1
            self.last_active = time.monotonic()


class _Stop(Exception):
    pass


class HttpServer:
    """Serves ``handler`` on a host and port (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        max_header_size: int = 16384,
        keepalive_s: float = 75.0,
        on_error: Callable[[], None] | None = None,
        trusted_proxies: Iterable[str] = (),
        header_timeout_s: float = 30.0,
        body_timeout_s: float = 60.0,
        write_timeout_s: float = 60.0,
        max_connections: int = 0,
        on_reject: RejectHook | None = None,
        on_refuse: Callable[[int], None] | None = None,
    ) -> None:
        self.handler = handler
        self.header_timeout_s = header_timeout_s
        """A request head must arrive whole within this long of its first byte (slowloris)."""
        self.body_timeout_s = body_timeout_s
        """The longest a request body may pause between two reads (0: no limit)."""
        self.write_timeout_s = write_timeout_s
        """The longest a response may wait for the client to read more of it (0: no limit)."""
        self.max_connections = max_connections
        """Client connections held at once (0: no limit); past it a new one gets 503 and closes."""
        self._on_reject = on_reject
        self._on_refuse = on_refuse
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.max_header_size = max_header_size
        self.keepalive_s = keepalive_s
        self.conns: set[_Conn] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._date = ""
        self._date_at = 0.0
        self._on_error = on_error

    def date(self) -> str:
        now = time.time()
        if now - self._date_at >= 1.0:
            self._date_at = now - now % 1.0
            self._date = email.utils.formatdate(now, usegmt=True)
        return self._date

    def is_trusted(self, peer: str) -> bool:
        """Once per connection: is this peer address one of ``trusted_proxies``?"""
        if not self._trusted:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)

    def rejected(
        self, status: int, error_type: str, headers: Headers, target: bytes, peer: str | None
    ) -> None:
        """A request the parser refused (answered ``status`` without reaching the handler)."""
        if self._on_reject is not None:
            self._on_reject(status, error_type, headers, target.decode("latin-1"), peer)

    def admit(self, conn: _Conn) -> bool:
        """Room for one more client connection? If not, the caller answers 503 and closes."""
        if self.max_connections and len(self.conns) >= self.max_connections:
            if self._on_refuse is not None:
                self._on_refuse(len(self.conns))
            return False
        self.conns.add(conn)
        return True

    def log_error(self) -> None:
        if self._on_error is not None:
            self._on_error()

    async def start(self, host: str, port: int, ssl: Any = None, reuse_port: bool = False) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Conn(self), host, port, ssl=ssl, reuse_port=reuse_port or None, backlog=1024
        )
        self._sweeper = loop.call_later(1.0, self._sweep)
        # uvloop gives a list where typeshed says tuple: read it untyped, or compiled code rejects it.
        sockets: Any = getattr(self._server, "sockets")  # noqa: B009
        sock = sockets[0]
        return int(sock.getsockname()[1])

    def _sweep(self) -> None:
        now = time.monotonic()
        header_s = self.header_timeout_s
        for conn in list(self.conns):
            if conn.in_head:
                if header_s and now - conn.head_started > header_s:
                    # nginx's client_header_timeout: a head that trickles in (slowloris) is cut.
                    conn.head_timeout(header_s)
            elif not conn.running and not conn.queue:
                idle = now - conn.last_active
                # A connection that never sent a byte gets the header timeout, not keep-alive's.
                limit = self.keepalive_s if conn.served or not header_s else min(header_s, self.keepalive_s)
                if idle > limit:
                    conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    async def stop_accepting(self) -> None:
        """Stop accepting; idle connections close now, busy ones after their response."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.closing = True
            if not conn.running:
                conn.close()

    async def close(self) -> None:
        """Stop now: requests still running are cancelled (the handler records them as cut by
        the shutdown) and waited for briefly, then every connection closes."""
        await self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
        running = [c.task for c in self.conns if c.task is not None and not c.task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=2.0)
        for conn in list(self.conns):
            conn.close()
        if self._server is not None:
            # Every connection is closed above; a listener that still reports open ones after
            # 2 s holds nothing of ours to lose, and the process is exiting.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
