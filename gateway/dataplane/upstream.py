"""Clients for the clinical upstreams: one keep-alive HTTP/1.1 connection pool per upstream.

The proxy talks to an upstream only through ``Upstream.send`` and the
``UpstreamResponse`` it returns. The client is a small asyncio protocol on
llhttp (through httptools): it changes nothing that passes through (no
redirects followed, no decompression, no default headers but ``Host``), and it
keeps HTTP/1.1's rules:

- request bodies stream with the client's ``Content-Length``, or chunked when
  the length is unknown; response bodies stream by ``Content-Length``, chunked
  transfer coding or until the upstream closes;
- responses to HEAD, and 1xx, 204 and 304 responses, have no body; 1xx
  responses before the final one are consumed here (``100 Continue`` releases a
  body held back by ``Expect: 100-continue``);
- a connection goes back to the pool only when both messages were complete
  and neither side asked to close; an idle connection the upstream closed or
  half-closed is dropped, and one idle longer than the keep-alive time is
  closed;
- at most ``max_connections`` connections per upstream; requests beyond that
  wait for one in arrival order;
- connect, read (no byte for that long) and total timeouts; the total runs from the moment
  the request is sent for, so the wait for a free connection (``timeout.pool``) and the
  connect count against it: a request's waits together never exceed its ``total``;
- one retry, on a new connection, only for an idempotent request without a
  body whose reused connection died before any byte of a response came back
  (the upstream closed it as the request went out).

Failures are raised as the gateway's own error types (``gateway.dataplane.errors``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import httptools

from gateway.dataplane.bundle import base_literals
from gateway.dataplane.errors import (
    ClientError,
    ClientGone,
    ClientTimeout,
    GatewayError,
    UpstreamConnectError,
    UpstreamPoolExhausted,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamTlsError,
)
from gateway.dataplane.flow import FlowControlled, wake
from gateway.dataplane.settings import UpstreamSettings

log = logging.getLogger("vitalgate.upstream")
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
KEEPALIVE_S: Final = 30.0
"""How long an idle pooled connection is kept (less if the upstream's Keep-Alive says so)."""
EXPECT_WAIT_S: Final = 1.0
"""How long a body held back by ``Expect: 100-continue`` waits for ``100 Continue``."""
_HIGH_WATER: Final = 256 * 1024


HOP_BY_HOP: Final = frozenset(
    {
        # RFC 9110 7.6.1: this connection's, not the message's (Expect too: the gateway
        # answers 100-continue itself).
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
NOT_PASSED_ON: Final = HOP_BY_HOP | {"content-length"}
"""Response headers a proxy does not pass on: hop-by-hop, and the length (it frames the body
it sends itself)."""


class BodySource(Protocol):
    """What the request body is read from: the proxy listener's ``Body`` (or anything with
    ``readany``, which returns ``b""`` at the end)."""

    async def readany(self) -> bytes: ...


class _Exchange:
    """The state of one request/response on a connection."""

    __slots__ = (
        "awaiting_client",
        "body_done",
        "chunks",
        "complete",
        "content_length",
        "content_type",
        "continue_waiter",
        "error",
        "has_urls",
        "head",
        "head_bytes",
        "headers",
        "headers_waiter",
        "informational",
        "keep_alive",
        "keep_alive_s",
        "passed_on",
        "reader",
        "reason",
        "received",
        "sent_body",
        "status",
        "until_eof",
    )

    def __init__(self, head: bool) -> None:
        self.head = head
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.passed_on: list[tuple[str, str]] = []
        """``headers`` without the hop-by-hop ones and Content-Length: what a proxy passes on."""
        self.content_length: str | None = None
        self.content_type: str | None = None
        self.has_urls = False
        """A header that carries a URL a client follows (Location, Content-Location, Link)."""
        self.chunks: collections.deque[bytes] = collections.deque()
        self.complete = False
        self.keep_alive = False
        self.keep_alive_s = KEEPALIVE_S
        self.informational = False
        self.until_eof = False
        self.received = False
        self.error: GatewayError | None = None
        self.headers_waiter: asyncio.Future[None] | None = None
        self.reader: asyncio.Future[None] | None = None
        self.continue_waiter: asyncio.Future[bool] | None = None
        self.sent_body = True
        self.body_done = True
        self.awaiting_client = False
        """The request body is being read from the client: a wait that is not the upstream's."""
        self.head_bytes = 0


class _Connection(FlowControlled):
    """One upstream connection; llhttp parses what it receives."""

    def __init__(self, pool: Upstream) -> None:
        super().__init__()
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.uses = 0
        self.idle_since = 0.0
        self.keep_alive_s = KEEPALIVE_S
        self.ex: _Exchange | None = None
        self._buffered = 0
        self.high_water = _HIGH_WATER

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None or ex.complete:
            # Bytes nobody asked for (or past the end of the response): not to be trusted again.
            self.close()
            return
        ex.received = True
        in_head = ex.status == 0
        if in_head:
            ex.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"upstream sent an invalid response: {exc}"))
        if in_head and ex.status == 0 and ex.head_bytes > self.pool.max_header_size:
            # Still no end of the head: llhttp holds a header's pieces until it ends, so what
            # an upstream may send before its headers are complete is bounded.
            limit = self.pool.max_header_size
            self._fail(UpstreamProtocolError(f"upstream response head is larger than {limit} bytes"))
            return
        if ex.complete and ex.head and not self.closed:
            # llhttp would wait for the Content-Length a HEAD response announces; start afresh.
            self.parser = httptools.HttpResponseParser(self)

    def eof_received(self) -> bool:
        # The upstream half-closed: it sends no more, so this connection serves nothing more.
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)
        super().connection_lost(exc)

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        ex = self.ex
        if ex is not None and ex.complete:
            # A second response to one request: stop parsing; the connection is closed below.
            raise UpstreamProtocolError("upstream sent bytes after the response")

    def on_status(self, reason: bytes) -> None:
        assert self.ex is not None
        self.ex.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.ex is not None
        self.ex.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # Informational: consumed here. 100 Continue releases a held-back body.
            ex.informational = True
            ex.headers = []
            if status == 100:
                wake(ex.continue_waiter, True)
            return
        ex.status = status
        ex.keep_alive = self.parser.should_keep_alive()
        chunked = False
        passed_on = ex.passed_on
        for header in ex.headers:
            name, value = header
            lname = name.lower()
            if lname not in NOT_PASSED_ON:
                passed_on.append(header)
            if lname == "content-length":
                ex.content_length = value
            elif lname == "transfer-encoding":
                chunked = chunked or "chunked" in value.lower()
            elif lname == "keep-alive":
                ex.keep_alive_s = _keep_alive_timeout(value)
            elif lname == "content-type":
                ex.content_type = value
            elif lname == "location" or lname == "content-location" or lname == "link":  # noqa: PLR1714  (compiled: plain compares)
                ex.has_urls = True
        if ex.head or status in (204, 304):
            ex.complete = True
        elif not chunked and ex.content_length is None:
            ex.until_eof = True  # HTTP/1.0 style: the body ends when the upstream closes
            ex.keep_alive = False
        # The final response came before the body went out: the body is not sent, so the
        # connection is not reused (RFC 9110 10.1.1).
        wake(ex.continue_waiter, False)
        wake(ex.headers_waiter)
        if ex.complete:
            wake(ex.reader)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        assert ex is not None
        ex.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > self.high_water:
            self.pause_reading()
        wake(ex.reader)

    def on_message_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        if ex.informational:
            ex.informational = False
            return
        ex.keep_alive = ex.keep_alive and self.parser.should_keep_alive()
        ex.complete = True
        wake(ex.reader)

    # -- the exchange -----------------------------------------------------------------------------
    def fail_with(self, err: GatewayError) -> None:
        """End the exchange with ``err`` (the request side failed) and cut the connection."""
        self._fail(err)
        self.abort()

    def _fail(self, err: GatewayError) -> None:
        ex = self.ex
        if ex is not None and ex.error is None and not ex.complete:
            ex.error = err
            wake(ex.headers_waiter)
            wake(ex.reader)
            wake(ex.continue_waiter, False)
        self.close()

    def _lost(self, exc: Exception | None) -> None:
        if self.closed and self.transport is None:
            return
        ex = self.ex
        if ex is not None and not ex.complete and ex.error is None:
            if ex.until_eof and exc is None:
                ex.complete = True
                wake(ex.reader)
            elif isinstance(exc, ssl.SSLError):
                self._fail(UpstreamTlsError("TLS with upstream failed"))
            else:
                self._fail(UpstreamReset("upstream closed the connection"))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.close()

    def usable(self, now: float) -> bool:
        return not self.closed and self.transport is not None and now - self.idle_since < self.keep_alive_s

    def start(self, head: bool) -> _Exchange:
        self.uses += 1
        self.ex = ex = _Exchange(head)
        return ex

    def finish(self) -> bool:
        """End the exchange; whether the connection may serve another request."""
        ex = self.ex
        self.ex = None
        self._buffered = 0
        self.high_water = _HIGH_WATER
        self.resume_reading()
        if ex is None or self.closed:
            return False
        self.keep_alive_s = min(ex.keep_alive_s, KEEPALIVE_S)
        return ex.complete and ex.keep_alive and ex.error is None and ex.sent_body and ex.body_done

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet taken."""
        return self._buffered

    def take(self) -> bytes:
        ex = self.ex
        assert ex is not None
        chunks = ex.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        self.resume_reading()
        return data


def _keep_alive_timeout(value: str) -> float:
    for part in value.split(","):
        name, _, number = part.strip().partition("=")
        if name.strip().lower() == "timeout":
            with contextlib.suppress(ValueError):
                # Give the upstream's idle timer a second of slack against the race.
                return max(0.0, float(number.strip()) - 1.0)
    return KEEPALIVE_S


class UpstreamResponse:
    """An upstream's response: status and headers, then the body read chunk by chunk."""

    __slots__ = ("_conn", "_ex", "_released", "_timer", "headers", "reason", "status")

    def __init__(self, conn: _Connection, ex: _Exchange, timer: _Timer) -> None:
        self._conn = conn
        self._ex = ex
        self._timer = timer
        self._released = False
        self.status = ex.status
        self.reason = ex.reason
        self.headers = ex.headers
        """The raw header list, in order, names as the upstream spelled them."""

    @property
    def complete(self) -> bool:
        """The whole body has already arrived (``read_all_buffered`` gives it without waiting)."""
        return self._ex.complete and self._ex.error is None

    @property
    def passed_on(self) -> list[tuple[str, str]]:
        """The response headers a proxy passes on (``NOT_PASSED_ON`` left out), in order."""
        return self._ex.passed_on

    @property
    def content_length(self) -> str | None:
        return self._ex.content_length

    @property
    def content_type(self) -> str | None:
        return self._ex.content_type

    @property
    def has_urls(self) -> bool:
        """A Location, Content-Location or Link header is among ``headers``."""
        return self._ex.has_urls

    def read_all_buffered(self) -> bytes:
        """The body of a ``complete`` response; the connection goes back to the pool."""
        data = self._conn.take() if self._ex.chunks else b""
        self.release()
        return data

    async def gather(self, limit: int) -> None:
        """Wait until the whole body is here or more than ``limit`` bytes of it are buffered
        (then ``complete`` says which); raises the exchange's error, as ``read`` does."""
        ex = self._ex
        conn = self._conn
        conn.high_water = max(limit, _HIGH_WATER)
        if conn.buffered <= conn.high_water:
            # Reading may have paused at the lower mark while the head was waited for (the
            # body's first bytes came with it): nothing would wake this wait otherwise.
            conn.resume_reading()
        try:
            while not ex.complete and ex.error is None and conn.buffered <= limit:
                ex.reader = asyncio.get_running_loop().create_future()
                self._timer.arm(ex.reader)
                await ex.reader
                ex.reader = None
        finally:
            conn.high_water = _HIGH_WATER
        if ex.error is not None:
            err = ex.error
            self.release()
            raise err

    async def read(self) -> bytes:
        """The next part of the body, or ``b""`` once the body is complete."""
        ex = self._ex
        conn = self._conn
        while True:
            if ex.chunks:
                return conn.take()
            if ex.error is not None:
                err = ex.error
                self.release()
                raise err
            if ex.complete:
                self.release()
                return b""
            ex.reader = asyncio.get_running_loop().create_future()
            self._timer.arm(ex.reader)
            await ex.reader
            ex.reader = None

    def release(self) -> None:
        """Give the connection back (or close it, if the exchange did not end cleanly)."""
        if self._released:
            return
        self._released = True
        self._timer.cancel()
        self._conn.pool._release(self._conn)


