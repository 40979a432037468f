"""HTTP/1.1 conformance of the proxy listener (``gateway.dataplane.httpserver``), over raw sockets.

Each case speaks bytes to a running gateway (in front of the aiohttp test
upstream) and reads the bytes back, so nothing in between can paper over a
framing mistake: pipelining, HTTP/1.0, ``Connection: close``, ``Expect:
100-continue``, chunked request bodies, oversized headers, HEAD, clients that
leave in the middle.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httptools

from tests.support.gateway import gateway_config, running_gateway
from tests.support.peers import Upstream
from tests.support.readers import histogram_counts, read_log
from tests.support.waiting import wait_until_async


class Responses:
    """Parses what the gateway sends back: a list of (status, headers, body)."""

    def __init__(self, head_requests: int = 0) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[str, str], bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = b""
        self.head_requests = head_requests
        self.started = False

    def on_status(self, status: bytes) -> None:
        self.started = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def eof(self) -> None:
        """The connection closed: a response delimited by the close ends here."""
        if self.started:
            self.done.append((self.parser.get_status_code(), self._headers, self._body))
            self.started = False

    def on_headers_complete(self) -> None:
        if self.head_requests:
            self.head_requests -= 1
            self.done.append((self.parser.get_status_code(), self._headers, b""))
            self._headers = {}
            self.started = False
            self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""
        self.started = False


async def exchange(
    port: int, data: bytes | list[bytes], n: int, head_requests: int = 0, pause_s: float = 0.0
) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    """Send the bytes (parts with a pause between), read ``n`` responses; whether the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parts = data if isinstance(data, list) else [data]
    for part in parts:
        writer.write(part)
        await writer.drain()
        if pause_s:
            await asyncio.sleep(pause_s)  # a client that pauses between its writes
    got = Responses(head_requests)
    closed = False
    while len(got.done) < n:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            closed = True
            got.eof()
            break
        got.parser.feed_data(chunk)
    if not closed:
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False
    writer.close()
    return got.done, closed


async def _metrics(admin_port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2].decode()


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: gw\r\nX-Facility-ID: riverside\r\n{extra}\r\n".encode()


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        data = get("/fhir/Patient/1") + get("/fhir/Patient/2") + get("/unrouted") + get("/fhir/Patient/3")
        got, closed = await exchange(gw.proxy_port, data, 4)
    assert [s for s, _, _ in got] == [200, 200, 404, 200]
    assert [json.loads(b).get("path") for _, _, b in got] == [
        "/fhir/Patient/1",
        "/fhir/Patient/2",
        None,
        "/fhir/Patient/3",
    ]
    assert not closed  # keep-alive


