"""Absolute URLs a FHIR server builds lead clients back through the gateway, never around it;
what still names the upstream is counted; batch entries are counted by outcome."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fhirpeer import FhirPeer
from tests.fhirpeer import batch as fhir_batch
from tests.support.gateway import gateway_config, running_gateway
from tests.support.readers import counter_value, read_log
from tests.support.waiting import wait_until_async
from vitalgate.otlpsink import OtlpSink


@pytest.fixture(params=["host", "fixed"])
async def peer(request: pytest.FixtureRequest) -> AsyncIterator[FhirPeer]:
    p = FhirPeer(request.param)
    await p.start()
    yield p
    await p.stop()


def _upstream(port: int, **extra: Any) -> dict[str, Any]:
    return {"fhir": {"url": f"http://127.0.0.1:{port}", "timeout": {"connect": "1s", "total": "5s"}, **extra}}


async def _follow(session: aiohttp.ClientSession, url: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Fetch a search and every page its ``next`` links lead to: (page URLs, bundles)."""
    pages: list[str] = []
    bundles: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        pages.append(next_url)
        async with session.get(next_url, headers={"X-Facility-ID": "riverside"}) as r:
            assert r.status == 200
            raw = await r.read()
        assert b'"score": 1.50' in raw  # the rest of the body passes byte for byte
        bundle = json.loads(raw)
        bundles.append(bundle)
        next_url = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
        assert len(pages) < 50
    return pages, bundles


@pytest.mark.parametrize("host", ["client", "upstream"])
async def test_paging_goes_through_the_gateway(tmp_path: Path, peer: FhirPeer, host: str) -> None:
    cfg = gateway_config(tmp_path, peer.port, extra={"upstreams": _upstream(peer.port, host=host)})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{gw.proxy_port}"
        pages, bundles = await _follow(s, f"{base}/fhir/Patient?_count=5")
        async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
            metrics = await r.text()
    assert len(pages) == 5  # 23 patients, 5 a page
    for url in pages:
        assert url.startswith(f"{base}/fhir/Patient?"), url
    for bundle in bundles:
        assert all(x["url"].startswith(base + "/fhir/") for x in bundle["link"])
        assert all(e["fullUrl"].startswith(base + "/fhir/Patient/") for e in bundle["entry"])
    # The upstream saw every page, and only through the gateway.
    assert len(peer.seen) == len(pages)
    assert all("Forwarded" in seen["headers"] for seen in peer.seen)
    expected_host = f"127.0.0.1:{gw.proxy_port}" if host == "client" else f"127.0.0.1:{peer.port}"
    assert {seen["headers"]["Host"] for seen in peer.seen} == {expected_host}
    log = [r for r in read_log(tmp_path / "access.log") if r["http.route"] == "/fhir/Patient"]
    assert len(log) == len(pages)
    assert counter_value(metrics, "vitalgate_upstream_url_leak_total") == 0


async def test_location_headers_point_at_the_gateway(tmp_path: Path, peer: FhirPeer) -> None:
    cfg = gateway_config(tmp_path, peer.port, extra={"upstreams": _upstream(peer.port, host="upstream")})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{gw.proxy_port}"
        async with s.post(f"{base}/fhir/Patient", json={"resourceType": "Patient"}) as r:
            assert r.status == 201
            assert r.headers["Location"] == f"{base}/fhir/Patient/new1/_history/1"
            assert r.headers["Content-Location"] == r.headers["Location"]
        async with s.get(f"{base}/fhir/Patient/p3") as r:
            assert r.headers["Content-Location"] == f"{base}/fhir/Patient/p3/_history/1"
        async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
            metrics = await r.text()
    assert counter_value(metrics, "vitalgate_upstream_url_leak_total") == 0


