"""The latency page per facility, end to end: real traffic (slow, middling and fast routes
from a real upstream) through `vitalgate serve --workers 2` (the store shared by both), then
the JSON form and the page over real HTTP, checked against the access log and the spans the
OTLP receiver got; roles and facility scoping; screenshots in Chromium."""

import hashlib
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.server import Gateway
from slo.latency import route_latency
from slo.store import Store
from tests import slos
from tests.support.browser import chromium
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import fetch, read_log
from tests.support.services import require_binary
from tests.support.waiting import wait_until
from vitalgate.admin_pages import extend_admin
from vitalgate.config import load_config
from vitalgate.peers import free_port

TOKENS = {"sre": "lat-sre-token", "account_manager": "lat-am-token"}
SRE = {"Authorization": f"Bearer {TOKENS['sre']}"}
AM = {"Authorization": f"Bearer {TOKENS['account_manager']}"}  # riverside only
SLOW, MIDDLING, FAST = "/scheduling/appointments/{id}", "/fhir/Observation/{id}", "/fhir/Patient/{id}"
# (path, route template, requests, seconds the upstream sleeps, of which answered 500)
PLAN = [
    ("/scheduling/appointments/a1", SLOW, 8, 0.4, 0),
    ("/fhir/Observation/o1", MIDDLING, 12, 0.06, 0),
    ("/fhir/Patient/p1", FAST, 30, 0.0, 3),
]
RIVERSIDE_REQUESTS = 5


@dataclass
class Run:
    admin: str
    gateway: GatewayProcess
    log: list[dict[str, Any]]
    spans: set[str]
    """Trace ids of the server spans the OTLP receiver got."""
    workdir: Path


def _tokens() -> list[dict[str, object]]:
    return [
        {"name": "sre-bot", "sha256": hashlib.sha256(TOKENS["sre"].encode()).hexdigest(), "role": "sre"},
        {
            "name": "am-bot",
            "sha256": hashlib.sha256(TOKENS["account_manager"].encode()).hexdigest(),
            "role": "account_manager",
            "facilities": ["riverside"],
        },
    ]


def get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def latency(admin: str, facility: str, window: str = "1h", headers: dict[str, str] = SRE) -> dict[str, Any]:
    status, body = get(f"{admin}/api/v1/latency/{facility}?window={window}", headers)
    assert status == 200, body
    found: dict[str, Any] = json.loads(body)
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, module_peers: BackgroundPeers) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("latency")
    peers = module_peers
    cfg = gateway_config(
        tmp,
        peers.upstream.port,
        peers.sink_port,
        slos=[*slos.STORE, slos.latency("reads-300ms", "300ms", 90, ["GET"])],
        extra={
            "admin": {"tokens": _tokens()},
            "telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}},
        },
    )
    gw = GatewayProcess(cfg, workers=2)
    try:
        calls = []
        for path, _route, n, sleep_s, errors in PLAN:
            for i in range(n):
                headers = {"X-Facility-ID": "st-marys"}
                if sleep_s:
                    headers |= {"X-Test-Fault": "slow", "X-Test-Sleep": str(sleep_s)}
                elif i < errors:
                    headers |= {"X-Test-Fault": "500"}
                calls.append((gw.proxy + path, headers))
        calls += [(gw.proxy + "/fhir/Patient/r1", {"X-Facility-ID": "riverside"})] * RIVERSIDE_REQUESTS
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda c: fetch(*c), calls))
        assert sorted(set(statuses)) == [200, 500]
        total = sum(n for _, _, n, _, _ in PLAN)

        def stored() -> bool:
            return bool(sum(r["requests"] for r in latency(gw.admin, "st-marys")["routes"]) == total)

        wait_until(stored, "every request in the store")
        wait_until(lambda: len(peers.sink.spans) >= 2 * len(calls), "spans exported")
        log = tmp / "access.log"

        def logged() -> bool:
            return sum(1 for e in read_log(log) if e.get("event") == "request") == len(calls)

        wait_until(logged, "every request in the access log")
        spans = {s.trace_id for s in peers.sink.spans if s.kind == "SERVER"}
        yield Run(gw.admin, gw, read_log(log), spans, tmp)
    finally:
        gw.terminate()


def _true_percentile(durations_s: list[float], q: float) -> float:
    """The request the histogram's estimate is read from: the ceil(q*n)-th fastest."""
    ordered = sorted(durations_s)
    return ordered[math.ceil(q * len(ordered)) - 1]


