"""The status pages and report downloads on the admin listener (composition root:
the gateway serves, ``reports`` renders, ``slo`` computes)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway.admin.api import AdminApi
from gateway.admin.auth import identity_of, refuse_facility
from gateway.admin.browser import has_session
from reports.data import (
    PeriodError,
    ReportBackend,
    StoreReportBackend,
    build_report,
    check_started,
    daily_availability,
    paper_of,
    parse_period,
)
from reports.pages import facility_page, fleet_page
from reports.prometheus_backend import PrometheusReportBackend
from slo.prometheus import PrometheusError
from slo.spec import Facility
from slo.store import Store, StoreError
from vitalgate.latency_pages import add_latency_routes

T = TypeVar("T")


def extend_admin(app: web.Application, admin: AdminApi) -> None:
    pages = AdminPages(admin)
    app.router.add_get("/ui", pages.fleet)
    app.router.add_get("/ui/facilities/{facility}", pages.facility)
    app.router.add_get("/api/v1/reports/{facility}/{period}.{fmt:pdf|html}", pages.report)
    add_latency_routes(app, admin)


class AdminPages:
    def __init__(self, admin: AdminApi) -> None:
        self.admin = admin

    @property
    def facilities(self) -> dict[str, Facility]:
        """The facilities of the config in force (a reload may add or remove one)."""
        return {f.id: f for f in self.admin.config.facilities()}

    def _open(self) -> tuple[ReportBackend, Store | None]:
        """The figures' backend (the configured Prometheus, else the embedded store) and the
        store to close after."""
        prom = self.admin.prometheus()
        if prom is not None:
            return PrometheusReportBackend(prom), None
        cfg = self.admin.config
        store = Store(cfg.resolve(cfg.gateway.telemetry.store.path), readonly=True)
        return StoreReportBackend(store), store

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Store reads, numpy and rendering run off the event loop: the proxy keeps serving.
        A store that cannot be read is a 503 with the reason, never a traceback."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except (StoreError, sqlite3.Error) as exc:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "store unavailable", "detail": str(exc)}),
                content_type="application/json",
            ) from exc
        except PrometheusError as exc:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "status source unavailable", "detail": str(exc)}),
                content_type="application/json",
            ) from exc

    async def fleet(self, request: web.Request) -> web.Response:
        rows = await self._run(self.admin.status_rows, None, identity_of(request))
        return web.Response(text=fleet_page(rows, has_session(request)), content_type="text/html")

    def _facility_html(self, facility_id: str, session: bool) -> str:
        f = self.facilities[facility_id]
        now = time.time()
        rows = self.admin.status_rows(facility_id)
        backend, store = self._open()
        try:
            slos = self.admin.config.slos
            calendars = [(s.name, s.kind, s.objective, daily_availability(backend, s, f, now)) for s in slos]
            local = datetime.fromtimestamp(now, ZoneInfo(f.timezone))
            month = parse_period(f"{local.year}-{local.month:02d}")
            report = build_report(backend, slos, f, month, now, previous_periods=0)
        finally:
            if store is not None:
                store.close()
        recent = [(s.slo, s.kind, inc) for s in report.slos for inc in s.incidents][-20:]
        prev = local.replace(day=1) - timedelta(days=1)
        periods = [
            month.label,
            f"{prev.year}-{prev.month:02d}",
            f"{local.year}-Q{(local.month - 1) // 3 + 1}",
            str(local.year),
        ]
        return facility_page(f.id, f.name, f.timezone, rows, calendars, recent, periods, session)

    async def facility(self, request: web.Request) -> web.Response:
        facility_id = request.match_info["facility"]
        refused = refuse_facility(identity_of(request), facility_id, self.facilities)
        if refused is not None:
            known = facility_id if facility_id in self.facilities else None  # (never a free-text id)
            self.admin.log_access(request, "facility_page", known, refused.status, "facility")
            return refused
        html = await self._run(self._facility_html, facility_id, has_session(request))
        self.admin.log_access(request, "facility_page", facility_id, 200)
        return web.Response(text=html, content_type="text/html")

    def _report(self, facility_id: str, period_label: str, fmt: str) -> bytes:
        # matplotlib and weasyprint load on the first report, not in every gateway at start-up.
        from reports.render import render_html, render_pdf_bytes  # noqa: PLC0415

        facility = self.facilities[facility_id]
        backend, store = self._open()
        try:
            report = build_report(
                backend,
                self.admin.config.slos,
                facility,
                parse_period(period_label),
                time.time(),
            )
        finally:
            if store is not None:
                store.close()
        paper = paper_of(facility)
        return render_pdf_bytes(report, paper) if fmt == "pdf" else render_html(report, paper).encode()

    async def report(self, request: web.Request) -> web.Response:
        facility_id, period, fmt = (request.match_info[k] for k in ("facility", "period", "fmt"))
        refused = refuse_facility(identity_of(request), facility_id, self.facilities)
        if refused is not None:
            known = facility_id if facility_id in self.facilities else None  # (never a free-text id)
            self.admin.log_access(request, f"report_{fmt}", known, refused.status, "facility", format=fmt)
            return refused
        try:
            # A period that has not begun has no figure: a 400, as a malformed one.
            check_started(parse_period(period), self.facilities[facility_id].timezone, time.time())
        except PeriodError as exc:
            self.admin.log_access(request, f"report_{fmt}", facility_id, 400, format=fmt)
            return web.json_response({"error": "bad period", "detail": str(exc)}, status=400)
        body = await self._run(self._report, facility_id, period, fmt)
        # (the period is logged once it parsed: a bounded label such as 2026-11, never free text)
        self.admin.log_access(request, f"report_{fmt}", facility_id, 200, period=period, format=fmt)
        content_type = "application/pdf" if fmt == "pdf" else "text/html"
        headers = {"Content-Disposition": f'inline; filename="uptime-{facility_id}-{period}.{fmt}"'}
        return web.Response(body=body, content_type=content_type, headers=headers)
