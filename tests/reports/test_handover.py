"""What a new user of the status pages, the admin listener and the audit desk meets, over real
HTTP, the CLI as a subprocess and headless Chromium: latency SLOs are not judged against the
availability SLA, a browser session opens the latency JSON its page links to, refused accesses
to the audit trail are logged and recorded, counts read as English, and the pages fit a phone.

One gateway (``vitalgate serve``) serves every test of the module: riverside fails half its
requests (its availability pages and its budget is spent), lakeside's reads are slow (its
latency SLO has slow minutes)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from gateway.server import Gateway
from tests import slos
from tests.reports.cdp import Tab, chromium
from tests.reports.test_browser_sessions import _token, screenshots
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers, Upstream
from tests.support.readers import fetch, read_log
from tests.support.waiting import wait_until
from vitalgate.admin_pages import extend_admin
from vitalgate.config import load_config

SRE_TOKEN = "sre-token-handover-0123"
AM_TOKEN = "am-token-handover-riverside"
AUDITOR_TOKEN = "auditor-token-handover-0123"
SLOS = [slos.availability("fhir-availability"), slos.latency("fhir-latency", "250ms", 99, ["GET"])]
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@dataclass
class Served:
    cfg: Path
    admin: str
    gw: GatewayProcess


def _get(url: str, headers: dict[str, str]) -> tuple[int, str, str]:
    """Status, content type and body of a GET, whatever the status."""
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get_content_type(), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), e.read().decode()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _status(admin: str) -> list[dict[str, Any]]:
    status, _, body = _get(admin + "/api/v1/slo", _bearer(SRE_TOKEN))
    assert status == 200
    rows: list[dict[str, Any]] = json.loads(body)["slos"]
    return rows


def _counted(admin: str, slo: str, facility: str) -> int:
    return next((int(r["total"]) for r in _status(admin) if (r["slo"], r["facility"]) == (slo, facility)), 0)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("handover")
    vitalgate("audit", "keygen", "--out", str(tmp / "keys"))
    with BackgroundPeers() as peers:
        cfg = gateway_config(
            tmp,
            peers.upstream.port,
            slos=SLOS,
            extra={
                "admin": {
                    "tokens": [
                        _token("sre-oncall", SRE_TOKEN, "sre"),
                        _token("riverside-am", AM_TOKEN, "account_manager", facilities=["riverside"]),
                        _token("compliance", AUDITOR_TOKEN, "auditor"),
                    ]
                },
                "telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}},
                "audit": {
                    "path": "audit",
                    "key_file": "keys/audit.key",
                    "signing_key_file": "keys/audit-signing.key",
                    "identity": {"header": "X-Authenticated-User", "trusted_sources": ["127.0.0.1/32"]},
                    "flush_interval": "100ms",
                },
            },
        )
        gw = GatewayProcess(cfg)
        try:
            for i in range(20):
                headers = {"X-Facility-ID": "riverside", "X-Authenticated-User": "dr.who"}
                if i % 2:
                    headers["X-Test-Fault"] = "500"
                fetch(gw.proxy + "/fhir/Patient/1", headers)
                fetch(gw.proxy + "/fhir/Patient/2", {"X-Facility-ID": "st-marys"})
            for _ in range(12):  # over the 250 ms threshold: slow minutes for fhir-latency
                slow = {"X-Facility-ID": "lakeside", "X-Test-Fault": "slow", "X-Test-Sleep": "0.3"}
                assert fetch(gw.proxy + "/fhir/Observation", slow) == 200
            wait_until(lambda: _counted(gw.admin, "fhir-availability", "*") == 52, "flushed to the store")
            yield Served(cfg, gw.admin, gw)
        finally:
            assert gw.terminate() == 0


def _rows(html: str, slo: str) -> list[str]:
    """The table rows (``<tr>``) of one SLO."""
    return [row for row in re.findall(r"<tr>.*?</tr>", html) if f'data-label="SLO">{slo}<' in row]


def _cell(row: str, label: str) -> str:
    m = re.search(rf'data-label="{label}">(.*?)</td>', row)
    assert m, (label, row)
    return m[1]


@pytest.mark.slow  # (vitalgate subprocesses: the CLI as a user runs it)
def test_latency_slos_are_not_judged_against_the_sla(served: Served) -> None:
    out = vitalgate("slo", "status", "--config", str(served.cfg), "--format", "json").stdout
    rows = {(r["slo"], r["facility"]): r for r in json.loads(out)["slos"]}
    for fac in ("riverside", "lakeside", "st-marys"):
        latency = rows[("fhir-latency", fac)]
        assert latency["sla_met"] is None and latency["contractual"] is False
        assert rows[("fhir-availability", fac)]["contractual"] is True
    assert rows[("fhir-availability", "riverside")]["sla_met"] is False  # half its requests failed
    assert rows[("fhir-availability", "st-marys")]["sla_met"] is True
    # The report JSON says the same of the latency SLO (null), as the brief's user compared.
    report = served.cfg.parent / "lakeside.html"
    period = datetime.now(ZoneInfo("America/Denver")).strftime("%Y-%m")  # (lakeside's month)
    vitalgate(
        "report",
        "--config",
        str(served.cfg),
        "--facility",
        "lakeside",
        "--period",
        period,
        "--out",
        str(report),
    )
    figures = json.loads((served.cfg.parent / "lakeside.figures.json").read_text())
    slo_reports = {s["slo"]: s for s in figures["slos"]}
    assert slo_reports["fhir-latency"]["sla_met"] is None

    table = vitalgate("slo", "status", "--config", str(served.cfg)).stdout.splitlines()
    head = table[0]
    sla_end = head.index("SLA") + len("SLA")
    for line in table[1:]:
        if line.startswith("fhir-latency "):
            assert line[:sla_end].rstrip().endswith(" -"), line
        elif line.startswith("fhir-availability ") and " riverside " in line:
            assert line[:sla_end].rstrip().endswith("99.50%"), line

    _, _, fleet = _get(served.admin + "/ui", _bearer(SRE_TOKEN))
    for row in _rows(fleet, "fhir-latency"):
        assert _cell(row, "SLA") == "-"
    assert any(_cell(row, "SLA") == "99.50%" for row in _rows(fleet, "fhir-availability"))

    status, _, page = _get(served.admin + "/ui/facilities/lakeside", _bearer(SRE_TOKEN))
    assert status == 200
    (latency_row,) = [row for row in _rows(page, "fhir-latency") if 'data-label="Exhaustion"' in row]
    assert _cell(latency_row, "SLA") == "-"
    assert "Daily availability" not in page
    assert "<h3>fhir-latency: fast requests</h3>" in page
    assert "<h3>fhir-availability: availability</h3>" in page
    incidents = [row for row in _rows(page, "fhir-latency") if 'data-label="Bad minutes"' in row]
    assert incidents and all(_cell(row, "Bad minutes").endswith(" slow") for row in incidents)
    assert "Down minutes" not in page


@pytest.mark.slow
def test_counts_read_as_english_and_a_spent_budget_is_exhausted(served: Served) -> None:
    rows = _status(served.admin)
    paging = {r["slo"] for r in rows if r["alert"] == "page"}
    paging_at = {r["facility"] for r in rows if r["alert"] == "page" and r["facility"] != "*"}
    assert paging and paging_at
    _, _, fleet = _get(served.admin + "/ui", _bearer(SRE_TOKEN))
    noun = "SLO" if len(paging) == 1 else "SLOs"
    where = "facility" if len(paging_at) == 1 else "facilities"
    assert f"<p>3 facilities, 2 SLOs; {len(paging)} {noun} paging at {len(paging_at)} {where}." in fleet
    # Riverside's availability budget is overspent: "exhausted", not "0.0 h" to go.
    riverside = next(r for r in rows if (r["slo"], r["facility"]) == ("fhir-availability", "riverside"))
    assert riverside["budget_remaining"] < 0
    _, _, page = _get(served.admin + "/ui/facilities/riverside", _bearer(SRE_TOKEN))
    (row,) = [row for row in _rows(page, "fhir-availability") if 'data-label="Exhaustion"' in row]
    assert "exhausted" in _cell(row, "Exhaustion")
    assert "1 requests" not in page and "1 facilities" not in page


async def _signed_in(s: aiohttp.ClientSession, admin: str, token: str) -> dict[str, str]:
    """A browser's session cookie, signed in as the sign-in page does it."""
    async with s.post(
        admin + "/ui/sign-in", data={"token": token}, headers={"Origin": admin}, allow_redirects=False
    ) as r:
        assert r.status == 303
        return {"Cookie": f"vitalgate_session={r.cookies['vitalgate_session'].value}"}


