"""A Bundle inside a Bundle (a search in a batch or transaction) names the gateway like the
outer one, so a client that follows its ``next`` comes back through the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fhirpy import AsyncFHIRClient

from gateway.dataplane.bundle import base_literals, inspect
from tests.fhirpeer import FhirPeer
from tests.support.gateway import gateway_config, running_gateway
from tests.support.readers import counter_value, read_log

OLD = "http://fhir.internal:8081/base"
NEW = "https://ehr.example.org"


def _searchset(base: str, ids: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [
            {"relation": "self", "url": f"{base}/Patient?_count=2"},
            {"relation": "next", "url": f"{base}/Patient?_count=2&_getpagesoffset=2"},
        ],
        "entry": [
            {"fullUrl": f"{base}/Patient/{i}", "resource": {"resourceType": "Patient", "id": i, "w": 1.50}}
            for i in ids
        ],
    }


def test_bundles_inside_entries_are_rewritten_at_any_depth() -> None:
    deepest = _searchset(OLD, ["d1"])
    middle = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"resource": deepest, "response": {"status": "200 OK"}}],
    }
    doc = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": _searchset(OLD, ["a1", "a2"]), "response": {"status": "200 OK"}},
            {"response": {"status": "200 OK", "outcome": _searchset(OLD, ["b1"])}},
            {"resource": middle, "response": {"status": "200 OK"}},
            # Not a Bundle: a resource's own "link" and "url" are data, not paging links.
            {"resource": {"resourceType": "Basic", "link": [{"url": f"{OLD}/Basic/x"}]}},
        ],
    }
    body = json.dumps(doc, indent=1).encode().replace(b'"w": 1.5', b'"w": 1.50')
    found = inspect(body, OLD, base_literals(OLD), NEW, want_entries=True)
    assert found is not None
    out = json.loads(found.body)
    inner_a = out["entry"][0]["resource"]
    inner_b = out["entry"][1]["response"]["outcome"]
    inner_d = out["entry"][2]["resource"]["entry"][0]["resource"]
    for inner in (inner_a, inner_b, inner_d):
        assert all(link["url"].startswith(NEW + "/Patient?") for link in inner["link"])
        assert all(e["fullUrl"].startswith(NEW + "/Patient/") for e in inner["entry"])
    assert out["entry"][3]["resource"]["link"] == [{"url": f"{OLD}/Basic/x"}]
    # Byte for byte: only those literals changed (decimals and layout as the server wrote them).
    assert found.body.count(b"1.50") == body.count(b"1.50") == 4
    assert found.body.replace(NEW.encode(), OLD.encode()) == body
    assert found.entry_statuses == [200, 200, 200, None]  # the outer batch's entries only


@pytest.fixture
async def fixed_base() -> AsyncIterator[FhirPeer]:
    """A server that builds every absolute URL from its own configured base (as Medplum does
    from ``baseUrl``), whatever the request's Host or forwarding headers said."""
    peer = FhirPeer("fixed")
    await peer.start()
    yield peer
    await peer.stop()


def _batch(kind: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"request": {"method": "GET", "url": "Patient?_count=5"}},
            {"request": {"method": "GET", "url": "Patient/p1"}},
        ],
    }


@pytest.mark.parametrize("kind", ["batch", "transaction"])
async def test_a_search_inside_a_batch_pages_through_the_gateway(
    tmp_path: Path, fixed_base: FhirPeer, kind: str
) -> None:
    peer = fixed_base
    cfg = gateway_config(tmp_path, peer.port, timeout_total="5s")
    async with running_gateway(cfg) as gw:
        base = f"http://127.0.0.1:{gw.proxy_port}/fhir"
        client = AsyncFHIRClient(base, extra_headers={"X-Facility-ID": "riverside"})
        answer = await client.execute("", method="post", data=_batch(kind))
        first = answer["entry"][0]
        # batch: the searchset is the entry's resource; transaction: this server puts it in
        # the entry's response.outcome.
        inner = first["resource"] if kind == "batch" else first["response"]["outcome"]
        assert inner["type"] == "searchset"
        assert answer["entry"][1]["fullUrl"] == f"{base}/Patient/p1"
        pages = [inner]
        next_url = next(x["url"] for x in inner["link"] if x["relation"] == "next")
        while next_url is not None:
            # fhirpy refuses an absolute URL outside its base ("possible security issue"):
            # each page it fetches is on the gateway.
            page = await client.execute(next_url, method="get")
            pages.append(page)
            next_url = next((x["url"] for x in page["link"] if x["relation"] == "next"), None)
            assert len(pages) < 20
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
            metrics = await r.text()
    assert len(pages) == 5  # 23 patients, 5 a page
    for page in pages:
        assert all(x["url"].startswith(base + "/Patient?") for x in page["link"])
        assert all(e["fullUrl"].startswith(base + "/Patient/") for e in page["entry"])
    assert sorted(e["resource"]["id"] for p in pages for e in p["entry"]) == sorted(peer.patients)
    # The upstream saw the batch and the four later pages, each through the gateway.
    assert [s["path_qs"].partition("?")[0] for s in peer.seen] == ["/fhir/", *["/fhir/Patient"] * 4]
    assert all(s["headers"].get("X-Forwarded-For") == "127.0.0.1" for s in peer.seen)
    log = read_log(tmp_path / "access.log")
    assert [r["http.route"] for r in log] == ["/fhir/", *["/fhir/Patient"] * 4]
    assert counter_value(metrics, "vitalgate_upstream_url_leak_total") == 0
    assert (
        counter_value(
            metrics,
            "vitalgate_fhir_bundle_entries_total",
            http_request_method="GET",
            http_route="/fhir/Patient",
            status_class="2xx",
        )
        == 1
    )


async def test_a_nested_bundle_over_the_limit_is_counted_not_rewritten(
    tmp_path: Path, fixed_base: FhirPeer
) -> None:
    """The same ``rewrite_max_bytes`` bounds the whole body, nested Bundles included."""
    routes = [{"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir", "rewrite_max_bytes": 1024}]
    cfg = gateway_config(tmp_path, fixed_base.port, timeout_total="5s", extra={"routes": routes})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{gw.proxy_port}/fhir/"
        async with s.post(url, json=_batch("batch"), headers={"Content-Type": "application/fhir+json"}) as r:
            assert r.status == 200
            answer = await r.json(content_type=None)
        async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
            metrics = await r.text()
    inner = answer["entry"][0]["resource"]
    assert inner["link"][0]["url"].startswith(f"http://127.0.0.1:{fixed_base.port}/fhir/")
    assert counter_value(metrics, "vitalgate_upstream_url_leak_total", where="body") == 1
