"""HTTP/1.1 conformance of the upstream client (``gateway.dataplane.upstream``) against real servers.

Three kinds of peer: an aiohttp server, nginx (the upstream most hospitals'
FHIR servers sit behind), and a scripted raw-socket server for the cases no
well-behaved server produces on demand (1xx before the final response, a body
that ends when the connection closes, a connection closed as a request goes
out, garbage).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from gateway.dataplane.errors import (
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from gateway.dataplane.upstream import Upstream, UpstreamResponse
from gateway.sections import TimeoutConfig, UpstreamConfig
from gateway.settings import upstream_settings
from tests.support.services import require_binary
from tests.support.waiting import listening, wait_until
from vitalgate.peers import free_port

# Overriding event_loop_policy is deprecated in pytest-asyncio 1.4 in favour of a conftest-wide
# hook that would run every async test of the suite twice; only this module needs both loops.
pytestmark = pytest.mark.filterwarnings("ignore:Overriding the .event_loop_policy. fixture")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every case on both loops: the gateway runs on uvloop, whose transports differ."""
    if request.param == "uvloop":
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Body:
    """A request body source, as the proxy hands the client aiohttp's StreamReader."""

    def __init__(self, parts: list[bytes], delay_s: float = 0.0) -> None:
        self.parts = list(parts)
        self.delay_s = delay_s
        self.read_parts = 0

    async def readany(self) -> bytes:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # the scripted upstream's delay
        if not self.parts:
            return b""
        self.read_parts += 1
        return self.parts.pop(0)


def client(
    port: int, path: str = "", timeout: dict[str, str] | None = None, max_connections: int = 100
) -> Upstream:
    cfg = UpstreamConfig(
        url=f"http://127.0.0.1:{port}{path}",
        timeout=TimeoutConfig.model_validate(timeout or {}),
        max_connections=max_connections,
    )
    return Upstream("test", upstream_settings(cfg), None)


async def read_all(resp: UpstreamResponse) -> bytes:
    out = bytearray()
    while chunk := await resp.read():
        out += chunk
    return bytes(out)


async def fetch(
    up: Upstream,
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    body: Body | None = None,
    expect: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    resp = await up.send(method, path, headers or {}, body, expect)
    try:
        data = await read_all(resp)
    finally:
        resp.release()
    return resp.status, {k.lower(): v for k, v in resp.headers}, data


# -- an aiohttp upstream ---------------------------------------------------------------------------


class AioUpstream:
    def __init__(self) -> None:
        self.peers: list[tuple[str, int] | None] = []
        self.requests: list[dict[str, object]] = []
        self.active = 0
        self.max_active = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            body = await request.read()
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.path_qs,
                    "headers": dict(request.headers),
                    "body": body,
                    "chunked": request.headers.get("Transfer-Encoding") == "chunked",
                }
            )
            if request.path == "/sleep":
                await asyncio.sleep(float(request.query.get("s", "0.2")))  # an upstream slow on purpose
            if request.path == "/chunked":
                resp = web.StreamResponse(headers={"X-Kind": "chunked"})
                resp.enable_chunked_encoding()
                await resp.prepare(request)
                for i in range(50):
                    await resp.write(b"%05d" % i * 2000)
                await resp.write_eof()
                return resp
            if request.path == "/status":
                return web.Response(status=int(request.query["code"]))
            if request.path == "/close":
                return web.Response(text="bye", headers={"Connection": "close"})
            return web.Response(body=b"echo:" + body, headers={"X-Method": request.method})
        finally:
            self.active -= 1

    async def __aenter__(self) -> AioUpstream:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


# -- a scripted raw-socket upstream ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[int, list[int]]]:
    """A raw TCP server running ``handler`` per connection; yields (port, connection count)."""
    conns: list[int] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, conns
    finally:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    line, *rest = head.split("\r\n")
    headers = {}
    for h in rest:
        if h:
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
    return line, headers


# -- aiohttp upstream ------------------------------------------------------------------------------


