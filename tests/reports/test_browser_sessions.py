"""Signing in, reading and signing out in a real browser (Debian's chromium, headless, driven
over the DevTools protocol): an account manager sees only its facility and downloads its
report; an auditor searches, exports and verifies the audit trail; a page of another site
cannot post to the listener. Screenshots of every page are saved as test artifacts
(test-artifacts/, or VITALGATE_TEST_ARTIFACTS)."""

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from gateway.audit.search import AuditQuery
from gateway.server import Gateway
from tests import slos
from tests.reports.cdp import Browser, Tab, chromium
from tests.support.cli import vitalgate
from tests.support.gateway import flushed, gateway_config
from tests.support.peers import Upstream
from tests.support.readers import read_log
from tests.support.waiting import wait_until_async
from vitalgate.admin_pages import extend_admin
from vitalgate.config import load_config
from vitalgate.peers import free_port

AM_TOKEN = "am-token-for-riverside-0123"
AUDITOR_TOKEN = "auditor-token-0123456789"
PATIENT = "ZebulonQuix-4711"
OTHER_PATIENT = "MarthaOther-0815"
USER = "dr.quinn"


def _token(name: str, token: str, role: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "role": role, **extra}


def artifacts() -> Path:
    out = Path(os.environ.get("VITALGATE_TEST_ARTIFACTS", "test-artifacts")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


async def screenshots(tab: Tab, name: str) -> None:
    """The page at desktop and at phone width, as a person sees it."""
    for suffix, width, height, mobile in (("desktop", 1280, 800, False), ("phone", 390, 844, True)):
        shot = artifacts() / f"{name}-{suffix}.png"
        await tab.screenshot(shot, width, height, mobile)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 3000


async def received(tab: Tab, pattern: str, start: Callable[[], Awaitable[None]]) -> tuple[int, bytes]:
    """Runs ``start`` (a click) and returns the status and body of the response the browser
    receives for the URL ``pattern`` (it opens a PDF in its viewer rather than saving it)."""
    await tab.send("Fetch.enable", patterns=[{"urlPattern": pattern, "requestStage": "Response"}])
    paused = tab.browser.expect("Fetch.requestPaused", tab.session_id)
    await start()
    response = await asyncio.wait_for(paused, 60)
    body = await tab.send("Fetch.getResponseBody", requestId=response["requestId"])
    await tab.send("Fetch.continueRequest", requestId=response["requestId"])
    await tab.send("Fetch.disable")
    data = body["body"].encode()
    return int(response["responseStatusCode"]), base64.b64decode(data) if body["base64Encoded"] else data


async def download(browser: Browser, directory: Path, start: Callable[[], Awaitable[None]]) -> Path:
    """Runs ``start`` (a click) and waits for the download it causes; the saved file."""
    await browser.allow_downloads(directory)
    begun = browser.expect("Browser.downloadWillBegin")
    await start()
    guid = (await asyncio.wait_for(begun, 60))["guid"]

    def finished() -> str | None:
        # (from every event received so far: the last one may have come before this looks)
        for event in browser.events:
            params = event.get("params", {})
            if (
                event.get("method") == "Browser.downloadProgress"
                and params.get("guid") == guid
                and params["state"] in ("completed", "canceled")
            ):
                return str(params["state"])
        return None

    await wait_until_async(lambda: finished() is not None, "the download finishes", 60)
    assert finished() == "completed"
    return directory / str(guid)


async def _sign_in(tab: Tab, token: str) -> None:
    await tab.type_into("#token", token)
    await tab.click("button[type=submit]")


@pytest.mark.slow
async def test_account_manager_signs_in_sees_its_facility_downloads_and_signs_out(
    tmp_path: Path, upstream: Upstream
) -> None:
    cfg = gateway_config(
        tmp_path,
        upstream.port,
        slos=slos.BROWSER,
        extra={
            "admin": {
                "tokens": [_token("riverside-am", AM_TOKEN, "account_manager", facilities=["riverside"])]
            },
            "telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}},
        },
    )
    gw = Gateway(load_config(cfg), [extend_admin])
    await gw.start()
    attacker = web.Application()
    admin = f"http://127.0.0.1:{gw.admin_port}"

    async def evil(_request: web.Request) -> web.Response:
        # Another site (localhost is not 127.0.0.1's site) that posts to the listener at once.
        return web.Response(
            text=f'<form id=f method=post action="{admin}/ui/sign-out"></form>'
            "<script>document.getElementById('f').submit()</script>",
            content_type="text/html",
        )

    attacker.router.add_get("/", evil)
    runner = web.AppRunner(attacker)
    await runner.setup()
    evil_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", evil_port).start()
    try:
        async with ClientSession() as s:
            for i in range(30):
                fac = ("riverside", "st-marys")[i % 2]
                async with s.get(
                    f"http://127.0.0.1:{gw.proxy_port}/fhir/Patient/1", headers={"X-Facility-ID": fac}
                ):
                    pass
        await flushed(gw)
        async with chromium(tmp_path / "profile") as browser:
            tab = await browser.new_tab()
            await tab.goto(admin + "/ui/facilities/riverside")
            assert "Admin token" in await tab.text()  # a page to sign in on, not JSON
            await screenshots(tab, "sign-in")
            await _sign_in(tab, "not-the-token")
            assert "That is not a valid admin token." in await tab.text()
            await screenshots(tab, "sign-in-refused")
            await _sign_in(tab, AM_TOKEN)
            assert await tab.url() == admin + "/ui/facilities/riverside"  # back to the page asked for
            assert "Daily SLI, last 90 days" in await tab.text()
            await screenshots(tab, "facility-signed-in")
            (cookie,) = [c for c in await browser.cookies() if c["name"] == "vitalgate_session"]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["session"]
            assert AM_TOKEN not in json.dumps(await browser.cookies())

            await tab.goto(admin + "/ui")
            fleet = await tab.text()
            assert "Riverside" in fleet and "St Mary" not in fleet and "Lakeside" not in fleet
            for path in ("/ui/facilities/st-marys", "/ui/facilities/nowhere", "/ui/audit"):
                await tab.goto(admin + path)
                assert "Not allowed" in await tab.text() or "does not give access" in await tab.text(), path
            await tab.goto(admin + "/ui/facilities/st-marys")
            await screenshots(tab, "error-forbidden")

            await tab.goto(admin + "/ui/facilities/riverside")
            status, pdf = await received(tab, "*.pdf", lambda: tab.click('a[href$=".pdf"]', navigates=False))
            assert status == 200 and pdf.startswith(b"%PDF")

            # A page of another site posts to sign-out: refused, and the session lives on.
            await tab.goto(f"http://localhost:{evil_port}/")

            async def back_at_the_listener() -> bool:  # (the form submits itself on load)
                return (await tab.url()).startswith(admin)

            await wait_until_async(back_at_the_listener, "the cross-site form lands on the listener")
            assert "another site" in await tab.text()
            await screenshots(tab, "error-cross-site")
            await tab.goto(admin + "/ui/facilities/riverside")
            assert "Daily SLI" in await tab.text()

            await tab.click("header button")  # Sign out
            assert await tab.url() == admin + "/ui/sign-in?signed-out=1"
            assert "You are signed out." in await tab.text()
            await screenshots(tab, "signed-out")
            assert not [c for c in await browser.cookies() if c["name"] == "vitalgate_session"]
            await tab.goto(admin + "/ui/facilities/riverside")
            assert "Admin token" in await tab.text()
            # The old cookie, put back, opens nothing: the session ended on the server.
            await browser.send("Storage.setCookies", {"cookies": [cookie]})
            await tab.goto(admin + "/ui/facilities/riverside")
            assert "Admin token" in await tab.text()
    finally:
        await runner.cleanup()
        await gw.stop()
    events = read_log(tmp_path / "access.log")
    assert [(e["token"], e["result"]) for e in events if e["event"] == "admin_sign_in"] == [
        (None, "refused"),
        ("riverside-am", "ok"),
    ]
    assert {(e["token"], e["what"], e["status"]) for e in events if e["event"] == "admin_access"} >= {
        ("riverside-am", "report_pdf", 200),
        ("riverside-am", "facility_page", 403),
    }
    assert AM_TOKEN not in (tmp_path / "access.log").read_text()


@pytest.mark.slow
async def test_auditor_searches_exports_and_verifies_on_the_audit_page(
    tmp_path: Path, upstream: Upstream
) -> None:
    vitalgate("audit", "keygen", "--out", str(tmp_path / "keys"))
    cfg = gateway_config(
        tmp_path,
        upstream.port,
        extra={
            "admin": {
                "tokens": [
                    _token("auditor-1", AUDITOR_TOKEN, "auditor"),
                    _token("riverside-am", AM_TOKEN, "account_manager", facilities=["riverside"]),
                ]
            },
            "audit": {
                "path": "audit",
                "key_file": "keys/audit.key",
                "signing_key_file": "keys/audit-signing.key",
                "identity": {"header": "X-Authenticated-User", "trusted_sources": ["127.0.0.1/32"]},
                "flush_interval": "100ms",
            },
        },
    )
    gw = Gateway(load_config(cfg), [extend_admin])
    await gw.start()
    admin = f"http://127.0.0.1:{gw.admin_port}"
    try:
        async with ClientSession() as s:
            for path, facility, user in (
                (f"/fhir/Patient/{PATIENT}", "st-marys", USER),
                (f"/fhir/Observation?patient={PATIENT}", "riverside", USER),
                (f"/fhir/Patient/{OTHER_PATIENT}", "riverside", "nurse.ratched"),
            ):
                headers = {"X-Facility-ID": facility, "X-Authenticated-User": user}
                async with s.get(f"http://127.0.0.1:{gw.proxy_port}{path}", headers=headers) as r:
                    assert r.status == 200
            trail = gw.admin.audit
            assert trail is not None
            await wait_until_async(  # the writer writes within its flush interval
                lambda: asyncio.to_thread(lambda: len(trail.search(AuditQuery())) >= 3), "three records", 60
            )

        async with chromium(tmp_path / "profile") as browser:
            tab = await browser.new_tab()
            await tab.goto(admin + "/ui")
            await _sign_in(tab, AUDITOR_TOKEN)
            assert await tab.url() == admin + "/ui/audit"  # the auditor's start page
            assert "Patient id" in await tab.text()
            await screenshots(tab, "audit")

            await tab.fill("#patient", PATIENT)
            await tab.click("button.primary")
            found = await tab.text()
            assert "2 events" in found and f"Patient/{PATIENT}" in found and OTHER_PATIENT not in found
            assert USER in found and "st-marys" in found and "riverside" in found
            await screenshots(tab, "audit-search")

            await tab.fill("#facility", "st-marys")
            await tab.click("button.primary")
            assert "1 event," in await tab.text()
            await tab.fill("#patient", "")
            await tab.fill("#facility", "")
            await tab.fill("#user", "nurse.ratched")
            await tab.click("button.primary")
            found = await tab.text()
            assert "1 event," in found and f"Patient/{OTHER_PATIENT}" in found and PATIENT not in found
            await tab.fill("#user", "")
            await tab.fill("#since", "2099-01-01T00:00:00")
            await tab.click("button.primary")
            assert "No event matches." in await tab.text()

            await tab.fill("#since", "")
            await tab.fill("#patient", PATIENT)
            saved = await download(
                browser, tmp_path / "downloads", lambda: tab.click("button.secondary", navigates=False)
            )
            bundle = json.loads(saved.read_text())
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
            assert bundle["total"] == 2
            patients = {
                e["what"]["reference"]
                for entry in bundle["entry"]
                for e in entry["resource"]["entity"]
                if e["role"]["code"] == "1"
            }
            assert patients == {f"Patient/{PATIENT}"}

            await tab.click('a[href="/ui/audit/verify"]')
            assert "Audit trail: OK" in await tab.text()
            await screenshots(tab, "audit-verify")
            await tab.click("header button")
            assert "You are signed out." in await tab.text()
            await tab.goto(admin + "/ui/audit")
            assert "Admin token" in await tab.text()

        async with ClientSession() as s:

            async def post(token: str, **form: str) -> tuple[int, str]:
                headers = {"Authorization": f"Bearer {token}"}
                async with s.post(admin + "/ui/audit", data=form, headers=headers) as r:
                    return r.status, await r.text()

            status, body = await post(AUDITOR_TOKEN, since="yesterday")
            assert status == 400 and "not an ISO 8601 time" in body  # not recorded: it read nothing
            status, body = await post(AM_TOKEN, patient=PATIENT)
            assert status == 403 and PATIENT not in body

        # Every search and the export were recorded, under the token's name, with their query,
        # as reads of /api/v1/audit are.
        def recorded_queries() -> list[str]:
            return [
                base64.b64decode(e["query"]).decode()
                for ev in trail.search(AuditQuery(user="auditor-1"))
                for e in ev["entity"]
                if e["role"]["code"] == "24"
            ]

        await wait_until_async(
            lambda: asyncio.to_thread(lambda: len(recorded_queries()) >= 5),
            "the auditor's five queries recorded",
        )
        queries = await asyncio.to_thread(recorded_queries)
        assert queries == [
            f"patient={PATIENT}",
            f"patient={PATIENT}&facility=st-marys",
            "user=nurse.ratched",
            "since=2099-01-01T00%3A00",  # (the picker drops zero seconds)
            f"patient={PATIENT}",
        ]
    finally:
        await gw.stop()
    assert PATIENT not in (tmp_path / "access.log").read_text()  # only the trail names patients
