"""Browser sessions on the admin listener over real HTTP: the sign-in form, the cookie's
attributes, what a session opens and what it does not, CSRF, sign-out, expiry and the bound."""

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.config import Config, GatewayConfig
from gateway.server import Gateway
from tests import slos
from tests.support.gateway import gateway_config
from tests.support.peers import Upstream
from tests.support.readers import counter_value, read_log
from vitalgate.admin_pages import extend_admin
from vitalgate.config import load_config

AM_TOKEN = "s3cret-am-token-riverside"
SRE_TOKEN = "s3cret-sre-token-0123"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def _tokens() -> list[dict[str, object]]:
    return [
        {
            "name": "riverside-am",
            "sha256": hashlib.sha256(AM_TOKEN.encode()).hexdigest(),
            "role": "account_manager",
            "facilities": ["riverside"],
        },
        {"name": "sre-oncall", "sha256": hashlib.sha256(SRE_TOKEN.encode()).hexdigest(), "role": "sre"},
    ]


async def _gateway(tmp_path: Path, upstream: Upstream, admin: dict[str, object]) -> Gateway:
    cfg = gateway_config(
        tmp_path,
        upstream.port,
        slos=slos.AVAIL,
        extra={"admin": {"tokens": _tokens(), **admin}, "trusted_proxies": ["127.0.0.1/32"]},
    )
    gw = Gateway(load_config(cfg), [extend_admin])
    await gw.start()
    return gw


@pytest.fixture
async def gw(tmp_path: Path, upstream: Upstream) -> AsyncIterator[Gateway]:
    gateway = await _gateway(tmp_path, upstream, {})
    try:
        yield gateway
    finally:
        await gateway.stop()


def _set_cookie(r: aiohttp.ClientResponse) -> SimpleCookie:
    (header,) = r.headers.getall("Set-Cookie")
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    return jar


async def _sign_in(
    s: aiohttp.ClientSession, admin: str, token: str, *, headers: dict[str, str] | None = None, **form: str
) -> aiohttp.ClientResponse:
    origin = {"Origin": admin} if headers is None else headers
    async with s.post(
        admin + "/ui/sign-in", data={"token": token, **form}, headers=origin, allow_redirects=False
    ) as r:
        await r.read()
        return r


