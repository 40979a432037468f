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
from typing import Any

import httptools

from gateway.flow import FlowControlled, wake

_HIGH_WATER = 256 * 1024
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})


class Headers:
    """Request headers: the raw list in order, and case-insensitive ``get`` (repeats joined).
    Names are lowered once, on first use, for both."""

    __slots__ = ("_lower", "_map", "raw")

    def __init__(self, raw: list[tuple[str, str]]) -> None:
        self.raw = raw
        self._map: dict[str, str] | None = None
        self._lower: list[str] = []

    def _lookup(self) -> dict[str, str]:
        m: dict[str, str] = {}
        lower = self._lower
        for name, value in self.raw:
            key = name.lower()
            lower.append(key)
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

    def items(self) -> list[tuple[str, str]]:
        return self.raw

    def lower_names(self) -> list[str]:
        """The names of ``raw`` lowercased, in the same order."""
        if self._map is None:
            self._lookup()
        return self._lower


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
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None


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
        keep = self.keep_alive and not conn.closing
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
        if self._chunked:
            self._conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._conn.write(data)
        await self._conn.drain()

    async def write_eof(self) -> None:
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        await self._conn.drain()

    def abort(self) -> None:
        """Cut the connection (a response that cannot be completed honestly)."""
        self.keep_alive = False
        self._conn.abort()


Handler = Callable[[Request], Awaitable[None]]


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
        self._task: asyncio.Task[None] | None = None
        self._next: asyncio.Future[None] | None = None
        self.last_active = 0.0
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._in_head = False
        self._head_seen = 0
        self._too_large = False

    # -- transport ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else None
        self.trusted = self.peer is not None and self.server.is_trusted(self.peer)
        self.last_active = time.monotonic()
        self.server.conns.add(self)

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

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._in_head:
            # llhttp keeps a header's pieces until it ends: bound what a head may take.
            self._head_seen += len(data)
            if self._head_seen > 2 * self.server.max_header_size + 65536:
                self._reject(431, "request header fields too large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "upgrade not supported")
        except httptools.HttpParserError:
            if self._too_large:
                self._reject(431, "request header fields too large")
            else:
                self._reject(400, "malformed request")

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client closed the connection")
        self.transport.write(data)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _reject(self, status: int, detail: str) -> None:
        self.closing = True
        if self.running:
            # Requests before the bad bytes are still answered; then the connection closes.
            self.pause_reading()
            return
        if self.transport is not None:
            body = json.dumps({"error": "bad request", "detail": detail}).encode()
            self.transport.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        self.close()

    # -- llhttp callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_head = True
        self._head_seen = 0

    def _too_big(self) -> None:
        self._too_large = True
        raise _TooLarge  # stops llhttp; data_received answers 431

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.server.max_header_size:
            self._too_big()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.server.max_header_size:
            self._too_big()
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        headers = Headers(self._headers)
        req = Request(
            self,
            parser.get_method().decode("ascii"),
            self._url.decode("latin-1"),
            parser.get_http_version(),
            headers,
        )
        req.keep_alive = parser.should_keep_alive()
        length = headers.get_lower("content-length")
        chunked = "chunked" in (headers.get_lower("transfer-encoding") or "").lower()
        if chunked or (length is not None and length.strip() != "0"):
            expect = (headers.get_lower("expect") or "").lower() == "100-continue" and req.version == "1.1"
            req.content = Body(self, expect)
            req.can_read_body = True
        self.current = req
        self.queue.append(req)
        if not self.running:
            self.running = True
            if self._task is None:
                # One task per connection, parked between requests (cheaper than one per request).
                self._task = asyncio.get_running_loop().create_task(self._serve())
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
                if self.closing or self.transport is None:
                    return
                self._next = asyncio.get_running_loop().create_future()
                await self._next  # the next request, or the connection's end
                self._next = None
                if not self.queue:
                    return
        finally:
            self.running = False
            self._task = None
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
            self.last_active = time.monotonic()


class _TooLarge(Exception):
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
    ) -> None:
        self.handler = handler
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
        for conn in list(self.conns):
            if not conn.running and not conn.queue and now - conn.last_active > self.keepalive_s:
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
        await self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.conns):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
