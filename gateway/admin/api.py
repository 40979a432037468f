"""The admin API, in one place: ``/metrics``, ``/healthz``, ``/readyz``, ``/api/v1/slo``, and
the extensions that add pages to it (``vitalgate/admin_pages.py``). Authentication and the
security headers are ``gateway/admin/auth.py``'s; the server that never echoes a request is
``gateway/admin/listener.py``'s.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from core.conventions import ALL_FACILITIES
from gateway.admin.auditpage import AuditPage
from gateway.admin.auth import (
    ANONYMOUS,
    AdminAuth,
    Identity,
    add_security_headers,
    identity_of,
    refuse_facility,
)
from gateway.admin.browser import SignIn, auditor_home, error_pages
from gateway.audit.search import AuditQuery
from gateway.audit.trail import AuditTrail
from gateway.config import Config, GatewayConfig
from gateway.dataplane.accesslog import AccessLog
from gateway.metrics.facilities import FacilityPeriods
from gateway.metrics.storage import Joined
from gateway.reload import ReloadCounts, ReloadResult, config_sha256
from gateway.roles import Role
from slo.embedded import EmbeddedBackend
from slo.prometheus import PrometheusBackend, PrometheusError
from slo.status import StatusRow, compute_status, sort_worst_first
from slo.store import Store, StoreError


@dataclass
class Lifecycle:
    """Where a gateway process is: ready once it serves, draining once told to stop."""

    ready: bool = False
    draining: bool = False


class AdminApi:
    def __init__(
        self,
        config: Config[GatewayConfig],
        role: Role,
        exposed: Collector,
        access_log: AccessLog,
        lifecycle: Lifecycle,
        extensions: list[AdminExtension],
    ) -> None:
        self.config = config
        self.role = role
        self._exposed = exposed
        """The declared families as ``/metrics`` collects them (``MetricStorage.exposed``)."""
        self._periods = FacilityPeriods({f.id: f.timezone for f in config.facilities()})
        self.reloads = ReloadCounts(config_sha256(config))
        self._collectors: list[Collector] = [self._periods]
        if role.kind != "worker":  # the process that decides reloads counts them
            self._collectors.append(self.reloads)
        admin = config.gateway.admin
        self.auth = AdminAuth(
            admin.tokens, admin.protect_metrics, admin.sessions, config.gateway.trusted_proxies
        )
        self._collectors.append(self.auth.sessions)
        self.auth.on_refused = self.refused
        self.reload_hook: Callable[[], Awaitable[ReloadResult]] | None = None
        """Reloads the config from its file (set by the process that decides reloads)."""
        self._access_log = access_log
        self._lifecycle = lifecycle
        self._extensions = extensions
        self.audit: AuditTrail | None = None
        """The audit trail this process writes, for ``/api/v1/audit`` (role auditor)."""

    def app(self) -> web.Application:
        # Outermost first: a browser's errors become pages, then who is asking, then where an
        # auditor's start page is.
        app = web.Application(middlewares=[error_pages, self.auth.middleware, auditor_home])
        app.on_response_prepare.append(add_security_headers)
        SignIn(self.auth, self._log_event).add_routes(app)
        AuditPage(self).add_routes(app)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/v1/slo", self._slo_status)
        app.router.add_get("/api/v1/audit", self._audit)
        app.router.add_post("/api/v1/reload", self._reload)
        for extend in self._extensions:
            extend(app, self)
        return app

    def log_access(
        self,
        request: web.Request,
        what: str,
        facility: str | None,
        status: int,
        reason: str | None = None,
        **detail: str,
    ) -> None:
        """An access to a page, report or the audit trail, in the access log by token name
        (never the token): ``result`` ok, ``denied`` (401/403, with the ``reason``) or
        ``failed``; ``detail`` adds bounded fields (a report's ``period`` and ``format``)."""
        self._access_log.event(
            time.time(),
            "admin_access",
            access_fields(identity_of(request).name, what, facility, status, reason, detail),
        )

    def refused(self, request: web.Request, identity: Identity | None, status: int, reason: str) -> None:
        """A refused request, whoever refused it (the auth middleware, a handler's role check):
        an ``admin_access`` event; a refused read of the audit trail by a known token is also
        recorded in the trail (BALP: a failed access is an AuditEvent, outcome 4)."""
        what = what_of(request.path)
        name = None if identity is None else identity.name
        self._access_log.event(
            time.time(), "admin_access", access_fields(name, what, None, status, reason, {})
        )
        if identity is not None and self.audit is not None and what.startswith("audit_"):
            self.audit.record_read(identity.name, request.remote, "", time.time(), denied=f"{what}: {reason}")

    def _log_event(self, event: str, fields: dict[str, object]) -> None:
        self._access_log.event(time.time(), event, fields)

    def apply(self, config: Config[GatewayConfig]) -> None:
        """A reloaded config: status, pages, reports and tokens use it from the next request."""
        self.config = config
        self._periods.set_zones({f.id: f.timezone for f in config.facilities()})
        self.auth.set_tokens(config.gateway.admin.tokens, config.gateway.admin.protect_metrics)
        self.auth.set_sessions(config.gateway.admin.sessions, config.gateway.trusted_proxies)

    async def _reload(self, request: web.Request) -> web.Response:
        """``vitalgate reload``: re-read the config (role sre); 200 with the result, 422 when
        the running config stayed in force."""
        if identity_of(request).role != "sre":
            return web.json_response(
                {"error": "forbidden", "detail": "reloading needs the sre role"}, status=403
            )
        if self.reload_hook is None:
            return web.json_response({"error": "this process does not reload"}, status=404)
        result = await self.reload_hook()
        return web.json_response(result.as_json(), status=200 if result.ok else 422)

    def add_collector(self, collector: Collector) -> None:
        """More series for this process's ``/metrics``, computed at each scrape (the
        supervisor's worker restarts)."""
        self._collectors.append(collector)

    def prometheus(self) -> PrometheusBackend | None:
        """A reader of the configured ``admin.status_backend`` (one per request: it counts its
        queries and notes), or None to read the embedded store."""
        src = self.config.gateway.admin.status_backend
        if src is None:
            return None
        return PrometheusBackend(src.prometheus_url, timeout_s=src.timeout, source=src.source)

    def status_rows(self, facility: str | None, identity: Identity = ANONYMOUS) -> list[StatusRow]:
        """SLO status from the store, the rows this identity may see (worst first)."""
        prom = self.prometheus()
        if prom is not None:
            rows = compute_status(self.config.slos, self.config.facilities(), prom, time.time())
        else:
            store = Store(self.config.resolve(self.config.gateway.telemetry.store.path), readonly=True)
            try:
                rows = compute_status(
                    self.config.slos, self.config.facilities(), EmbeddedBackend(store), time.time()
                )
            finally:
                store.close()
        return [
            r
            for r in sort_worst_first(rows)
            if (facility is None or r.facility == facility) and identity.may_see(r.facility)
        ]

    async def _slo_status(self, request: web.Request) -> web.Response:
        facility = request.query.get("facility")
        identity = identity_of(request)
        known = {f.id for f in self.config.facilities()} | {ALL_FACILITIES}
        refused = refuse_facility(identity, facility, known) if facility is not None else None
        if refused is not None:
            self.refused(request, identity, refused.status, "facility")
            return refused
        if (
            not self.config.gateway.telemetry.store.enabled
            and self.config.gateway.admin.status_backend is None
        ):
            return web.json_response(
                {"error": "the embedded store is disabled (telemetry.store.enabled)"}, status=503
            )
        try:
            rows = await asyncio.get_running_loop().run_in_executor(
                None, self.status_rows, facility, identity
            )
        except (StoreError, sqlite3.Error) as exc:
            return web.json_response({"error": "store unavailable", "detail": str(exc)}, status=503)
        except PrometheusError as exc:
            return web.json_response({"error": "status source unavailable", "detail": str(exc)}, status=503)
        return web.json_response({"slos": [r.to_json() for r in rows]})

    async def _audit(self, request: web.Request) -> web.Response:
        """AuditEvents (``patient``, ``user``, ``facility``, ``since``, ``until``), for the auditor
        role only; the read is itself recorded in the trail, under the token's name."""
        identity = identity_of(request)
        if identity.role != "auditor":
            self.refused(request, identity, 403, "role")
            return web.json_response(
                {"error": "forbidden", "detail": "the audit trail is readable by the auditor role only"},
                status=403,
            )
        if self.audit is None:
            return web.json_response({"error": "no audit trail configured (audit:)"}, status=404)
        q = request.query
        try:
            search = AuditQuery.of(
                q.get("patient"), q.get("user"), q.get("facility"), q.get("since"), q.get("until")
            )
        except ValueError as exc:
            return web.json_response({"error": "bad_query", "detail": str(exc)}, status=400)
        trail = self.audit
        trail.record_read(identity.name, request.remote, request.query_string, time.time())
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, trail.search, search)
        except ValueError as exc:  # a damaged trail: say so, as verify would
            return web.json_response({"error": "audit_damaged", "detail": str(exc)}, status=500)
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(found)}
        bundle["entry"] = [{"fullUrl": f"urn:uuid:{ev['id']}", "resource": ev} for ev in found]
        return web.json_response(bundle, content_type="application/fhir+json")

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        registry = CollectorRegistry()
        registry.register(Joined(self._exposed, *self._collectors))
        body = encoder(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        state = self._lifecycle
        if state.ready and not state.draining:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "draining" if state.draining else "starting"}, status=503)


