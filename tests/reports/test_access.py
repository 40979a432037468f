"""Facility-scoped access to the admin API and pages: 401 and 403 for every role."""

import hashlib
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from gateway.server import Gateway
from tests import slos
from tests.support.gateway import GatewayProcess, flushed, gateway_config
from tests.support.peers import Upstream
from tests.support.readers import read_log
from vitalgate.admin_pages import extend_admin
from vitalgate.config import load_config
from vitalgate.peers import free_port

TOKENS = {"sre": "s3cret-sre-token", "engineer": "s3cret-eng-token", "account_manager": "s3cret-am-token"}


def _tokens() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for role, token in TOKENS.items():
        entry: dict[str, object] = {
            "name": f"{role}-bot",
            "sha256": hashlib.sha256(token.encode()).hexdigest(),
            "role": role,
        }
        if role == "account_manager":
            entry["facilities"] = ["riverside"]
        out.append(entry)
    return out


SLOS = slos.AVAIL


@pytest.mark.slow
async def test_roles(tmp_path: Path, upstream: Upstream) -> None:
    cfg = gateway_config(
        tmp_path,
        upstream.port,
        slos=SLOS,
        extra={
            "admin": {"tokens": _tokens()},
            "telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}},
        },
    )
    gw = Gateway(load_config(cfg), [extend_admin])
    await gw.start()
    try:
        admin = f"http://127.0.0.1:{gw.admin_port}"
        async with aiohttp.ClientSession() as s:
            for fac in ("riverside", "st-marys"):
                async with s.get(
                    f"http://127.0.0.1:{gw.proxy_port}/fhir/Patient/1", headers={"X-Facility-ID": fac}
                ) as r:
                    assert r.status == 200
            await flushed(gw)

            async def get(path: str, role: str | None, token: str | None = None) -> tuple[int, bytes]:
                headers = {}
                if role or token:
                    headers["Authorization"] = f"Bearer {token or TOKENS[role or '']}"
                async with s.get(admin + path, headers=headers) as r:
                    return r.status, await r.read()

            protected = [
                "/ui",
                "/ui/facilities/riverside",
                "/api/v1/slo",
                "/api/v1/reports/riverside/2026-11.html",
            ]
            for path in protected:
                assert (await get(path, None))[0] == 401, path
                assert (await get(path, None, "wrong-token"))[0] == 401, path
            for path in ("/metrics", "/healthz", "/readyz"):
                assert (await get(path, None))[0] == 200, path  # open unless protect_metrics
            for role in ("sre", "engineer"):
                for path in [*protected, "/ui/facilities/st-marys", "/api/v1/reports/st-marys/2026-11.pdf"]:
                    status, _ = await get(path, role)
                    assert status == 200, (role, path)
                rows = json.loads((await get("/api/v1/slo", role))[1])["slos"]
                assert {r["facility"] for r in rows} == {"riverside", "st-marys", "lakeside", "*"}
            # The account manager sees riverside only; everything else is 403 or filtered out.
            am = "account_manager"
            assert (await get("/ui/facilities/riverside", am))[0] == 200
            assert (await get("/api/v1/reports/riverside/2026-11.pdf", am))[1].startswith(b"%PDF")
            for path in (
                "/ui/facilities/st-marys",
                "/api/v1/reports/st-marys/2026-11.html",
                "/api/v1/slo?facility=st-marys",
                "/api/v1/slo?facility=*",
            ):
                assert (await get(path, am))[0] == 403, path
            rows = json.loads((await get("/api/v1/slo", am))[1])["slos"]
            assert {r["facility"] for r in rows} == {"riverside"}
            fleet = (await get("/ui", am))[1].decode()
            assert "Riverside" in fleet and "St Mary" not in fleet
            assert (await get("/api/v1/reports/riverside/2026-13.html", "sre"))[0] == 400
            # A period that has not begun is refused as a malformed one is: no invented figures.
            status, body = await get("/api/v1/reports/riverside/2999-01.pdf", "sre")
            assert status == 400 and b"has not started" in body
            assert (await get("/ui/facilities/nowhere", "sre"))[0] == 404
    finally:
        await gw.stop()
    log = (tmp_path / "access.log").read_text()
    assert all(t not in log for t in TOKENS.values())  # tokens are never logged
    accesses = [r for r in read_log(tmp_path / "access.log") if r["event"] == "admin_access"]
    assert {(a["token"], a["facility"], a["status"]) for a in accesses} >= {
        ("account_manager-bot", "riverside", 200),
        ("account_manager-bot", "st-marys", 403),
        ("sre-bot", "st-marys", 200),
    }
    handled = {a["what"] for a in accesses if a["status"] != 401}
    assert handled == {"facility_page", "report_pdf", "report_html", "slo_api"}
    # Refused without a valid token: logged too, by what was asked, with no token name.
    unauthenticated = [a for a in accesses if a["status"] == 401]
    assert {a["what"] for a in unauthenticated} == {"fleet_page", "facility_page", "slo_api", "report_html"}
    assert all(
        (a["token"], a["result"], a["reason"]) == (None, "denied", "unauthenticated") for a in unauthenticated
    )
    assert all(a["reason"] == "facility" for a in accesses if a["status"] == 403)