async def test_sign_in_cookie_csrf_and_sign_out(gw: Gateway, tmp_path: Path) -> None:
    admin = f"http://127.0.0.1:{gw.admin_port}"
    # No cookie jar: every cookie below is sent by hand, as the test means it.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:

        async def get(path: str, cookie: str | None, **headers: str) -> tuple[int, str, str]:
            h = {**HTML, **headers}
            if cookie:
                h["Cookie"] = f"vitalgate_session={cookie}"
            async with s.get(admin + path, headers=h, allow_redirects=False) as r:
                return r.status, r.content_type, await r.text()

        # A browser without a session gets the sign-in form, which will come back to the page.
        status, ctype, body = await get("/ui/facilities/riverside", None)
        assert (status, ctype) == (401, "text/html")
        assert 'action="/ui/sign-in"' in body and 'name="next" value="/ui/facilities/riverside"' in body
        # The JSON API answers as before, browser or not.
        status, ctype, _ = await get("/api/v1/slo", None)
        assert (status, ctype) == (401, "application/json")

        r = await _sign_in(s, admin, "not-a-token")
        assert r.status == 401 and "Set-Cookie" not in r.headers
        r = await _sign_in(s, admin, AM_TOKEN, headers={"Origin": "http://evil.example"})
        assert r.status == 403 and "Set-Cookie" not in r.headers  # login CSRF
        r = await _sign_in(s, admin, AM_TOKEN, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status == 403 and "Set-Cookie" not in r.headers
        r = await _sign_in(s, admin, AM_TOKEN, headers={})
        assert r.status == 403  # neither Origin nor Sec-Fetch-Site: not from this page

        r = await _sign_in(s, admin, AM_TOKEN, next="/ui/facilities/riverside")
        assert r.status == 303 and r.headers["Location"] == "/ui/facilities/riverside"
        morsel = _set_cookie(r)["vitalgate_session"]
        assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
        assert morsel["max-age"] == str(8 * 3600) and not morsel["secure"]
        session = morsel.value
        assert len(session) >= 43 and AM_TOKEN not in session

        # The session opens the token's pages and report, and nothing of another facility.
        assert (await get("/ui/facilities/riverside", session))[0] == 200
        status, ctype, body = await get("/ui/facilities/st-marys", session)
        assert (status, ctype) == (403, "text/html") and "does not give access" in body
        async with s.get(
            admin + "/api/v1/reports/riverside/2026-11.pdf",
            headers={"Cookie": f"vitalgate_session={session}"},
        ) as pdf:
            assert pdf.status == 200 and (await pdf.read()).startswith(b"%PDF")
        status, _, fleet = await get("/ui", session)
        assert status == 200 and "Riverside" in fleet and "St Mary" not in fleet
        assert (await get("/api/v1/slo", session))[0] == 401  # a cookie never opens the JSON API
        assert (await get("/ui", "forged" + session[6:]))[0] == 401
        for path in ("/ui/nowhere", "/ui/sign-out"):  # aiohttp's own 404 and 405, as pages too
            status, ctype, body = await get(path, session)
            assert ctype == "text/html" and "<header>" in body and status in (404, 405), path
        # The bearer header is judged alone: a wrong one is refused even beside a good cookie.
        assert (await get("/ui", session, Authorization="Bearer wrong"))[0] == 401

        # Open redirects: only this listener's pages.
        for bad in ("https://evil.example/", "//evil.example/ui", "/api/v1/slo"):
            r = await _sign_in(s, admin, SRE_TOKEN, next=bad)
            assert r.headers["Location"] == "/ui", bad

        async def sign_out(headers: dict[str, str]) -> aiohttp.ClientResponse:
            h = {"Cookie": f"vitalgate_session={session}", **HTML, **headers}
            async with s.post(admin + "/ui/sign-out", headers=h, allow_redirects=False) as r:
                await r.read()
                return r

        for cross in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {}):
            r = await sign_out(cross)
            assert r.status == 403 and r.content_type == "text/html", cross
            assert (await get("/ui/facilities/riverside", session))[0] == 200  # not signed out
        # The audit page's search is a POST too: another site's is refused before anything runs.
        async with s.post(
            admin + "/ui/audit",
            data={"patient": "x"},
            headers={"Cookie": f"vitalgate_session={session}", "Origin": "http://evil.example", **HTML},
        ) as r:
            assert r.status == 403 and "another site" in await r.text()
        r = await sign_out({"Sec-Fetch-Site": "same-origin", "Origin": admin})
        assert r.status == 303 and r.headers["Location"] == "/ui/sign-in?signed-out=1"
        gone = _set_cookie(r)["vitalgate_session"]
        assert gone.value == "" and gone["max-age"] == "0"
        assert (await get("/ui/facilities/riverside", session))[0] == 401  # revoked server-side

        # Under TLS (here: a trusted proxy's X-Forwarded-Proto) the cookie is Secure and __Host-.
        r = await _sign_in(s, admin, AM_TOKEN, headers={"Origin": admin, "X-Forwarded-Proto": "https"})
        secure = _set_cookie(r)["__Host-vitalgate_session"]
        assert secure["secure"] and secure["httponly"] and secure["samesite"] == "Strict"
        async with s.get(
            admin + "/ui/facilities/riverside",
            headers={"Cookie": f"__Host-vitalgate_session={secure.value}", "X-Forwarded-Proto": "https"},
        ) as ok:
            assert ok.status == 200

        async with s.get(admin + "/metrics") as m:
            metrics = await m.text()
    assert counter_value(metrics, "vitalgate_admin_sign_ins_total", result="refused") == 4
    assert counter_value(metrics, "vitalgate_admin_sign_ins_total", result="ok") == 5
    await gw.stop()
    log_text = (tmp_path / "access.log").read_text()
    assert AM_TOKEN not in log_text and SRE_TOKEN not in log_text and session not in log_text
    events = read_log(tmp_path / "access.log")
    sign_ins = [(e["token"], e["result"]) for e in events if e["event"] == "admin_sign_in"]
    assert sign_ins.count((None, "refused")) == 4 and sign_ins.count(("riverside-am", "ok")) == 2
    assert [e["token"] for e in events if e["event"] == "admin_sign_out"] == ["riverside-am"]
    accesses = {
        (e["token"], e["what"], e["facility"], e["status"]) for e in events if e["event"] == "admin_access"
    }
    assert accesses >= {
        ("riverside-am", "facility_page", "riverside", 200),
        ("riverside-am", "facility_page", "st-marys", 403),
        ("riverside-am", "report_pdf", "riverside", 200),
    }


async def test_sessions_expire_are_bounded_and_end_with_their_token(
    tmp_path: Path, upstream: Upstream
) -> None:
    gw = await _gateway(tmp_path, upstream, {"sessions": {"max_count": 2}})
    try:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:

            async def status(cookie: str) -> int:
                h = {**HTML, "Cookie": f"vitalgate_session={cookie}"}
                async with s.get(admin + "/ui", headers=h, allow_redirects=False) as r:
                    return r.status

            async def session(token: str) -> str:
                r = await _sign_in(s, admin, token)
                return _set_cookie(r)["vitalgate_session"].value

            a, b, c = [await session(AM_TOKEN) for _ in range(3)]
            assert await status(a) == 401  # the bound ended the oldest
            assert await status(b) == 200 and await status(c) == 200
            async with s.get(admin + "/metrics") as m:
                assert counter_value(await m.text(), "vitalgate_admin_sessions") == 2
            # A reload that removes the token ends its sessions at the next request.
            running = gw.config
            gw.admin.apply(_variant(gw.config.path, lambda d: d["admin"].update(tokens=_tokens()[1:])))
            assert await status(c) == 401
            # Sessions end at max_age (a reload sets it for the sessions opened after it).
            gw.admin.apply(_variant(gw.config.path, lambda d: d["admin"].update(sessions={"max_age": "1s"})))
            short = await session(SRE_TOKEN)
            assert await status(short) == 200
            await asyncio.sleep(1.2)  # past the 1 s max_age: time itself must pass
            assert await status(short) == 401
            gw.admin.apply(running)
            assert await status(b) == 200  # held all along: the reloads ended none but the token's
    finally:
        await gw.stop()


def _variant(path: Path, change: Callable[[dict[str, Any]], None]) -> Config[GatewayConfig]:
    """The config at ``path`` changed, as a reload would read it."""
    doc = yaml.safe_load(path.read_text())
    change(doc)
    out = path.with_name("gateway-variant.yaml")
    out.write_text(yaml.safe_dump(doc))
    return load_config(out)