async def test_request_and_response_bodies_stream_both_framings() -> None:
    async with AioUpstream() as srv:
        up = client(srv.port)
        try:
            # Known length: sent as is, with the client's Content-Length.
            st, hd, data = await fetch(
                up, "POST", "/fhir/Bundle", {"Content-Length": "10"}, Body([b"01234", b"56789"])
            )
            assert (st, data) == (200, b"echo:0123456789")
            assert srv.requests[-1]["chunked"] is False
            # Unknown length: chunked.
            big = [bytes([65 + i % 26]) * 70000 for i in range(20)]
            st, hd, data = await fetch(up, "PUT", "/fhir/Binary/1", {}, Body(big))
            assert st == 200 and data == b"echo:" + b"".join(big)
            assert srv.requests[-1]["chunked"] is True
            # A chunked response, 100 kB in 50 writes.
            st, hd, data = await fetch(up, "GET", "/chunked")
            assert hd["transfer-encoding"] == "chunked" and hd["x-kind"] == "chunked"
            assert data == b"".join(b"%05d" % i * 2000 for i in range(50))
            # All of it on one kept-alive connection.
            assert len(set(srv.peers)) == 1 and up.open_connections == 1
        finally:
            await up.close()


async def test_head_204_304_have_no_body_and_keep_the_connection() -> None:
    async with AioUpstream() as srv:
        up = client(srv.port)
        try:
            st, hd, data = await fetch(up, "HEAD", "/fhir/Patient/1")
            assert st == 200 and data == b"" and hd["content-length"] == "5"
            for code in (204, 304):
                st, hd, data = await fetch(up, "GET", f"/status?code={code}")
                assert (st, data) == (code, b"")
            st, _, data = await fetch(up, "GET", "/after")
            assert (st, data) == (200, b"echo:")
            assert len(set(srv.peers)) == 1
        finally:
            await up.close()


async def test_connection_close_is_honoured() -> None:
    async with AioUpstream() as srv:
        up = client(srv.port)
        try:
            assert (await fetch(up, "GET", "/close"))[2] == b"bye"
            assert up.open_connections == 0
            assert (await fetch(up, "GET", "/x"))[0] == 200
            assert len(set(srv.peers)) == 2
        finally:
            await up.close()


async def test_pool_limit_queues_requests_in_order() -> None:
    async with AioUpstream() as srv:
        up = client(srv.port, max_connections=3)
        try:
            results = await asyncio.gather(*(fetch(up, "GET", "/sleep?s=0.1") for _ in range(12)))
            assert [r[0] for r in results] == [200] * 12
            assert srv.max_active == 3
            assert len(set(srv.peers)) == 3
            assert up.open_connections == 3 and up.idle_connections == 3
        finally:
            await up.close()


async def test_read_and_total_timeouts() -> None:
    async with AioUpstream() as srv:
        up = client(srv.port, timeout={"read": "200ms", "total": "5s"})
        try:
            t0 = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await fetch(up, "GET", "/sleep?s=2")
            assert time.monotonic() - t0 < 1.5
            assert up.open_connections == 0  # a timed-out connection is never reused
            assert (await fetch(up, "GET", "/ok"))[0] == 200
        finally:
            await up.close()
        up = client(srv.port, timeout={"total": "300ms"})
        try:
            with pytest.raises(UpstreamTimeout):
                await fetch(up, "GET", "/sleep?s=2")
        finally:
            await up.close()


async def test_connect_errors() -> None:
    up = client(free_port())
    try:
        with pytest.raises(UpstreamConnectError):
            await fetch(up)
        assert up.open_connections == 0
    finally:
        await up.close()


# -- scripted upstream -----------------------------------------------------------------------------


async def test_informational_responses_and_expect_continue() -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, headers = await read_head(reader)
            if headers.get("expect") == "100-continue":
                if "reject" in line:
                    writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            seen.append((line, headers, body))
            # An unasked-for 103 Early Hints, then the final response.
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n")
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok")
            await writer.drain()

    async with scripted(handler) as (port, _conns):
        up = client(port)
        try:
            st, hd, data = await fetch(up, "POST", "/a", {"Content-Length": "3"}, Body([b"abc"]), True)
            assert (st, data, hd.get("x-final")) == (201, b"ok", "yes")
            assert "link" not in hd
            assert seen[-1][1]["expect"] == "100-continue" and seen[-1][2] == b"abc"
            # The upstream refuses before the body: the body is not sent, the answer goes back.
            body = Body([b"x" * 10])
            st, _, _ = await fetch(up, "POST", "/reject", {"Content-Length": "10"}, body, True)
            assert st == 413 and body.read_parts == 0
            assert up.open_connections == 0  # the unsent body makes the connection unusable
        finally:
            await up.close()