def _log_of(run: Run, facility: str, route: str) -> list[dict[str, Any]]:
    return [
        e
        for e in run.log
        if e.get("event") == "request" and e["facility"] == facility and e["http.route"] == route
    ]


def test_routes_slowest_first_with_exact_counts_and_error_ratio(run: Run) -> None:
    view = latency(run.admin, "st-marys")
    assert view["facility"] == "st-marys" and view["window"] == "1h"
    assert [r["route"] for r in view["routes"]] == [SLOW, MIDDLING, FAST]
    by_route = {r["route"]: r for r in view["routes"]}
    for _path, route, n, _sleep, errors in PLAN:
        row = by_route[route]
        logged = _log_of(run, "st-marys", route)
        assert row["requests"] == n == len(logged)
        assert row["errors"] == errors == sum(1 for e in logged if e["http.response.status_code"] >= 500)
        assert row["error_ratio"] == pytest.approx(errors / n)
    assert by_route[SLOW]["service"] == "scheduling" and by_route[FAST]["service"] == "fhir"
    # The day and the week hold the same traffic (all of it in the last hour).
    for window in ("1d", "1w"):
        longer = latency(run.admin, "st-marys", window)
        assert [(r["route"], r["requests"]) for r in longer["routes"]] == [
            (r["route"], r["requests"]) for r in view["routes"]
        ]


def test_percentiles_lie_in_the_bucket_of_the_true_percentile(run: Run) -> None:
    view = latency(run.admin, "st-marys")
    bounds = view["bounds_s"]
    assert 0.3 in bounds  # the SLO's threshold is a bucket bound, beside the OTel boundaries
    for row in view["routes"]:
        durations = [e["duration_ms"] / 1000 for e in _log_of(run, "st-marys", row["route"])]
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            estimate = row[name]
            lower, upper = estimate["bucket"]
            truth = _true_percentile(durations, q)
            assert lower < truth <= upper, (row["route"], name, truth, estimate)
            assert lower <= estimate["seconds"] <= upper
            assert lower in [0.0, *bounds] and upper in bounds  # a real bucket of the histogram
    slow = view["routes"][0]
    assert slow["p50"]["bucket"] == [0.3, 0.5]  # 0.4 s sleeps: above the SLO bound, below 0.5


def test_slowest_requests_are_real_traces_from_the_access_log(run: Run) -> None:
    view = latency(run.admin, "st-marys")
    for row in view["routes"]:
        logged = {e["trace_id"]: e for e in _log_of(run, "st-marys", row["route"])}
        slowest = row["slowest"]
        assert len(slowest) == 5  # every route had more requests than that
        assert [s["duration_ms"] for s in slowest] == sorted(
            (s["duration_ms"] for s in slowest), reverse=True
        )
        for s in slowest:
            entry = logged[s["trace_id"]]  # a request of this route and facility, as logged
            assert s["duration_ms"] == pytest.approx(entry["duration_ms"], abs=0.01)
            assert s["status"] == entry["http.response.status_code"]
            assert s["method"] == "GET" and s["sampled"] is True
            assert s["trace_id"] in run.spans  # and its trace reached the tracing backend
        # The five slowest of the window, over both workers: exactly the log's five slowest.
        by_duration = sorted(logged.values(), key=lambda e: e["duration_ms"], reverse=True)
        assert {s["trace_id"] for s in slowest} == {e["trace_id"] for e in by_duration[:5]}


def test_store_rebuilt_from_the_access_log_has_the_same_view(run: Run, tmp_path: Path) -> None:
    """`vitalgate store import` into a fresh store: the same counts, percentiles and slowest
    trace ids as the live recorder's, and a second import changes nothing."""
    cfg = yaml.safe_load((run.workdir / "gateway.yaml").read_text())
    cfg["telemetry"]["store"]["path"] = str(tmp_path / "imported.db")
    cfg["slos"] = str(run.workdir / "slos.yaml")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(cfg))
    live = latency(run.admin, "st-marys")
    for _ in range(2):
        vitalgate("store", "import", "--config", str(config), "--access-log", str(run.workdir / "access.log"))
        store = Store(tmp_path / "imported.db", readonly=True)
        try:
            view = route_latency(store, "st-marys", "1h", time.time())
        finally:
            store.close()
        assert [(r.route, r.requests, r.errors) for r in view.routes] == [
            (r["route"], r["requests"], r["errors"]) for r in live["routes"]
        ]
        for got, want in zip(view.routes, live["routes"], strict=True):
            assert {s.trace_id for s in got.slowest} == {s["trace_id"] for s in want["slowest"]}
            p95 = got.percentiles["p95"]
            assert p95 is not None and [p95.lower, p95.upper] == want["p95"]["bucket"]


