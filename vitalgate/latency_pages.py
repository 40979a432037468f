"""The latency page and its JSON form on the admin listener (composition root: the gateway
serves, ``slo.latency`` reads the store, ``reports.latency`` renders). Same roles and facility
scoping as the facility page; accesses are logged by token name."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

from aiohttp import web

from gateway.admin.api import AdminApi
from gateway.admin.auth import identity_of, refuse_facility
from gateway.admin.browser import has_session
from reports.latency import latency_json, latency_page
from slo.latency import LatencyView, WindowError, route_latency, window_seconds
from slo.store import Store, StoreError

DEFAULT_WINDOW = "1h"


def add_latency_routes(app: web.Application, admin: AdminApi) -> None:
    pages = LatencyPages(admin)
    app.router.add_get("/ui/facilities/{facility}/latency", pages.page)
    app.router.add_get("/api/v1/latency/{facility}", pages.api)


class LatencyPages:
    def __init__(self, admin: AdminApi) -> None:
        self.admin = admin

    def _view(self, facility_id: str, window: str) -> LatencyView:
        cfg = self.admin.config
        store = Store(cfg.resolve(cfg.gateway.telemetry.store.path), readonly=True)
        try:
            return route_latency(store, facility_id, window, time.time())
        finally:
            store.close()

    async def _checked(self, request: web.Request, what: str) -> tuple[str, str] | web.Response:
        """(facility, window), or the refusal: 401/403/404 as for the facility page, 400 for
        a window that is not offered, 503 when there is no store to read."""
        facility_id = request.match_info["facility"]
        facilities = {f.id for f in self.admin.config.facilities()}
        refused = refuse_facility(identity_of(request), facility_id, facilities)
        if refused is not None:
            known = facility_id if facility_id in facilities else None  # (never a free-text id)
            self.admin.log_access(request, what, known, refused.status, "facility")
            return refused
        window = request.query.get("window", DEFAULT_WINDOW)
        try:
            window_seconds(window)
        except WindowError as exc:
            self.admin.log_access(request, what, facility_id, 400)
            return web.json_response({"error": "bad window", "detail": str(exc)}, status=400)
        if not self.admin.config.gateway.telemetry.store.enabled:
            self.admin.log_access(request, what, facility_id, 503)
            return web.json_response(
                {
                    "error": "the latency view reads the embedded store, which is disabled"
                    " (telemetry.store.enabled)"
                },
                status=503,
            )
        return facility_id, window

    async def _read(self, facility_id: str, window: str) -> LatencyView:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._view, facility_id, window)
        except (StoreError, sqlite3.Error) as exc:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "store unavailable", "detail": str(exc)}),
                content_type="application/json",
            ) from exc

    async def page(self, request: web.Request) -> web.Response:
        checked = await self._checked(request, "latency_page")
        if isinstance(checked, web.Response):
            return checked
        facility_id, window = checked
        view = await self._read(facility_id, window)
        name = next(f.name for f in self.admin.config.facilities() if f.id == facility_id)
        self.admin.log_access(request, "latency_page", facility_id, 200)
        html = latency_page(facility_id, name, view, has_session(request))
        return web.Response(text=html, content_type="text/html")

    async def api(self, request: web.Request) -> web.Response:
        checked = await self._checked(request, "latency_api")
        if isinstance(checked, web.Response):
            return checked
        facility_id, window = checked
        view = await self._read(facility_id, window)
        self.admin.log_access(request, "latency_api", facility_id, 200)
        return web.json_response(latency_json(view))