async def test_body_until_close_and_half_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(5):
            writer.write(b"part%d;" % i)
            await writer.drain()
            await asyncio.sleep(0.01)  # the body arrives in parts
        writer.write_eof()  # half-close: the body ends here

    async with scripted(handler) as (port, _conns):
        up = client(port)
        try:
            st, _, data = await fetch(up)
            assert (st, data) == (200, b"part0;part1;part2;part3;part4;")
            assert up.open_connections == 0
        finally:
            await up.close()


async def test_idle_connection_closed_by_upstream_is_not_used() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()
        # Keep-alive was promised, but the upstream closes the idle connection at once.

    async with scripted(handler) as (port, conns):
        up = client(port)
        try:
            for _ in range(3):
                assert (await fetch(up))[2] == b"hi"
                await asyncio.sleep(0.05)  # the FIN arrives while idle
            assert len(conns) == 3
        finally:
            await up.close()


async def test_retry_only_idempotent_on_a_connection_that_died_unanswered() -> None:
    heads: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            line, headers = await read_head(reader)
            heads.append(line)
            await reader.readexactly(int(headers.get("content-length", "0")))
            if not first:
                return  # the second request on a connection: close without a word
            first = False
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
            await writer.drain()

    async with scripted(handler) as (port, _conns):
        up = client(port)
        try:
            assert (await fetch(up, "GET", "/1"))[2] == b"hi"
            # Reused connection dies unanswered: a GET is sent again, on a new connection.
            assert (await fetch(up, "GET", "/2"))[2] == b"hi"
            assert heads == ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1", "GET /2 HTTP/1.1"]
            # A POST is not: the upstream may have acted on it.
            with pytest.raises(UpstreamReset):
                await fetch(up, "POST", "/3", {"Content-Length": "1"}, Body([b"x"]))
            assert heads[-1] == "POST /3 HTTP/1.1" and heads.count("POST /3 HTTP/1.1") == 1
            # Nor is a GET on a fresh connection that dies: that is the upstream failing.
        finally:
            await up.close()


async def test_invalid_response_and_extra_bytes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _ = await read_head(reader)
        if "garbage" in line:
            writer.write(b"SMTP ready\r\n\r\n")
        else:
            # A response, then bytes nobody asked for.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # (the upstream holds the connection open after its bytes)

    async with scripted(handler) as (port, _conns):
        up = client(port)
        try:
            with pytest.raises(UpstreamProtocolError):
                await fetch(up, "GET", "/garbage")
            st, _, data = await fetch(up, "GET", "/extra")
            assert (st, data) == (200, b"hi")
            assert up.open_connections == 0  # not trusted again
        finally:
            await up.close()


async def test_mid_body_close_is_a_reset() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()

    async with scripted(handler) as (port, _conns):
        up = client(port)
        try:
            resp = await up.send("GET", "/", {}, None)
            with pytest.raises(UpstreamReset):
                await read_all(resp)
            resp.release()
            assert up.open_connections == 0
        finally:
            await up.close()


async def test_base_path_and_host_header() -> None:
    async with AioUpstream() as srv:
        up = client(srv.port, path="/base")
        try:
            await fetch(up, "GET", "/fhir/Patient?_count=1", {"X-A": "1"})
            req = srv.requests[-1]
            assert req["path"] == "/base/fhir/Patient?_count=1"
            headers = req["headers"]
            assert isinstance(headers, dict)
            assert headers["Host"] == f"127.0.0.1:{srv.port}" and headers["X-A"] == "1"
            assert "User-Agent" not in headers and "Accept-Encoding" not in headers
        finally:
            await up.close()