async def test_http10_and_connection_close(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        got, closed = await exchange(gw.proxy_port, get("/fhir/Patient/1", version="1.0"), 1)
        assert got[0][0] == 200 and closed  # HTTP/1.0 without keep-alive: closed after
        got, closed = await exchange(
            gw.proxy_port, get("/fhir/Patient/1", "Connection: keep-alive\r\n", "1.0"), 1
        )
        assert got[0][1]["connection"].lower() == "keep-alive" and not closed
        assert "transfer-encoding" not in got[0][1]  # no chunked coding to an HTTP/1.0 client
        got, closed = await exchange(gw.proxy_port, get("/fhir/Patient/1", "Connection: close\r\n"), 1)
        assert got[0][1]["connection"] == "close" and closed
        # A streamed (chunked upstream) response to HTTP/1.0: delimited by the close.
        got, closed = await exchange(
            gw.proxy_port, get("/fhir/Binary/1", "X-Test-Stream-Bytes: 200000\r\n", "1.0"), 1
        )
        assert len(got[0][2]) == 200_000 and closed


async def test_chunked_request_body_and_expect_continue(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        head = (
            b"POST /fhir/Bundle HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/fhir+json\r\n\r\n"
        )
        chunks = [head, b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]
        got, _ = await exchange(gw.proxy_port, chunks, 1, pause_s=0.05)
        assert got[0][0] == 200 and json.loads(got[0][2])["received_bytes"] == 11
        # Expect: 100-continue: the client waits for 100 before sending the body.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(
            b"PUT /fhir/Binary/7 HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"abcd")
        await writer.drain()
        final = Responses()
        while not final.done:
            final.parser.feed_data(await asyncio.wait_for(reader.read(65536), 5))
        writer.close()
        assert final.done[0][0] == 200 and json.loads(final.done[0][2])["received_bytes"] == 4
    assert upstream.seen[-1]["headers"].get("Expect") == "100-continue"


async def test_head_and_no_body_statuses(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        data = (
            b"HEAD /fhir/Patient/1 HTTP/1.1\r\nHost: gw\r\n\r\n"
            + get("/fhir/Patient/1", "X-Test-Fault: status:204\r\n")
            + get("/fhir/Patient/2")
        )
        got, closed = await exchange(gw.proxy_port, data, 3, head_requests=1)
    assert got[0][0] == 200 and int(got[0][1]["content-length"]) > 0 and got[0][2] == b""
    assert got[1][0] == 204 and got[1][2] == b""
    assert got[2][0] == 200 and json.loads(got[2][2])["path"] == "/fhir/Patient/2"
    assert not closed


async def test_oversized_and_malformed_requests_close_with_4xx(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        big = get("/fhir/Patient/1", "X-Big: " + "a" * 20000 + "\r\n")
        got, closed = await exchange(gw.proxy_port, big, 1)
        assert got[0][0] == 431 and closed
        got, closed = await exchange(gw.proxy_port, b"GET /\x00 HTTP/1.1\r\n\r\n", 1)
        assert got[0][0] == 400 and closed
        # A good request pipelined before a bad one is still answered.
        # (answered with Connection: close: nothing may follow it, so the bad one gets nothing)
        got, closed = await exchange(gw.proxy_port, get("/fhir/Patient/1") + b"BAD REQUEST\r\n\r\n", 1)
        assert [g[0] for g in got] == [200] and got[0][1]["connection"] == "close" and closed
        metrics = await _metrics(gw.admin_port)
    # Every refused request is seen: a log line and a sample each (service "none").
    log = read_log(tmp_path / "access.log")
    # The facility is attributed from what was parsed before the fault (X-Facility-ID here).
    assert [
        (r["http.response.status_code"], r.get("error.type"), r["service"], r["facility"]) for r in log
    ] == [
        (431, "header_too_large", "none", "riverside"),
        (400, "bad_request", "none", "unknown"),
        (400, "bad_request", "none", "unknown"),  # (refused while the one before it ran)
        (200, None, "fhir", "riverside"),
    ]
    assert log[0]["http.request.method"] == "_OTHER" and "http.route" not in log[0]
    counts = histogram_counts(metrics)
    assert counts[("unknown", "none", "", "_OTHER", "400")] == 2
    assert counts[("riverside", "none", "", "_OTHER", "431")] == 1


async def test_client_leaving_mid_response_is_recorded_as_499(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(get("/fhir/Binary/1", "X-Test-Stream-Bytes: 50000000\r\n"))
        await writer.drain()
        await reader.read(100000)
        writer.transport.abort()  # reset, mid-body

        async def recorded_499() -> bool:
            counts = histogram_counts(await _metrics(gw.admin_port))
            return any(key[4] == "499" for key in counts)

        await wait_until_async(recorded_499, "the cut request recorded as 499")
        # The gateway keeps serving.
        got, _ = await exchange(gw.proxy_port, get("/fhir/Patient/1"), 1)
        assert got[0][0] == 200
    statuses = [
        (r["http.response.status_code"], r.get("error.type")) for r in read_log(tmp_path / "access.log")
    ]
    assert statuses == [(499, "client_disconnect"), (200, None)]


async def test_a_client_that_half_closes_gets_every_answer(tmp_path: Path, upstream: Upstream) -> None:
    """A client may send its requests, then close its sending side (``shutdown(SHUT_WR)``):
    each request is still answered, the last with Connection: close."""
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(get("/fhir/Patient/1") + get("/fhir/Patient/2"))
        writer.write_eof()
        got = Responses()
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            got.parser.feed_data(chunk)
        writer.close()
    assert [(s, json.loads(b)["path"]) for s, _, b in got.done] == [
        (200, "/fhir/Patient/1"),
        (200, "/fhir/Patient/2"),
    ]
    assert got.done[0][1].get("connection") != "close" and got.done[1][1]["connection"] == "close"