def test_scoping_and_roles(run: Run) -> None:
    # The riverside account manager reads riverside only, and only riverside's requests are in it.
    mine = latency(run.admin, "riverside", headers=AM)
    assert [(r["route"], r["requests"], r["errors"]) for r in mine["routes"]] == [
        (FAST, RIVERSIDE_REQUESTS, 0)
    ]
    for path in ("/api/v1/latency/st-marys", "/ui/facilities/st-marys/latency", "/api/v1/latency/nowhere"):
        status, body = get(run.admin + path, AM)
        assert status == 403, path
        assert b"st-marys" not in body and b"nowhere" not in body
    status, _ = get(run.admin + "/ui/facilities/riverside/latency", AM)
    assert status == 200
    assert get(run.admin + "/api/v1/latency/st-marys", {})[0] == 401
    assert get(run.admin + "/api/v1/latency/nowhere", SRE)[0] == 404
    status, body = get(run.admin + "/api/v1/latency/st-marys?window=5y", SRE)
    assert status == 400 and json.loads(body)["detail"] == "window: '5y' is not one of 1h, 1d, 1w"
    # Lakeside had no traffic: an empty view, not an error.
    assert latency(run.admin, "lakeside")["routes"] == []
    accesses = [e for e in read_log(run.workdir / "access.log") if e.get("event") == "admin_access"]
    refused = [e for e in accesses if e["token"] == "am-bot" and e["status"] == 403]
    assert {e["what"] for e in refused} == {"latency_api", "latency_page"}
    assert all(e["facility"] in ("st-marys", None) for e in refused)  # never the free-text id


def test_page_lists_routes_slowest_first_with_their_trace_ids(run: Run) -> None:
    status, body = get(run.admin + "/ui/facilities/st-marys/latency?window=1d", SRE)
    assert status == 200
    page = body.decode()
    assert "St Mary&#x27;s: latency by route" in page
    positions = [page.index(f">{route}</a>") for route in (SLOW, MIDDLING, FAST)]
    assert positions == sorted(positions)
    for row in latency(run.admin, "st-marys", "1d")["routes"]:
        for s in row["slowest"]:
            assert f"<code>{s['trace_id']}</code>" in page
    assert "<b>last day</b>" in page and 'href="/ui/facilities/st-marys/latency?window=1h"' in page
    assert "histogram_quantile" in page
    facility = get(run.admin + "/ui/facilities/st-marys", SRE)[1].decode()
    assert 'href="/ui/facilities/st-marys/latency"' in facility


def test_page_in_chromium_desktop_and_phone(run: Run, tmp_path: Path) -> None:
    browser = require_binary("chromium")
    artifacts = Path(os.environ.get("VITALGATE_TEST_ARTIFACTS", "test-artifacts")).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    # A headless screenshot cannot send the bearer token: the page as the SRE's token fetched
    # it is opened from a file (it is self-contained: inline styles, no scripts, no images).
    url = run.admin + "/ui/facilities/st-marys/latency"
    html = get(url, SRE)[1]
    page = tmp_path / "latency.html"
    page.write_bytes(html)
    for name, size in (("latency-desktop.png", "1280,1100"), ("latency-phone.png", "390,844")):
        shot = artifacts / name
        shot.unlink(missing_ok=True)
        chromium(
            browser,
            tmp_path / name,
            f"--screenshot={shot}",
            f"--window-size={size}",
            "--hide-scrollbars",
            page.as_uri(),
        )
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 5000


async def test_without_the_store_the_latency_view_says_why(tmp_path: Path) -> None:
    cfg = gateway_config(
        tmp_path, free_port(), extra={"telemetry": {"store": {"path": "store.db", "enabled": False}}}
    )
    gw = Gateway(load_config(cfg), [extend_admin])
    await gw.start()
    try:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        async with aiohttp.ClientSession() as s:
            for path in ("/api/v1/latency/st-marys", "/ui/facilities/st-marys/latency"):
                async with s.get(admin + path) as r:
                    assert r.status == 503
                    assert "telemetry.store.enabled" in (await r.json())["error"]
    finally:
        await gw.stop()
