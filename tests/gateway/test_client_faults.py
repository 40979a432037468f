"""Whose fault is it: what a careless or hostile client does is its own 4xx, never the upstream's
5xx, and no client can stall the gateway (raw sockets, a scripted upstream)."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.server import Gateway
from tests.support.gateway import GatewayProcess, gateway_config, running_gateway
from tests.support.peers import Upstream
from tests.support.readers import counter_value, read_log
from tests.support.waiting import wait_until_async
from vitalgate.peers import free_port


class RawUpstream:
    """An upstream that records the bytes of each connection and whether the gateway closed it.

    It answers 200 once a request's body is whole (Content-Length or a final chunk) and, with
    ``head`` set, answers with that response head instead."""

    def __init__(self, head: bytes | None = None) -> None:
        self.conns: list[dict[str, Any]] = []
        self.head = head
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: dict[str, Any] = {"data": b"", "closed": False}
        self.conns.append(conn)
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                conn["closed"] = True
                break
            conn["data"] += chunk
            head, sep, body = conn["data"].partition(b"\r\n\r\n")
            if not sep:
                continue
            lower = head.lower()
            whole = b"transfer-encoding: chunked" in lower and body.endswith(b"0\r\n\r\n")
            whole = whole or (b"content-length" not in lower and b"chunked" not in lower)
            if b"content-length: " in lower:
                length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
                whole = len(body) >= length
            if whole:
                if self.head is not None:
                    writer.write(self.head)
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                    )
                await writer.drain()
                conn["answered"] = True
                conn["data"] = b""
        writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait(self, predicate: Any, what: str) -> None:
        await wait_until_async(predicate, f"the upstream sees {what}")


@asynccontextmanager
async def raw_upstream(head: bytes | None = None) -> AsyncIterator[RawUpstream]:
    up = RawUpstream(head)
    await up.start()
    try:
        yield up
    finally:
        await up.stop()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return int(lines[0].split()[1]), headers, body


async def _ask(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: its response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await _read_response(reader)
    finally:
        writer.close()


def _config(tmp: Path, port: int, **limits: Any) -> Path:
    # The upstream's timeouts are far longer than the client's: a 504 here would mean the
    # client's fault was charged to the upstream (and the test would wait for it, then fail).
    return gateway_config(
        tmp, port, timeout_total="20s", extra={"limits": {"shutdown_timeout": "5s", **limits}}
    )


POST = (
    b"POST /fhir/Patient HTTP/1.1\r\nHost: gw\r\nX-Facility-ID: riverside\r\n"
    b"Content-Type: application/fhir+json\r\n"
)


@pytest.mark.parametrize(
    "bad",
    [
        b"zz\r\nhello\r\n",  # a chunk size that is not hex
        b"fffffffffffffffffffff\r\n",  # a size that overflows
        b'5;ext="unterminated\r\nhello\r\n',  # a quoted extension llhttp refuses
        b"5\nhello\n0\n\n",  # bare LF chunk lines
    ],
)
async def test_a_malformed_chunked_body_after_the_head_is_400_and_cuts_the_upstream(
    tmp_path: Path, bad: bytes
) -> None:
    async with raw_upstream() as up:
        async with running_gateway(_config(tmp_path, up.port)) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
            writer.write(POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await up.wait(lambda: up.conns and b"hello" in up.conns[0]["data"], "the first chunk")
            writer.write(bad)
            status, headers, body = await _read_response(reader)
            assert status == 400 and json.loads(body)["error"] == "invalid_body"
            assert headers["connection"] == "close"
            # The upstream's half-sent request is abandoned: its connection is closed.
            await up.wait(lambda: up.conns[0]["closed"], "its connection closed")
            assert "answered" not in up.conns[0]
            writer.close()
    (line,) = read_log(tmp_path / "access.log")
    assert (line["http.response.status_code"], line["error.type"], line["service"]) == (
        400,
        "invalid_body",
        "fhir",
    )


async def test_a_body_shorter_than_its_length_then_silence_is_408(tmp_path: Path) -> None:
    async with raw_upstream() as up:
        async with running_gateway(_config(tmp_path, up.port, client_body_timeout="300ms")) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
            writer.write(POST + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
            status, headers, body = await _read_response(reader)
            assert status == 408 and json.loads(body)["error"] == "client_timeout"
            assert headers["connection"] == "close"
            await up.wait(lambda: up.conns and up.conns[0]["closed"], "its connection closed")
            assert up.conns[0]["data"].endswith(b"x" * 10) and "answered" not in up.conns[0]
            writer.close()
    (line,) = read_log(tmp_path / "access.log")
    assert (line["http.response.status_code"], line["error.type"]) == (408, "client_timeout")


async def test_a_slow_upload_is_not_charged_to_the_upstream(tmp_path: Path) -> None:
    """The upstream's read timeout (300 ms) is shorter than the upload (10 bytes, 100 ms apart):
    while the client is still sending, the upstream is not late."""
    async with raw_upstream() as up:
        cfg = gateway_config(
            tmp_path,
            up.port,
            extra={
                "upstreams": {"fhir": {"url": f"http://127.0.0.1:{up.port}", "timeout": {"read": "300ms"}}},
                "limits": {"client_body_timeout": "2s", "shutdown_timeout": "5s"},
            },
        )
        async with running_gateway(cfg) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
            writer.write(POST + b"Content-Length: 10\r\n\r\n")
            for _ in range(10):
                await asyncio.sleep(0.1)  # a slow client: 1 s in all, inside the 2 s timeout
                writer.write(b"x")
            status, _, _ = await _read_response(reader)
            assert status == 200
            writer.close()
    (line,) = read_log(tmp_path / "access.log")
    assert line["http.response.status_code"] == 200 and "error.type" not in line


async def test_a_chunked_body_with_a_trailer_in_one_segment(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(
            POST
            + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: ZebulonQuixwhistle\r\n\r\n"
        )
        status, _, body = await _read_response(reader)
        assert status == 200 and json.loads(body)["received_bytes"] == 5
        writer.close()
    # The trailer is not passed on (the body is framed afresh upstream, as nginx does).
    assert not any("trailer" in k.lower() for k in upstream.seen[0]["headers"])
    (line,) = read_log(tmp_path / "access.log")
    assert line["http.response.status_code"] == 200 and "error.type" not in line


async def test_a_head_that_trickles_in_is_cut_with_408(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(_config(tmp_path, upstream.port, header_timeout="500ms")) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: gw\r\nX-Facility-ID: riverside\r\n")
        got = b""
        for _ in range(40):  # a header byte every 100 ms (slowloris) until the gateway answers
            writer.write(b"X")
            try:
                got = await asyncio.wait_for(reader.read(4096), 0.1)
                break
            except TimeoutError:
                continue
        got += await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert got.startswith(b"HTTP/1.1 408 ") and b'"header_timeout"' in got
    (line,) = read_log(tmp_path / "access.log")
    assert (line["http.response.status_code"], line["error.type"], line["facility"]) == (
        408,
        "header_timeout",
        "riverside",
    )
    assert not upstream.seen


def _client_connections(gw: Gateway) -> int:
    """Client connections the proxy listener holds now (no metric counts half-sent heads)."""
    assert gw._server is not None
    return len(gw._server.conns)


async def test_the_connection_cap_answers_503_and_the_admin_listener_stays_reachable(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with running_gateway(_config(tmp_path, upstream.port, max_client_connections=3)) as gw:
        held = [await asyncio.open_connection("127.0.0.1", gw.proxy_port) for _ in range(3)]
        for _, w in held:
            w.write(b"GET /fhir/Patient/1 HTTP/1.1\r\n")  # half-sent heads
        await wait_until_async(lambda: _client_connections(gw) == 3, "the three held connections accepted")
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        refused = await asyncio.wait_for(reader.read(), 5)
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in refused
        writer.close()

        def admin(path: str) -> tuple[int, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()

        assert (await asyncio.to_thread(admin, "/healthz"))[0] == 200
        _, metrics = await asyncio.to_thread(admin, "/metrics")
        assert counter_value(metrics, "vitalgate_client_connections_refused_total") == 1
        held[0][1].close()  # room again
        await wait_until_async(lambda: _client_connections(gw) == 2, "the closed connection let go")
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, _, _ = await _read_response(reader)
        assert status == 200
        for _, w in [*held[1:], (None, writer)]:
            w.close()


@pytest.mark.slow
def test_under_a_descriptor_limit_half_sent_heads_leave_the_admin_listener_up(tmp_path: Path) -> None:
    """At a 128-descriptor limit, 108 half-sent heads: the default cap (the limit less the
    upstream pools and the gateway's own files) refuses the excess with 503, and /healthz and a
    real request still work."""
    upstream = f"http://127.0.0.1:{free_port()}"
    pools = {
        "fhir": {"url": upstream, "max_connections": 20},
        "scheduling": {"url": upstream, "max_connections": 4},
    }
    cfg = gateway_config(tmp_path, free_port(), extra={"upstreams": pools})
    gw = GatewayProcess(cfg, open_files=128)
    socks: list[socket.socket] = []
    try:
        port = int(gw.proxy.rsplit(":", 1)[1])
        refused = 0
        for _ in range(108):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: gw\r\n")
            socks.append(s)
        for s in socks:
            s.settimeout(0.2)
            try:
                if s.recv(4096).startswith(b"HTTP/1.1 503 "):
                    refused += 1
            except TimeoutError:
                pass
        assert refused >= 108 - (128 - 64 - 24)
        with urllib.request.urlopen(gw.admin + "/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        for s in socks:
            s.close()
        gw.terminate()
    assert "client connection limit reached" in gw.stderr_path.read_text()


async def test_an_upstream_response_head_too_large_is_502(tmp_path: Path) -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(2000))
    async with raw_upstream(huge + b"Content-Length: 0\r\n\r\n") as up:
        async with running_gateway(_config(tmp_path, up.port, max_upstream_header_size=16384)) as gw:
            status, _, body = await _ask(gw.proxy_port, b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 502 and json.loads(body)["error"] == "upstream_protocol_error"
    assert "16384" in json.loads(body)["detail"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /fhir/Patient/1 HTTP/1.1\r\nX-Facility-ID: riverside\r\n\r\n", 400),  # no Host
        (b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two
        (b"POST /fhir/Patient HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /fhir/Patient HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /fhir/Patient HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
        (b"CONNECT upstream:443 HTTP/1.1\r\nHost: upstream:443\r\n\r\n", 501),
        (b"GET /fhir/Patient/1\r\n\r\n", 400),  # HTTP/0.9
    ],
)
async def test_stricter_http_where_nginx_is_stricter(
    tmp_path: Path, upstream: Upstream, raw: bytes, status: int
) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(raw)
        got = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert got.startswith(b"HTTP/1.1 %d " % status), got[:100]
    assert not upstream.seen  # nothing of it went upstream
    (line,) = read_log(tmp_path / "access.log")
    assert line["http.response.status_code"] == status and line["service"] == "none"


async def test_an_absolute_form_target_is_served_with_its_authority_as_host(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        status, _, _ = await _ask(
            gw.proxy_port,
            b"GET http://ehr.example.org/fhir/Patient/1?_count=1 HTTP/1.1\r\nHost: other\r\n\r\n",
        )
    assert status == 200
    seen = upstream.seen[0]
    assert seen["path_qs"] == "/fhir/Patient/1?_count=1" and seen["headers"]["Host"] == "ehr.example.org"
    (line,) = read_log(tmp_path / "access.log")
    assert line["http.route"] == "/fhir/Patient/{id}"


def _one_connection(tmp: Path, port: int, **timeouts: str) -> Path:
    upstreams = {
        "fhir": {
            "url": f"http://127.0.0.1:{port}",
            "max_connections": 1,
            "timeout": {"total": "20s", **timeouts},
        }
    }
    return gateway_config(
        tmp,
        port,
        extra={
            "upstreams": upstreams,
            # Without response buffering: the client's pace holds the upstream connection (a
            # spooled response frees it at once: tests/gateway/test_spool.py).
            "limits": {"client_write_timeout": "500ms", "shutdown_timeout": "5s", "max_temp_file_size": 0},
        },
    )


async def test_a_client_that_never_reads_is_cut_and_frees_the_upstream(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with running_gateway(_one_connection(tmp_path, upstream.port)) as gw:
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        # 64 MB that this client will not read: the gateway's buffers fill, then it waits.
        writer.write(b"GET /fhir/Binary/1 HTTP/1.1\r\nHost: gw\r\nX-Test-Stream-Bytes: 67108864\r\n\r\n")
        await writer.drain()
        # The one upstream connection is held by it until the write timeout frees it.
        assert (await _ask(gw.proxy_port, b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: gw\r\n\r\n"))[0] == 200
        writer.close()
    log = read_log(tmp_path / "access.log")
    assert [(r["http.response.status_code"], r.get("error.type")) for r in log] == [
        (408, "client_timeout"),
        (200, None),
    ]


async def test_waiting_for_a_pool_connection_is_bounded(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(_one_connection(tmp_path, upstream.port, pool="300ms")) as gw:
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        slow_writer.write(
            b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: gw\r\nX-Test-Fault: slow\r\nX-Test-Sleep: 2\r\n\r\n"
        )
        await wait_until_async(lambda: len(upstream.seen) == 1, "the slow request holds the only connection")
        status, _, body = await _ask(gw.proxy_port, b"GET /fhir/Patient/2 HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert status == 503 and json.loads(body)["error"] == "upstream_pool_exhausted"
        assert (await _read_response(slow_reader))[0] == 200
        slow_writer.close()
    log = read_log(tmp_path / "access.log")
    assert [(r["http.response.status_code"], r.get("error.type")) for r in log] == [
        (503, "upstream_pool_exhausted"),
        (200, None),
    ]