async def test_line_breaks_in_headers_are_refused_before_sending() -> None:
    """A CR or LF inside a header would split it into two (request smuggling): nothing goes out."""
    received: list[dict[str, str]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _line, headers = await read_head(reader)
            received.append(headers)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with scripted(record) as (port, _conns):
        up = client(port)
        try:
            for headers in (
                {"X-A": "1\r\nX-Injected: 1"},
                {"X-A": "1\nX-Injected: 1"},
                {"X-A": "1\r"},
                {"X-Bad\r\nX-Injected": "1"},
            ):
                with pytest.raises(UpstreamProtocolError, match="line break"):
                    await up.send("GET", "/", {"X-Ok": "fine", **headers}, None)
            status, _h, body = await fetch(up, "GET", "/", {"X-Ok": "fine"})
        finally:
            await up.close()
    assert (status, body) == (200, b"ok")
    assert len(received) == 1 and received[0]["x-ok"] == "fine" and "x-injected" not in received[0]


# -- nginx upstream --------------------------------------------------------------------------------


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[int]:
    binary = require_binary("nginx")
    port = free_port()
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "Patient.json").write_bytes(b'{"resourceType":"Patient"}' * 100)
    (tmp_path / "conf.conf").write_text(
        ("user root;\n" if os.getuid() == 0 else "")
        + "daemon off; worker_processes 1; pid nginx.pid; error_log stderr warn;\n"
        "events { worker_connections 256; }\n"
        "http { access_log off; keepalive_requests 3; keepalive_timeout 1s;\n"
        f"  client_body_temp_path {tmp_path}/body;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {tmp_path}/html; client_max_body_size 50m;\n"
        "    location /fhir/ { alias " + str(tmp_path) + "/html/; }\n"
        "    location = /nocontent { return 204; }\n"
        "    location = /upload { "
        "      proxy_pass http://127.0.0.1:" + str(port) + "/sink; }\n"
        '    location = /sink { return 200 "$content_length"; }\n'
        "    location = /gz { gzip on; gzip_min_length 1; gzip_types *; "
        "      alias " + str(tmp_path) + "/html/Patient.json; }\n"
        "  }\n}\n"
    )
    proc = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-c", str(tmp_path / "conf.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_until(lambda: listening(port), "nginx listening")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow
async def test_nginx_keepalive_limits_and_idle_timeout(nginx: int) -> None:
    up = client(nginx)
    try:
        body = b'{"resourceType":"Patient"}' * 100
        # keepalive_requests 3: nginx says Connection: close on the third; nothing fails.
        for _ in range(10):
            st, hd, data = await fetch(up, "GET", "/fhir/Patient.json")
            assert (st, data) == (200, body)
        # keepalive_timeout 1s: idle connections are closed by nginx; the next request works.
        await asyncio.sleep(1.5)  # past nginx's 1 s keepalive_timeout: time itself must pass
        for _ in range(3):
            assert (await fetch(up, "GET", "/fhir/Patient.json"))[0] == 200
        # HEAD: nginx announces the length, sends no body; the connection stays usable.
        st, hd, data = await fetch(up, "HEAD", "/fhir/Patient.json")
        assert (st, data, hd["content-length"]) == (200, b"", str(len(body)))
        assert (await fetch(up, "GET", "/nocontent"))[:3:2] == (204, b"")
        # 304 from If-None-Match on the file's ETag.
        st, hd, _ = await fetch(up, "GET", "/fhir/Patient.json")
        st, _, data = await fetch(up, "GET", "/fhir/Patient.json", {"If-None-Match": hd["etag"]})
        assert (st, data) == (304, b"")
        # gzip: nginx answers chunked; the bytes pass through undecoded.
        st, hd, data = await fetch(up, "GET", "/gz", {"Accept-Encoding": "gzip"})
        assert hd.get("content-encoding") == "gzip" and data[:2] == b"\x1f\x8b"
        # A chunked upload of 3 MB: nginx de-chunks it and counts the bytes.
        parts = [b"z" * 100_000 for _ in range(30)]
        st, _, data = await fetch(up, "POST", "/upload", {}, Body(parts))
        assert (st, data) == (200, b"3000000")
        st, _, data = await fetch(up, "POST", "/upload", {"Content-Length": "5"}, Body([b"12345"]))
        assert (st, data) == (200, b"5")
    finally:
        await up.close()
