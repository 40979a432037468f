"""The proxy through real sockets: what reaches the upstream, what comes back, what is recorded."""

import asyncio
from pathlib import Path

import aiohttp

from tests.support.gateway import gateway_config, running_gateway
from tests.support.peers import Upstream
from tests.support.readers import counter_value, histogram_counts, read_log
from tests.support.waiting import wait_until_async
from vitalgate.otlpsink import OtlpSink

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def _wait_spans(sink: OtlpSink, n: int) -> None:
    await wait_until_async(lambda: len(sink.spans) >= n, f"{n} spans")


async def test_forwarding_and_telemetry_agree(
    tmp_path: Path, upstream: Upstream, sink: tuple[OtlpSink, int]
) -> None:
    spans, otlp_port = sink
    async with running_gateway(gateway_config(tmp_path, upstream.port, otlp_port)) as gw:
        base = f"http://127.0.0.1:{gw.proxy_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(
                f"{base}/fhir/Patient/123?_count=5&family=Smith",
                headers={
                    "X-Facility-ID": "st-marys",
                    "traceparent": TRACEPARENT,
                    "Connection": "keep-alive, X-Secret-Hop",
                    "X-Secret-Hop": "must not be forwarded",
                    "Proxy-Authorization": "Basic abc",
                    "X-Forwarded-For": "10.1.2.3",
                },
            ) as r:
                assert r.status == 200
                body = await r.json()
                assert r.headers["X-Upstream"] == "yes"
                assert r.headers["Set-Cookie"] == "a=1"
            assert body["path"] == "/fhir/Patient/123"
            async with s.get(f"{base}/metrics-not-routed") as r:
                assert r.status == 404
                assert (await r.json())["error"] == "no route"
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                metrics = await r.text()
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/healthz") as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/readyz") as r:
                assert r.status == 200
    seen = upstream.seen[0]
    assert seen["path_qs"] == "/fhir/Patient/123?_count=5&family=Smith"
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert "x-secret-hop" not in headers
    assert "proxy-authorization" not in headers
    # The client is not a trusted proxy: what it claims about earlier hops is replaced.
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gw.proxy_port}"
    assert headers["x-forwarded-port"] == str(gw.proxy_port)
    assert headers["forwarded"] == f'for=127.0.0.1;host="127.0.0.1:{gw.proxy_port}";proto=http'
    assert headers["host"] == f"127.0.0.1:{gw.proxy_port}"  # the client's Host (host: client)
    assert "user-agent" in headers  # the client's own, not one added by the gateway
    assert headers["user-agent"].startswith("Python/")
    # Incoming trace continued; the upstream sees the CLIENT span as its parent.
    version, trace_id, parent_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "0af7651916cd43dd8448eb211c80319c", "01")

    counts = histogram_counts(metrics)
    assert counts[("st-marys", "fhir", "/fhir/Patient/{id}", "GET", "200")] == 1
    assert counts[("unknown", "none", "", "GET", "404")] == 1

    log = read_log(tmp_path / "access.log")
    assert len(log) == 2
    rec = log[0]
    assert rec["event"] == "request"
    assert rec["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert rec["facility"] == "st-marys"
    assert rec["service"] == "fhir"
    assert rec["http.route"] == "/fhir/Patient/{id}"
    assert rec["http.request.method"] == "GET"
    assert rec["http.response.status_code"] == 200
    assert rec["trace_flags"] == "01"
    assert rec["timestamp"].endswith("Z")
    assert rec["duration_ms"] >= rec["upstream_duration_ms"] > 0
    assert "error.type" not in rec
    assert log[1]["error.type"] == "no_route"
    assert log[1]["service"] == "none"

    await _wait_spans(spans, 3)
    server = [s for s in spans.spans if s.kind == "SERVER"]
    client = [s for s in spans.spans if s.kind == "CLIENT"]
    assert len(server) == 2
    assert len(client) == 1
    first = next(s for s in server if s.trace_id == rec["trace_id"])
    assert first.span_id == rec["span_id"]
    assert first.parent_span_id == "b7ad6b7169203331"
    assert first.name == "GET /fhir/Patient/{id}"
    assert first.attributes["http.route"] == "/fhir/Patient/{id}"
    assert first.attributes["http.response.status_code"] == 200
    assert first.attributes["facility"] == "st-marys"
    assert first.attributes["url.query"] == "_count=5&family=REDACTED"
    assert client[0].parent_span_id == first.span_id
    assert client[0].span_id == parent_id
    assert first.resource["service.name"] == "vitalgate"
    assert next(s for s in server if s is not first).name == "GET"  # no route: method only


async def test_fault_mapping(tmp_path: Path, upstream: Upstream, sink: tuple[OtlpSink, int]) -> None:
    spans, otlp_port = sink
    # "scheduling" points at a port where nothing listens.
    closed = {"scheduling": {"url": "http://127.0.0.1:1"}}
    cfg = gateway_config(
        tmp_path, upstream.port, otlp_port, timeout_total="500ms", extra={"upstreams": closed}
    )
    async with running_gateway(cfg) as gw:
        base = f"http://127.0.0.1:{gw.proxy_port}"
        cases = [
            ("/fhir/Patient/1", {"X-Test-Fault": "500"}, 500, None),
            ("/fhir/Patient/2", {"X-Test-Fault": "reset"}, 502, "upstream_reset"),
            (
                "/fhir/Patient/3",
                {"X-Test-Fault": "slow", "X-Test-Sleep": "3"},
                504,
                "upstream_timeout",
            ),
            ("/scheduling/appointments/4", {}, 502, "upstream_connect_error"),
            ("/fhir/Patient/5", {"X-Test-Fault": "status:404"}, 404, None),
        ]
        async with aiohttp.ClientSession() as s:
            for path, headers, status, error_type in cases:
                async with s.get(base + path, headers={"X-Facility-ID": "riverside", **headers}) as r:
                    assert r.status == status, path
                    if error_type:
                        body = await r.json()
                        assert body["error"] == error_type
                        assert "Traceback" not in str(body)
            # Headers already sent, then the upstream dies: the client sees a cut connection.
            async with s.get(base + "/fhir/Binary/9", headers={"X-Test-Fault": "midbody"}) as r:
                assert r.status == 200
                try:
                    await r.read()
                    raise AssertionError("a truncated body must not look complete")
                except aiohttp.ClientPayloadError:
                    pass
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                metrics = await r.text()
    log = read_log(tmp_path / "access.log")
    got = [(r["http.response.status_code"], r.get("error.type")) for r in log]
    assert got == [(s, e) for _, _, s, e in cases] + [(502, "upstream_reset")]
    counts = histogram_counts(metrics)
    assert counts[("riverside", "fhir", "/fhir/Patient/{id}", "GET", "504")] == 1
    assert counts[("riverside", "fhir", "/fhir/Patient/{id}", "GET", "502")] == 1
    assert counts[("riverside", "scheduling", "/scheduling/appointments/{id}", "GET", "502")] == 1
    await _wait_spans(spans, 12)
    server = {s.trace_id: s for s in spans.spans if s.kind == "SERVER"}
    for rec in log:
        span = server[rec["trace_id"]]
        assert span.attributes["http.response.status_code"] == rec["http.response.status_code"]
        assert span.attributes.get("error.type") == rec.get("error.type")
        assert span.status_code == (2 if rec["http.response.status_code"] >= 500 else 0)


async def test_passes_through_unchanged(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        base = f"http://127.0.0.1:{gw.proxy_port}"
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            async with s.get(
                base + "/fhir/metadata", headers={"X-Test-Fault": "redirect"}, allow_redirects=False
            ) as r:
                assert r.status == 302
                assert r.headers["Location"] == "/fhir/metadata"
            async with s.get(base + "/fhir/metadata", headers={"X-Test-Fault": "gzip"}) as r:
                assert r.headers["Content-Encoding"] == "gzip"
                assert (await r.read()).startswith(b"\x1f\x8b")
            async with s.get(base + "/fhir/Patient/1", headers={"X-Test-Fault": "status:204"}) as r:
                assert r.status == 204
                assert await r.read() == b""
            async with s.get(base + "/fhir/Patient/1", headers={"X-Test-Fault": "status:304"}) as r:
                assert r.status == 304
            async with s.head(base + "/fhir/Patient/1") as r:
                assert r.status == 200
                assert int(r.headers["Content-Length"]) > 0
            big = b"{" + b"x" * (3 * 1024 * 1024) + b"}"  # over aiohttp's default 1 MB limit
            async with s.post(base + "/fhir/Binary", data=big) as r:
                assert r.status == 200
                assert (await r.json())["received_bytes"] == len(big)
            async with s.get(base + "/fhir/Binary/1", headers={"X-Test-Stream-Bytes": "5000000"}) as r:
                assert len(await r.read()) == 5_000_000
    assert upstream.seen[-2]["headers"].get("Content-Length") == str(len(big))


async def test_malformed_http_gets_400_and_serving_continues(tmp_path: Path, upstream: Upstream) -> None:
    async with running_gateway(gateway_config(tmp_path, upstream.port)) as gw:
        for raw in (
            b"GARBAGE\r\n\r\n",
            b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
            b"GET /fhir/Patient/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
            writer.write(raw)
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 5)
            assert status_line.split()[1] in (b"400", b"431"), status_line
            writer.close()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{gw.proxy_port}/fhir/Patient/1") as r:
                assert r.status == 200
    log = read_log(tmp_path / "access.log")
    # Only the well-formed request reached an upstream; the refused ones are logged as such.
    assert [(r["http.response.status_code"], r.get("error.type"), r["service"]) for r in log] == [
        (400, "bad_request", "none"),
        (400, "bad_request", "none"),
        (431, "header_too_large", "none"),
        (200, None, "fhir"),
    ]
    assert len(upstream.seen) == 1


async def test_cardinality_budget_folds_into_other(tmp_path: Path, upstream: Upstream) -> None:
    cfg = gateway_config(tmp_path, upstream.port, extra={"telemetry": {"metrics": {"max_label_sets": 10}}})
    async with running_gateway(cfg) as gw:
        async with aiohttp.ClientSession() as s:
            types = [
                "Patient",
                "Observation",
                "Encounter",
                "Condition",
                "Procedure",
                "Flag",
                "Goal",
                "Task",
            ]
            for i, rtype in enumerate(types * 2):
                for method in ("GET", "DELETE"):
                    async with s.request(method, f"http://127.0.0.1:{gw.proxy_port}/fhir/{rtype}/{i}") as r:
                        assert r.status == 200
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                metrics = await r.text()
    counts = histogram_counts(metrics)
    assert len(counts) == 10 + 2  # the budget, plus one folded set per method
    assert sum(counts.values()) == 32  # nothing lost, only folded
    # Sets 11..16 (Flag, Goal, Task) fold, both times they are seen.
    assert counts[("unknown", "fhir", "other", "GET", "200")] == 6
    assert counts[("unknown", "fhir", "other", "DELETE", "200")] == 6
    assert counter_value(metrics, "vitalgate_cardinality_overflow_total") == 12


async def test_slo_thresholds_become_buckets_and_exemplars(
    tmp_path: Path, upstream: Upstream, sink: tuple[OtlpSink, int]
) -> None:
    slos = [
        {
            "name": "lat",
            "service": "fhir",
            "objective": 99,
            "sli": {"latency": {"threshold": "300ms"}},
        },
        {
            "name": "lat2",
            "service": "fhir",
            "objective": 99,
            "sli": {"latency": {"threshold": "1200ms"}},
        },
    ]
    async with running_gateway(gateway_config(tmp_path, upstream.port, sink[1], slos=slos)) as gw:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{gw.proxy_port}/fhir/Patient/1") as r:
                assert r.status == 200
            async with s.get(
                f"http://127.0.0.1:{gw.admin_port}/metrics",
                headers={"Accept": "application/openmetrics-text"},
            ) as r:
                assert r.headers["Content-Type"].startswith("application/openmetrics-text")
                text = await r.text()
    assert 'le="0.3"' in text
    assert 'le="1.2"' in text
    log = read_log(tmp_path / "access.log")
    assert f'# {{trace_id="{log[0]["trace_id"]}"}}' in text
