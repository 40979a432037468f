"""What an attacker sends: paths that climb, client-chosen trace state (raw sockets)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.support.gateway import gateway_config, running_gateway
from tests.support.peers import Upstream, start_sink
from tests.support.readers import read_log
from tests.support.waiting import wait_until_async
from vitalgate.otlpsink import OtlpSink


async def _raw(port: int, target: str, extra: str = "") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: gw\r\n{extra}Connection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


async def test_paths_that_climb_are_refused_and_dot_segments_removed(
    tmp_path: Path, upstream: Upstream
) -> None:
    # An upstream with a base path: nothing may reach above it.
    ups = {"scheduling": {"url": f"http://127.0.0.1:{upstream.port}/base"}}
    cfg = gateway_config(tmp_path, upstream.port, extra={"upstreams": ups})
    climbing = [
        "/scheduling/../../internal-admin/users",
        "/scheduling/..%2f..%2finternal-admin/users",
        "/scheduling/appointments/..%2F..%2F..%2Finternal-admin",
        "/scheduling/%2e%2e/%2e%2e/internal-admin/users",
        "/scheduling/..%5c..%5cinternal-admin",
        "/scheduling/..\\..\\internal-admin",
    ]
    async with running_gateway(cfg) as gw:
        for target in climbing:
            reply = await _raw(gw.proxy_port, target)
            assert reply.startswith(b"HTTP/1.1 400 "), (target, reply[:80])
            assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"] == "invalid_path"
        reply = await _raw(gw.proxy_port, "/scheduling/appointments/../appointments/%2e/7?x=1")
        assert reply.startswith(b"HTTP/1.1 200 ")
    assert [s["path_qs"] for s in upstream.seen] == ["/base/scheduling/appointments/7?x=1"]
    log = read_log(tmp_path / "access.log")
    refused = [r for r in log if r.get("error.type") == "invalid_path"]
    assert len(refused) == len(climbing)
    assert {(r["service"], r["http.response.status_code"]) for r in refused} == {("none", 400)}
    assert log[-1]["http.route"] == "/scheduling/appointments/{id}"


async def test_tracestate_is_forwarded_but_never_exported(tmp_path: Path, upstream: Upstream) -> None:
    spans = OtlpSink(keep_raw=True)
    runner, otlp_port = await start_sink(spans)
    state = "ehr=ZebulonQuixwhistle,mrn=MRN12345678"
    async with running_gateway(gateway_config(tmp_path, upstream.port, otlp_port)) as gw:
        reply = await _raw(
            gw.proxy_port,
            "/fhir/Patient/1",
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
            f"tracestate: {state}\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 200 ")
    assert upstream.seen[0]["headers"]["tracestate"] == state
    await wait_until_async(lambda: len(spans.spans) >= 2, "two spans")
    assert len(spans.spans) == 2
    assert all(s.trace_id == "0af7651916cd43dd8448eb211c80319c" for s in spans.spans)
    await runner.cleanup()
    raw = b"".join(spans.raw_bodies)  # the protobuf as exported: trace_state included, if any
    assert b"b7ad6b7169203331" not in raw  # (sanity: ids are binary in protobuf)
    assert b"Zebulon" not in raw and b"MRN12345678" not in raw