@pytest.mark.slow
async def test_a_session_opens_the_latency_json_it_links_to(served: Served) -> None:
    admin = served.admin
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        cookie = await _signed_in(s, admin, AM_TOKEN)

        async def get(path: str, headers: dict[str, str]) -> tuple[int, str, str]:
            async with s.get(admin + path, headers=headers, allow_redirects=False) as r:
                return r.status, r.content_type, await r.text()

        status, _, page = await get("/ui/facilities/riverside/latency", {**HTML, **cookie})
        assert status == 200
        link = re.search(r'href="(/api/v1/latency/riverside\?window=1h)"', page)
        assert link and "Sign out" in page
        status, ctype, body = await get(link[1], {**HTML, **cookie})  # as the browser follows it
        assert (status, ctype) == (200, "application/json") and json.loads(body)["facility"] == "riverside"
        assert (await get("/api/v1/latency/st-marys", cookie))[0] == 403  # the session's scope
        assert (await get("/api/v1/latency/riverside", {}))[0] == 401
        assert (await get("/api/v1/slo", cookie))[0] == 401  # the rest of the API stays bearer-only
        # "Sign out" only where there is a session to end.
        assert "Sign out" in (await get("/ui", {**HTML, **cookie}))[2]
        assert "Sign out" not in (await get("/ui", _bearer(SRE_TOKEN)))[2]


