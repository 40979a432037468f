"""Facility-scoped access to the admin API and pages: 401 and 403 for every role."""

import asyncio
import hashlib
import json
from pathlib import Path

import aiohttp

from gateway.config import load_config
from gateway.server import Gateway
from tests.helpers import Upstream, gateway_config, read_log
from vitalgate.admin_pages import extend_admin

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


SLOS = [{"name": "avail", "service": "fhir", "objective": 99.5, "sli": {"availability": {}}}]


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
            await asyncio.sleep(0.5)

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
    assert {a["what"] for a in accesses} == {"facility_page", "report_pdf", "report_html"}


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
