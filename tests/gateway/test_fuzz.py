"""Fuzzing the proxy listener: request heads and bodies mutated from valid ones.

For every input the gateway answers with well-formed responses or closes, keeps serving a
valid request sent afterwards, and sends upstream only requests it parsed from the input (a
method and target that are in it): nothing is smuggled past the parser.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import fetch

SEEDS = [
    b"GET /fhir/Patient/1?name=x HTTP/1.1\r\nHost: gw\r\nX-Facility-ID: riverside\r\nAccept: */*\r\n\r\n",
    b"POST /fhir/Patient HTTP/1.1\r\nHost: gw\r\nContent-Type: application/fhir+json\r\nContent-Length: 13\r\n\r\n"
    b'{"id": "abc"}',
    b"PUT /fhir/Patient/2 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: gw\r\n\r\nGET /scheduling/appointments/7 HTTP/1.1\r\nHost: gw\r\n\r\n",
]
TOKENS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b":",
    b"\t",
    b"\xff",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: -1\r\n",
    b"Host: other\r\n",
    b"Expect: 100-continue\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"/../..",
    b"%2f",
    b"%00",
    b"HTTP/1.0",
    b"GET /fhir/Patient/9 HTTP/1.1\r\nHost: gw\r\n\r\n",
]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "byte"]))
        if op == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "replace":
            data[at : at + 1] = draw(st.sampled_from(TOKENS))
        else:
            data[at:at] = bytes([draw(st.integers(0, 255))])
    return bytes(data)


class _Responses:
    """httptools' response parser over what came back: it raises on anything malformed."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # nothing more comes: answer or close
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass  # a reset after an answer, or a head still awaited: both end the exchange
        return got


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, module_peers: BackgroundPeers
) -> Iterator[tuple[BackgroundPeers, GatewayProcess]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    peers = module_peers
    cfg = gateway_config(
        tmp, peers.upstream.port, extra={"limits": {"header_timeout": "1s", "client_body_timeout": "1s"}}
    )
    gw = GatewayProcess(cfg)
    yield peers, gw
    gw.terminate()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=requests())
def test_mutated_requests(gateway: tuple[BackgroundPeers, GatewayProcess], data: bytes) -> None:
    peers, gw = gateway
    port = int(gw.proxy.rsplit(":", 1)[1])
    before = len(peers.upstream.seen)
    got = _exchange(port, data)
    responses = _Responses()
    responses.parser.feed_data(got)  # well-formed, or nothing at all
    assert all(100 <= s <= 599 for s in responses.statuses)
    for seen in peers.upstream.seen[before:]:
        # Only what the gateway parsed from this input went upstream.
        assert seen["method"].encode() in data, (seen, data)
        assert seen["path_qs"].split("?")[0].rsplit("/", 1)[-1].encode() in data, (seen, data)
    assert gw.proc.poll() is None
    assert fetch(gw.proxy + "/fhir/Patient/1") == 200  # still serving