class _Timer:
    """The read and total timeouts of one exchange.

    Not a loop timer per request: the pool checks its armed timers every
    ``TICK_S`` (``Upstream._tick``), so a timeout fires up to that much late and
    a request pays only a set insert and removal."""

    __slots__ = ("_conn", "_deadline", "_fut", "_pool", "_read_s", "armed_at")

    def __init__(self, pool: Upstream, conn: _Connection, now: float, deadline: float, read_s: float | None):
        self._pool = pool
        self._conn = conn
        self._deadline = deadline
        self._read_s = read_s
        self._fut: asyncio.Future[Any] | None = None
        self.armed_at = now

    def arm(self, fut: asyncio.Future[Any]) -> None:
        """Time out ``fut`` (a wait for the upstream) at the read or total timeout."""
        self._fut = fut
        self.armed_at = time.monotonic()
        self._pool._watch(self)

    def expired(self, now: float) -> bool:
        if now >= self._deadline:
            return True
        if self._read_s is None:
            return False
        ex = self._conn.ex
        # The upstream cannot answer a request it has not had yet: no read timeout while the
        # client's body trickles in (the client has its own, the body timeout).
        return (ex is None or not ex.awaiting_client) and now - self.armed_at >= self._read_s

    def fire(self) -> None:
        fut = self._fut
        if fut is None or fut.done():
            return
        ex = self._conn.ex
        if ex is not None and ex.error is None:
            ex.error = (
                ClientTimeout("the request body took longer than the upstream's total timeout")
                if ex.awaiting_client
                else UpstreamTimeout("upstream timed out")
            )
        self._conn.abort()
        wake(fut)
        if ex is not None:
            wake(ex.headers_waiter)
            wake(ex.reader)

    def cancel(self) -> None:
        self._fut = None
        self._pool._timers.discard(self)


