"""Conservation under faults: requests sent = histogram count = log lines = SERVER spans, per facility."""

import asyncio
import random
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.support.gateway import gateway_config, running_gateway
from tests.support.peers import Upstream
from tests.support.readers import histogram_counts, read_log
from vitalgate.otlpsink import OtlpSink

N_REQUESTS = 3000


@pytest.mark.slow
async def test_counts_agree_per_facility(
    tmp_path: Path, upstream: Upstream, sink: tuple[OtlpSink, int]
) -> None:
    spans, otlp_port = sink
    rng = random.Random(20261127)
    facilities = ["st-marys", "riverside", "lakeside", None, "Not-A-Known-Site"]
    plan = []
    for i in range(N_REQUESTS):
        facility = rng.choice(facilities)
        fault = rng.choices(["", "500", "reset", "slow"], [0.95, 0.0167, 0.0167, 0.0166])[0]
        method, path = rng.choice(
            [
                ("GET", f"/fhir/Patient/{i}"),
                ("GET", "/fhir/Observation?_count=10"),
                ("POST", "/fhir/Patient"),
                ("GET", f"/scheduling/appointments/{i}"),
                ("GET", "/unrouted/thing"),
            ]
        )
        plan.append((facility, fault, method, path))
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    cfg = gateway_config(tmp_path, upstream.port, otlp_port, timeout_total="300ms")
    async with running_gateway(cfg) as gw:
        base = f"http://127.0.0.1:{gw.proxy_port}"
        sem = asyncio.Semaphore(32)

        async def one(
            s: aiohttp.ClientSession, facility: str | None, fault: str, method: str, path: str
        ) -> None:
            headers = {"X-Test-Fault": fault, "X-Test-Sleep": "1"} if fault else {}
            if facility:
                headers["X-Facility-ID"] = facility
            async with (
                sem,
                s.request(
                    method, base + path, headers=headers, data=b"{}" if method == "POST" else None
                ) as r,
            ):
                await r.read()
                statuses[r.status] += 1

        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(one(s, *p) for p in plan))
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                metrics = await r.text()
        await gw.stop()  # flushes the access log and the span queue
    for facility, *_ in plan:
        sent[facility if facility in ("st-marys", "riverside", "lakeside") else "unknown"] += 1

    assert sum(statuses.values()) == N_REQUESTS
    assert statuses[502] > 0 and statuses[504] > 0 and statuses[500] > 0  # the faults happened

    by_facility_metric: Counter[str] = Counter()
    for key, value in histogram_counts(metrics).items():
        by_facility_metric[key[0]] += int(value)
    log = read_log(tmp_path / "access.log")
    by_facility_log = Counter(r["facility"] for r in log)
    by_facility_span = Counter(s.attributes["facility"] for s in spans.spans if s.kind == "SERVER")

    assert by_facility_metric == sent
    assert by_facility_log == sent
    assert by_facility_span == sent
    # Every log line's ids belong to an exported SERVER span with the same outcome.
    server = {(s.trace_id, s.span_id): s for s in spans.spans if s.kind == "SERVER"}
    for rec in log:
        span = server[(rec["trace_id"], rec["span_id"])]
        assert span.attributes["http.response.status_code"] == rec["http.response.status_code"]
    # One CLIENT span per upstream attempt (unrouted requests never reach an upstream).
    routed = sum(1 for r in log if r["service"] != "none")
    assert sum(1 for s in spans.spans if s.kind == "CLIENT") == routed