async def test_protect_metrics(tmp_path: Path, upstream: Upstream) -> None:
    cfg = gateway_config(
        tmp_path, upstream.port, extra={"admin": {"tokens": _tokens(), "protect_metrics": True}}
    )
    gw = Gateway(load_config(cfg), [extend_admin])
    await gw.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
                assert r.status == 401
            async with s.get(
                f"http://127.0.0.1:{gw.admin_port}/metrics",
                headers={"Authorization": f"Bearer {TOKENS['engineer']}"},
            ) as r:
                assert r.status == 200
    finally:
        await gw.stop()


async def test_unreadable_store_is_a_503_not_a_traceback(tmp_path: Path, upstream: Upstream) -> None:
    cfg = gateway_config(
        tmp_path, upstream.port, slos=SLOS, extra={"telemetry": {"store": {"path": "store.db"}}}
    )
    gw = Gateway(load_config(cfg), [extend_admin])
    await gw.start()
    try:
        (tmp_path / "store.db").unlink()  # gone from under the running gateway
        async with aiohttp.ClientSession() as s:
            for path in (
                "/ui",
                "/ui/facilities/riverside",
                "/api/v1/reports/riverside/2026-11.html",
                "/api/v1/slo",
            ):
                async with s.get(f"http://127.0.0.1:{gw.admin_port}{path}") as r:
                    assert r.status == 503, path
                    body = await r.json()
                    assert body["error"] == "store unavailable" and "no store here yet" in body["detail"]
    finally:
        await gw.stop()


@pytest.mark.slow
def test_the_admin_listener_echoes_nothing_and_tells_nothing(tmp_path: Path) -> None:
    """Malformed requests get a fixed answer and leave no request bytes in stderr; a token
    limited to riverside gets the same 403 for a facility that exists and one that does not;
    "bearer" is a scheme in any case; every response carries the browser protections."""
    cfg = gateway_config(tmp_path, free_port(), slos=SLOS, extra={"admin": {"tokens": _tokens()}})
    gw = GatewayProcess(cfg)
    try:
        host, port = gw.admin.removeprefix("http://").split(":")
        token = TOKENS["account_manager"]

        def raw(request: bytes) -> bytes:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            return data

        malformed = [
            b"GET /api/v1/slo HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
            + token.encode()
            + b"\x01\r\n\r\n",
            b"GET /ui/facilities/ZebulonQuixwhistle\xff HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /api/v1/slo?facility=MRN12345678\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /api/v1/slo HTTP/1.1\r\nHost: a\r\nX-Note: \x00ZebulonQuixwhistle\r\n\r\n",
        ]
        for request in malformed:
            reply = raw(request)
            assert reply.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), reply[:80]
            assert b"Zebulon" not in reply and b"MRN123" not in reply and token.encode() not in reply
            assert b'"malformed request"' in reply

        def get(path: str, authorization: str) -> tuple[int, dict[str, str], bytes]:
            req = urllib.request.Request(gw.admin + path, headers={"Authorization": authorization})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), e.read()

        am = f"bearer {token}"  # lower case: RFC 6750's scheme is case-insensitive
        assert get("/ui/facilities/riverside", am)[0] == 200
        answers = {
            get(path, am)[::2]
            for path in (
                "/ui/facilities/st-marys",  # exists, not this token's
                "/ui/facilities/nowhere",  # does not exist
                "/api/v1/reports/st-marys/2026-11.html",
                "/api/v1/reports/nowhere/2026-11.html",
                "/api/v1/slo?facility=st-marys",
                "/api/v1/slo?facility=nowhere",
            )
        }
        assert len(answers) == 1 and next(iter(answers))[0] == 403  # one answer: nothing to tell apart
        assert get("/ui/facilities/nowhere", f"BEARER {TOKENS['sre']}")[0] == 404  # sees all: 404
        for path in ("/ui", "/api/v1/slo", "/api/v1/reports/riverside/2026-11.html", "/metrics", "/healthz"):
            status, headers, _ = get(path, f"Bearer {TOKENS['sre']}")
            assert status == 200, path
            assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
            assert (
                headers["Cache-Control"] == "no-store"
                and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            )
            assert headers["Server"] == "vitalgate", headers["Server"]  # no framework, no version
    finally:
        gw.terminate()
    stderr = gw.stderr_path.read_text()
    assert "refused a malformed request" in stderr
    assert token not in stderr and "Zebulon" not in stderr and "MRN123" not in stderr