def access_fields(
    token: str | None,
    what: str,
    facility: str | None,
    status: int,
    reason: str | None,
    detail: dict[str, str],
) -> dict[str, object]:
    """An ``admin_access`` event's fields (the facility only when it is a known id)."""
    result = "ok" if status < 400 else "denied" if status in (401, 403) else "failed"
    fields: dict[str, object] = {"token": token, "what": what, "facility": facility, "status": status}
    fields["result"] = result
    if reason is not None:
        fields["reason"] = reason
    return fields | detail


WHAT = (
    ("/api/v1/audit", "audit_api"),
    ("/ui/audit/export", "audit_export"),
    ("/ui/audit/verify", "audit_verify"),
    ("/ui/audit", "audit_page"),
    ("/api/v1/slo", "slo_api"),
    ("/api/v1/reload", "reload"),
    ("/api/v1/latency/", "latency_api"),
    ("/api/v1/reports/", "report"),
    ("/ui/sign-out", "sign_out"),
    ("/ui/facilities/", "facility_page"),
    ("/ui", "fleet_page"),
    ("/metrics", "metrics"),
    ("/healthz", "healthz"),
    ("/readyz", "readyz"),
)
"""What a refused request asked for, by its path: a fixed name, never the path itself (it
may carry an id a client chose)."""


def what_of(path: str) -> str:
    if path.startswith("/ui/facilities/") and path.endswith("/latency"):
        return "latency_page"
    if path.startswith("/api/v1/reports/") and path.endswith((".pdf", ".html")):
        return "report_" + path.rpartition(".")[2]  # (as the report handler names its accesses)
    for prefix, name in WHAT:
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return name
    return "other"


AdminExtension = Callable[[web.Application, AdminApi], None]
"""Adds routes to the admin API (the status pages and reports, ``vitalgate/admin_pages.py``)."""