async def test_what_still_names_the_upstream_is_counted(tmp_path: Path) -> None:
    peer = FhirPeer("fixed")
    await peer.start()
    try:
        # Inspection off for this route: a fixed-base server's links reach the client as they are.
        routes = [{"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir", "rewrite_max_bytes": 0}]
        cfg = gateway_config(tmp_path, peer.port, extra={"upstreams": _upstream(peer.port), "routes": routes})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{gw.proxy_port}"
            async with s.get(f"{base}/fhir/Patient?_count=5", headers={"X-Facility-ID": "lakeside"}) as r:
                bundle = await r.json(content_type=None)
            async with s.get(f"{base}/fhir/plain", headers={"X-Facility-ID": "lakeside"}) as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                metrics = await r.text()
    finally:
        await peer.stop()
    assert bundle["link"][1]["url"].startswith(f"http://127.0.0.1:{peer.port}/")
    assert (
        counter_value(
            metrics, "vitalgate_upstream_url_leak_total", facility="lakeside", service="fhir", where="body"
        )
        == 2
    )


async def test_trusted_proxy_headers_are_extended_and_shape_the_links(tmp_path: Path) -> None:
    peer = FhirPeer("fixed")
    await peer.start()
    try:
        cfg = gateway_config(
            tmp_path,
            peer.port,
            extra={"upstreams": _upstream(peer.port), "trusted_proxies": ["127.0.0.0/8"]},
        )
        front = {
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "ehr.example.org",
            "X-Forwarded-Port": "443",
            "Forwarded": "for=203.0.113.9;proto=https",
        }
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{gw.proxy_port}"
            async with s.get(f"{base}/fhir/Patient?_count=5", headers=front) as r:
                bundle = await r.json(content_type=None)
    finally:
        await peer.stop()
    seen = peer.seen[0]["headers"]
    assert seen["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "https"
    assert seen["X-Forwarded-Host"] == "ehr.example.org"
    assert seen["X-Forwarded-Port"] == "443"
    assert (
        seen["Forwarded"] == 'for=203.0.113.9;proto=https, for=127.0.0.1;host="ehr.example.org";proto=https'
    )
    # The client sees the address it used, the one the proxy in front served it on.
    assert bundle["link"][1]["url"].startswith("https://ehr.example.org/fhir/Patient?")


async def test_batch_entries_are_counted_by_outcome(tmp_path: Path, sink: tuple[OtlpSink, int]) -> None:
    spans, otlp_port = sink
    peer = FhirPeer("fixed")
    await peer.start()
    batch = fhir_batch({"request": {"method": "GET", "url": "Patient?name=fail-500"}})
    try:
        cfg = gateway_config(tmp_path, peer.port, otlp_port, extra={"upstreams": _upstream(peer.port)})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{gw.proxy_port}"
            async with s.post(
                f"{base}/fhir/",
                data=json.dumps(batch),
                headers={"X-Facility-ID": "st-marys", "Content-Type": "application/fhir+json"},
            ) as r:
                assert r.status == 200
                answer = await r.json(content_type=None)
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                metrics = await r.text()
    finally:
        await peer.stop()
    assert answer["entry"][1]["response"]["location"] == f"{base}/fhir/Patient/n1"

    def entries(method: str, route: str, cls: str) -> float:
        return counter_value(
            metrics,
            "vitalgate_fhir_bundle_entries_total",
            facility="st-marys",
            service="fhir",
            http_request_method=method,
            http_route=route,
            status_class=cls,
        )

    assert entries("GET", "/fhir/Patient/{id}", "2xx") == 1
    assert entries("POST", "/fhir/Patient", "2xx") == 1
    assert entries("GET", "/fhir/Patient/{id}", "4xx") == 1
    assert entries("GET", "/fhir/Patient/{id}", "5xx") == 1
    assert entries("DELETE", "/fhir/Patient/{id}", "5xx") == 1
    assert entries("GET", "/fhir/Patient", "5xx") == 1
    assert counter_value(metrics, "vitalgate_fhir_bundle_entries_total") == 6
    await wait_until_async(lambda: any(x.kind == "SERVER" for x in spans.spans), "the server span")
    server = next(x for x in spans.spans if x.kind == "SERVER")
    assert server.name == "POST /fhir/"
    assert server.attributes["vitalgate.bundle.entries.2xx"] == 2
    assert server.attributes["vitalgate.bundle.entries.4xx"] == 1
    assert server.attributes["vitalgate.bundle.entries.5xx"] == 3