TICK_S: Final = 0.05


class Upstream:
    def __init__(
        self, name: str, cfg: UpstreamSettings, ca_file: str | None, max_header_size: int = 65536
    ) -> None:
        self.name = name
        self.max_header_size = max_header_size
        """The longest response head accepted (limits.max_upstream_header_size)."""
        self._pool_timeout_s = cfg.timeout.pool
        self.base_url = cfg.url
        parts = urlsplit(cfg.url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._base_path = parts.path.rstrip("/")
        default_port = (parts.scheme == "https" and self.port == 443) or (
            parts.scheme == "http" and self.port == 80
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = host if default_port else f"{host}:{self.port}"
        self.pass_client_host = cfg.host == "client"
        self.origin = f"{parts.scheme}://{self._host_header}"
        """The upstream's origin as its own absolute URLs spell it (``http://fhir.internal:8081``)."""
        self.base = self.origin + self._base_path
        """Where the gateway's paths start on the upstream: what a Location is rewritten from."""
        self.base_literals = base_literals(self.base)
        """JSON string literals under ``base`` (in a Bundle to rewrite)."""
        authority = self._host_header.encode("latin-1")
        self.leak_authority = authority
        """Searched for first (one scan of a body); then the two forms it leaks in."""
        self.leak_needles = (b"//" + authority, b"\\/\\/" + authority)
        """The upstream's address in a response (also JSON-escaped): a client following it
        would bypass the gateway."""
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=ca_file or cfg.ca_file)
        self._limit = cfg.max_connections
        self._connect_s = cfg.timeout.connect
        self._read_s = cfg.timeout.read
        self._total_s = cfg.timeout.total
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._conns: set[_Connection] = set()
        self._closing = False
        self._timers: set[_Timer] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self.certificate_expiry_s = 0.0
        """notAfter of the certificate the upstream last presented (0: none seen yet)."""

    async def start(self) -> None:
        self._closing = False

    async def close(self) -> None:
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._timers.clear()
        for conn in list(self._conns):
            conn.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError("gateway shutting down"))
        self._waiters.clear()

    @property
    def busy(self) -> bool:
        """Whether an exchange holds one of this pool's connections or waits for one."""
        return self._open > len(self._idle) or bool(self._waiters)

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # -- timeouts ---------------------------------------------------------------------------------
    def _watch(self, timer: _Timer) -> None:
        self._timers.add(timer)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        for timer in [t for t in self._timers if t.expired(now)]:
            self._timers.discard(timer)
            timer.fire()
        self._ticker = asyncio.get_running_loop().call_later(TICK_S, self._tick) if self._timers else None

    # -- the pool ---------------------------------------------------------------------------------
    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        left = deadline - time.monotonic()
        if left <= 0:
            raise UpstreamTimeout("no time left to connect to the upstream within timeout.total")
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                ),
                min(self._connect_s, left),
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("connecting to upstream timed out") from exc
        except ssl.SSLError as exc:
            raise UpstreamTlsError("TLS handshake with upstream failed") from exc
        except OSError as exc:
            raise UpstreamConnectError("cannot connect to upstream") from exc
        if self._ssl is not None:
            cert = conn.transport.get_extra_info("peercert") if conn.transport is not None else None
            not_after = cert.get("notAfter") if isinstance(cert, dict) else None
            if isinstance(not_after, str):
                self.certificate_expiry_s = float(ssl.cert_time_to_seconds(not_after))
        self._conns.add(conn)
        return conn

    async def _acquire(self, fresh: bool, deadline: float) -> _Connection:
        """A connection: an idle one, a new one, or one handed on by a finished exchange (a wait
        bounded by ``timeout.pool`` and by what is left of ``deadline``, the request's total)."""
        now = time.monotonic()
        if not fresh:
            idle = self._idle
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to be timed out upstream
                if conn.usable(now):
                    return conn
                conn.close()
        pool_deadline = min(now + self._pool_timeout_s, deadline)
        while self._open >= self._limit:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            # A bounded wait: clients that hold every connection (one that never reads its
            # response, a burst past max_connections) get a 503 rather than a queue forever.
            left = pool_deadline - time.monotonic()
            expiry = loop.call_later(max(left, 0.0), _expire, waiter)
            try:
                handed = await waiter
            except _PoolTimeout:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                raise UpstreamPoolExhausted(
                    f"no connection to the upstream free within {pool_deadline - now:.3g} s"
                    f" (max_connections: {self._limit})"
                ) from None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and (given := waiter.result()) is not None:
                    self._release_conn(given, reusable=True)
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            finally:
                expiry.cancel()
            if handed is not None:
                if handed.usable(time.monotonic()) and not fresh:
                    return handed
                handed.close()
        self._open += 1
        try:
            return await self._connect(deadline)
        except BaseException:
            self._open -= 1
            self._hand_on(None)
            raise

    def _hand_on(self, conn: _Connection | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _forget(self, conn: _Connection) -> None:
        """A connection closed: it no longer counts against the limit."""
        if conn in self._conns:
            self._conns.discard(conn)
            self._open -= 1
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
            self._hand_on(None)

    def _release(self, conn: _Connection) -> None:
        self._release_conn(conn, conn.finish())

    def _release_conn(self, conn: _Connection, reusable: bool) -> None:
        if not reusable or self._closing:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        if not self._hand_on(conn):
            self._idle.append(conn)

    # -- a request --------------------------------------------------------------------------------
    def _head(
        self,
        method: str,
        raw_path_qs: str,
        headers: Sequence[tuple[str, str]],
        body: bool,
        host: str | None = None,
        parsed: bool = False,
        formatted: str = "",
    ) -> bytes:
        """The request head; with a body and no Content-Length, the body goes chunked. ``host``
        is the client's Host when this upstream is given it (``host: client``). ``parsed``: the
        caller vouches that no name or value has a line break (see ``send``); ``formatted``:
        header lines already written out (``Name: value\r\n`` each), appended as they are."""
        if host is None or not self.pass_client_host:
            host = self._host_header
        parts = [f"{method} {self._base_path}{raw_path_qs} HTTP/1.1\r\nHost: {host}\r\n"]
        has_length = False
        for name, value in headers:
            if body and not has_length and len(name) == 14 and name.lower() == "content-length":
                has_length = True
            # Pieces joined once at the end: no string per header line.
            parts.append(name)
            parts.append(": ")
            parts.append(value)
            parts.append("\r\n")
        if formatted:
            parts.append(formatted)
        chunked = body and not has_length
        if chunked:
            parts.append("Transfer-Encoding: chunked\r\n")
        parts.append("\r\n")
        head = "".join(parts)
        # Every line break must be one of ours: a CR or LF inside a name or value would split
        # the header (request smuggling). One count over the head instead of a test per value.
        lines = 3 + len(headers) + chunked + (formatted.count("\r\n") if formatted else 0)
        if not parsed and (head.count("\n") != lines or head.count("\r") != lines):
            bad = next((n for n, v in headers if "\n" in v or "\r" in v or "\n" in n or "\r" in n), "")
            raise UpstreamProtocolError(f"header {bad or 'line'} has a line break")
        return head.encode("latin-1")

    async def send(
        self,
        method: str,
        raw_path_qs: str,
        headers: Sequence[tuple[str, str]] | Mapping[str, str],
        body: BodySource | None,
        expect_continue: bool = False,
        host: str | None = None,
        parsed: bool = False,
        formatted: str = "",
    ) -> UpstreamResponse:
        """Send the request; the caller reads the body and ``release()``s the response. ``host``
        is the client's Host header (sent on when the upstream is configured ``host: client``).
        ``formatted``: more header lines, already written out (``Name: value\r\n`` each): the
        proxy's forwarding headers, the same for every request from one peer and Host.

        Every header is checked for a CR or LF (one would split it: request smuggling) unless
        ``parsed``: the proxy's headers are the client's as the strict HTTP parser accepted them
        (it refuses CR, LF and other control bytes in names and values) plus values the gateway
        builds from those and the peer's address, so the count over the head would find none."""
        if "\r" in raw_path_qs or "\n" in raw_path_qs or " " in raw_path_qs:
            raise UpstreamProtocolError("request target has a space or a line break")
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if expect_continue and body is not None:
            pairs.append(("Expect", "100-continue"))
        else:
            expect_continue = False
        head = self._head(method, raw_path_qs, pairs, body is not None, host, parsed, formatted)
        chunked = head.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
        retryable = body is None and method in IDEMPOTENT
        deadline = time.monotonic() + self._total_s
        conn = await self._acquire(False, deadline)
        try:
            return await self._exchange(conn, method, head, body, chunked, expect_continue, deadline)
        except UpstreamReset as exc:
            if not (retryable and getattr(exc, "before_response", False) and conn.uses > 1):
                raise
        # The reused connection died before the upstream said anything: send once more, fresh.
        conn = await self._acquire(True, deadline)
        return await self._exchange(conn, method, head, body, chunked, expect_continue, deadline)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: BodySource | None,
        chunked: bool,
        expect_continue: bool,
        deadline: float,
    ) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        ex = conn.start(method == "HEAD")
        timer = _Timer(self, conn, time.monotonic(), deadline, self._read_s)
        sender: asyncio.Task[None] | None = None
        try:
            transport = conn.transport
            if transport is None:
                raise _reset_before_response()
            transport.write(head)
            if body is not None:
                ex.sent_body = ex.body_done = False
                if expect_continue:
                    ex.continue_waiter = loop.create_future()
                sender = loop.create_task(self._send_body(conn, ex, body, chunked, timer))
                sender.add_done_callback(_retrieve)
            if ex.status == 0 and ex.error is None:
                ex.headers_waiter = loop.create_future()
                timer.arm(ex.headers_waiter)
                try:
                    await ex.headers_waiter
                except asyncio.CancelledError:
                    ex.error = ex.error or UpstreamReset("request cancelled")
                    raise
                ex.headers_waiter = None
            if ex.error is not None:
                err = ex.error
                if isinstance(err, UpstreamReset) and not ex.received:
                    err.before_response = True  # type: ignore[attr-defined]
                raise err
            if sender is not None and sender.done() and not sender.cancelled():
                exc = sender.exception()
                if isinstance(exc, GatewayError):
                    raise exc
            return UpstreamResponse(conn, ex, timer)
        except BaseException:
            timer.cancel()
            if sender is not None and not sender.done():
                sender.cancel()
            conn.finish()
            conn.close()
            raise

    async def _send_body(
        self, conn: _Connection, ex: _Exchange, body: BodySource, chunked: bool, timer: _Timer
    ) -> None:
        try:
            if ex.continue_waiter is not None:
                # No 100 Continue in time: the body is sent anyway (RFC 9110 15.2.1: a client
                # need not wait indefinitely), so the timeout loses nothing.
                with contextlib.suppress(TimeoutError):
                    go = await asyncio.wait_for(ex.continue_waiter, EXPECT_WAIT_S)
                    if not go:
                        return  # a final response came first; the body is not sent
            while True:
                # While the client is being waited for, the upstream is not late (see _Timer).
                ex.awaiting_client = True
                try:
                    chunk = await body.readany()
                except ClientError:
                    raise  # malformed or stalled: the client's fault, as the server says
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    raise ClientGone("client went away while sending the body") from exc
                except Exception as exc:
                    # Not the client: a defect of ours. Logged with its traceback here; the
                    # request is recorded as 500 gateway_error, so it counts bad.
                    log.error("reading a request body failed", exc_info=exc)
                    raise GatewayError(f"reading the request body failed: {type(exc).__name__}") from exc
                finally:
                    ex.awaiting_client = False
                timer.armed_at = time.monotonic()  # the read timeout runs from the last byte sent
                transport = conn.transport
                if transport is None or conn.closed:
                    return
                if not chunk:
                    if chunked:
                        transport.write(b"0\r\n\r\n")
                    ex.sent_body = True
                    return
                if chunked:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    transport.write(chunk)
                await conn.drain()
        except GatewayError as exc:
            # The upstream has part of a request that will never be finished: that connection
            # is cut, and the exchange fails with the body's error (not as an upstream reset).
            conn.fail_with(exc)
            raise
        except ConnectionError:
            return  # the upstream closed; the response side reports it
        finally:
            ex.body_done = True


class _PoolTimeout(Exception):
    pass


def _expire(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(_PoolTimeout())


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # reported through the exchange, not as "never retrieved"


def _reset_before_response() -> UpstreamReset:
    err = UpstreamReset("upstream closed the connection")
    err.before_response = True  # type: ignore[attr-defined]
    return err