@pytest.mark.slow  # (vitalgate subprocesses: the CLI as a user runs it)
async def test_refused_reads_of_the_audit_trail_are_logged_and_recorded(served: Served) -> None:
    admin = served.admin
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        cookie = await _signed_in(s, admin, AM_TOKEN)
        async with s.get(admin + "/ui/audit", headers={**HTML, **cookie}) as r:
            assert r.status == 403
        async with s.get(admin + "/api/v1/audit?patient=1", headers=_bearer(SRE_TOKEN)) as r:
            assert r.status == 403
        async with s.get(admin + "/api/v1/audit") as r:
            assert r.status == 401
        cross = {**HTML, **cookie, "Origin": "http://evil.example"}
        async with s.post(admin + "/ui/audit", data={"patient": "1"}, headers=cross) as r:
            assert r.status == 403
            page = await r.text()
        # The refusal page knows who is signed in: it offers "Sign out", not "Sign in".
        assert "Sign out" in page and 'href="/ui/sign-in"' not in page
        async with s.get(admin + "/api/v1/reports/riverside/2026-11.html", headers=cookie) as r:
            assert r.status == 200

    def logged() -> list[tuple[Any, ...]]:
        return [
            (e["token"], e["what"], e["status"], e["result"], e.get("reason"))
            for e in read_log(served.cfg.parent / "access.log")
            if e["event"] == "admin_access"
        ]

    refused = {
        ("riverside-am", "audit_page", 403, "denied", "role"),
        ("sre-oncall", "audit_api", 403, "denied", "role"),
        (None, "audit_api", 401, "denied", "unauthenticated"),
        ("riverside-am", "audit_page", 403, "denied", "cross_site"),
    }
    wait_until(lambda: refused <= set(logged()), "the refusals in the access log")

    def reports() -> list[tuple[Any, ...]]:
        return [
            (e["period"], e["format"], e["facility"])
            for e in read_log(served.cfg.parent / "access.log")
            if e["event"] == "admin_access" and e["what"] == "report_html" and e["status"] == 200
        ]

    wait_until(lambda: bool(reports()), "the report download in the access log")
    assert reports() == [("2026-11", "html", "riverside")]

    def denied(user: str) -> list[dict[str, Any]]:
        out = vitalgate("audit", "search", "--config", str(served.cfg), "--user", user, "--format", "json")
        return [ev for ev in json.loads(out.stdout) if ev["outcome"] == "4"]

    wait_until(lambda: len(denied("riverside-am")) == 2 and len(denied("sre-oncall")) == 1, "recorded")
    for ev in [*denied("riverside-am"), *denied("sre-oncall")]:
        AuditEvent.model_validate(ev)  # a valid FHIR R4 AuditEvent, as every other record
    descs = sorted(ev["outcomeDesc"] for ev in denied("riverside-am"))
    assert descs == [
        "refused read of the audit trail: audit_page: cross_site",
        "refused read of the audit trail: audit_page: role",
    ]
    table = vitalgate("audit", "search", "--config", str(served.cfg), "--user", "sre-oncall").stdout
    assert "1 AuditEvent. OC is the outcome:" in table and " 4 " in table


@pytest.mark.slow
def test_the_audit_cli_refuses_a_facility_it_does_not_know(served: Served) -> None:
    for command, extra in (("search", ()), ("export", ("--out", str(served.cfg.parent / "x.json")))):
        proc = vitalgate(
            "audit", command, "--config", str(served.cfg), "--facility", "nope", *extra, check=False
        )
        assert proc.returncode == 2, proc.stdout
        assert "unknown facility 'nope' (known: lakeside, riverside, st-marys)" in proc.stderr
        assert "AuditEvent" not in proc.stdout
    assert not (served.cfg.parent / "x.json").exists()
    ok = vitalgate("audit", "search", "--config", str(served.cfg), "--facility", "riverside")
    assert re.search(r"^\d+ AuditEvents?\. OC is the outcome:", ok.stdout, re.M)


@pytest.mark.slow
async def test_a_refused_sign_in_is_a_diagnostic_event(served: Served) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            served.admin + "/ui/sign-in", data={"token": "wrong"}, headers={"Origin": served.admin}
        ) as r:
            assert r.status == 401
    wait_until(
        lambda: any(e.get("reason") == "unknown_token" for e in served.gw.events("admin_sign_in")),
        "the warning on stderr with its event",
    )
    assert "wrong" not in served.gw.stderr_path.read_text()


async def _fits(tab: Tab, width: int) -> dict[str, Any]:
    """At ``width`` px (a phone's, emulated): how wide the page is, and where the rightmost
    "Budget left" and "Alert" cells end."""
    await tab.send(
        "Emulation.setDeviceMetricsOverride", width=width, height=844, deviceScaleFactor=1, mobile=True
    )
    try:
        found: dict[str, Any] = await tab.evaluate(
            "(() => { const right = s => Math.max(0, ...[...document.querySelectorAll(s)]"
            ".map(e => e.getBoundingClientRect().right));"
            " return {scroll: document.documentElement.scrollWidth,"
            " budget: right('td[data-label=\"Budget left\"]'), alert: right('td[data-label=\"Alert\"]')}; })()"
        )
    finally:
        await tab.send("Emulation.clearDeviceMetricsOverride")
    return found


@pytest.mark.slow
async def test_the_pages_fit_a_phone_without_sideways_scrolling(served: Served, tmp_path: Path) -> None:
    async with chromium(tmp_path / "profile") as browser:
        tab = await browser.new_tab()
        await tab.goto(served.admin + "/ui")
        await tab.type_into("#token", SRE_TOKEN)
        await tab.click("button[type=submit]")
        for path, name in (("/ui", "fleet"), ("/ui/facilities/riverside", "facility")):
            await tab.goto(served.admin + path)
            assert "Budget left" in await tab.text()
            fits = await _fits(tab, 390)
            assert fits["scroll"] <= 390, (path, fits)
            assert 0 < fits["budget"] <= 390 and 0 < fits["alert"] <= 390, (path, fits)
            await screenshots(tab, f"handover-{name}")
        await tab.goto(served.admin + "/ui/facilities/lakeside/latency")
        assert (await _fits(tab, 390))["scroll"] <= 390
        await screenshots(tab, "handover-latency")


async def test_no_sign_out_without_tokens(tmp_path: Path, upstream: Upstream) -> None:
    gw = Gateway(load_config(gateway_config(tmp_path, upstream.port, slos=SLOS)), [extend_admin])
    await gw.start()
    try:
        async with aiohttp.ClientSession() as s:
            for path in ("/ui", "/ui/facilities/riverside", "/ui/facilities/riverside/latency"):
                async with s.get(f"http://127.0.0.1:{gw.admin_port}{path}", headers=HTML) as r:
                    assert r.status == 200
                    assert "Sign out" not in await r.text(), path
    finally:
        await gw.stop()
