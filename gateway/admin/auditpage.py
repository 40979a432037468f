"""The auditor's web page (``/ui/audit``): search the audit trail by patient, user, facility and
time, export what a search finds, and verify the trail.

This is the one page that shows patient identifiers, and only to the ``auditor`` role (403 for
every other, as ``/api/v1/audit``). The search goes in a POST body, not the URL, so that no
patient id lands in the browser's history, a proxy's log or a ``Referer``. Every search and
export is recorded in the trail under the token's name with the query it ran, exactly as a read
of ``/api/v1/audit`` is; verifying shows no event and is not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from gateway.admin.auth import Identity, identity_of
from gateway.admin.browser import AUDIT_PAGE, SIGN_OUT_FORM, html_response, page
from gateway.audit.keys import AuditKeyError, Keyring, read_signing_key
from gateway.audit.search import AuditQuery, counted
from gateway.audit.trail import AuditTrail
from gateway.audit.verify import Report, published_checkpoints, verify
from gateway.config import Config, GatewayConfig
from gateway.settings import data_key_paths

log = logging.getLogger("vitalgate.admin")

FIELDS = ("patient", "user", "facility", "since", "until")
"""The search's fields, named as ``/api/v1/audit``'s query parameters."""
SHOWN = 500
"""Rows shown on the page; an export has them all."""


class AuditSource(Protocol):
    """What the page reads: the config in force and the trail this process reads
    (``gateway.admin.api.AdminApi``)."""

    @property
    def config(self) -> Config[GatewayConfig]: ...

    @property
    def audit(self) -> AuditTrail | None: ...

    def refused(self, request: web.Request, identity: Identity | None, status: int, reason: str) -> None:
        """Logs (and records in the trail) a refused access."""


def verify_trail(config: Config[GatewayConfig]) -> Report:
    """``vitalgate audit verify`` for the page: every chain, against the checkpoints in the
    store and those published in the configured access log."""
    audit = config.gateway.audit
    if audit is None:
        raise AuditKeyError("no audit: section")
    keyring = Keyring.load(data_key_paths(config, audit))
    public = read_signing_key(config.resolve(audit.signing_key_file)).public_key()
    anchors: list[dict[str, Any]] = []
    log_path = config.gateway.telemetry.access_log.path
    if log_path not in ("-", ""):
        published = config.resolve(log_path)
        if published.is_file():
            with published.open(encoding="utf-8", errors="replace") as f:
                anchors = published_checkpoints(f)
    return verify(config.resolve(audit.path), keyring, public, anchors)


def _search_fields(form: dict[str, str]) -> dict[str, str]:
    """The filled-in fields, trimmed (an empty field filters nothing)."""
    return {k: v.strip() for k in FIELDS if (v := form.get(k, "")).strip()}


def _user(ev: dict[str, Any]) -> str:
    who: dict[str, Any] = next((a.get("who", {}) for a in ev.get("agent", []) if a.get("requestor")), {})
    return str(who.get("display") or who.get("identifier", {}).get("value", "?"))


def _patient(ev: dict[str, Any]) -> str:
    return next(
        (
            str(e["what"]["reference"])
            for e in ev.get("entity", [])
            if e.get("role", {}).get("code") == "1" and "reference" in e.get("what", {})
        ),
        "",
    )


OUTCOMES = {"0": "success", "4": "refused (client)", "8": "failed (upstream)", "12": "failed (gateway)"}


def results_table(found: Sequence[dict[str, Any]]) -> str:
    if not found:
        return "<p>No event matches.</p>"
    rows = []
    for ev in found[:SHOWN]:
        sub = ev.get("subtype", [{}])[0].get("code", "")
        outcome = str(ev.get("outcome", ""))
        rows.append(
            f'<tr><td data-label="Recorded">{escape(str(ev.get("recorded", "")).replace("T", " "))}</td>'
            f'<td data-label="Facility">{escape(str(ev.get("source", {}).get("site") or "-"))}</td>'
            f'<td data-label="Interaction">{escape(sub)}</td>'
            f'<td data-label="Outcome">{escape(OUTCOMES.get(outcome, outcome))}</td>'
            f'<td data-label="Patient">{escape(_patient(ev) or "-")}</td>'
            f'<td data-label="User">{escape(_user(ev))}</td>'
            f'<td data-label="Detail">{escape(str(ev.get("outcomeDesc", "")))}</td></tr>'
        )
    more = f" (the first {SHOWN} shown: export them all)" if len(found) > SHOWN else ""
    noun = "event" if len(found) == 1 else "events"
    return (
        f"<p><strong>{len(found)}</strong> {noun}{more}, oldest first.</p>"
        '<table class="events"><thead><tr><th>Recorded (UTC)</th><th>Facility</th><th>Interaction</th>'
        "<th>Outcome</th><th>Patient</th><th>User</th><th>Detail</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def verify_box(report: Report | None, problem: str | None) -> str:
    if problem is not None:
        return f'<p class="error">Could not verify the trail: {escape(problem)}</p>'
    if report is None:
        return (
            '<p><a href="/ui/audit/verify">Verify the trail</a> <span class="note">(reads every'
            " record: about 11 s per million)</span></p>"
        )
    if report.problem is not None:
        return f'<p class="error" role="alert">Audit trail: BAD: {escape(report.problem)}</p>'
    anchor = f", anchored at {report.anchor['size']} records" if report.anchor else ""
    warnings = "".join(f'<p class="warnbox">Warning: {escape(w)}</p>' for w in report.warnings)
    return (
        f'<p class="okbox">Audit trail: OK: {counted(report.records, "record")} in'
        f" {counted(report.segments, 'segment')}, {counted(report.checkpoints, 'checkpoint')}{anchor}."
        ' <a href="/ui/audit/verify">Verify again</a></p>'
        f"{warnings}"
    )


def audit_page(
    facilities: Sequence[tuple[str, str]],
    fields: dict[str, str],
    results: str = "",
    verified: str = "",
    message: str | None = None,
) -> str:
    def text(name: str, label: str, kind: str = "text", hint: str = "") -> str:
        value = escape(fields.get(name, ""))
        return (
            f'<div><label for="{name}">{label}</label>'
            f'<input id="{name}" name="{name}" type="{kind}" value="{value}"{hint}></div>'
        )

    options = ['<option value="">any</option>'] + [
        f'<option value="{escape(fid)}"{" selected" if fields.get("facility") == fid else ""}>'
        f"{escape(name)}</option>"
        for fid, name in facilities
    ]
    parts = [
        verified or verify_box(None, None),
        f'<p class="error" role="alert">{escape(message)}</p>' if message else "",
        '<form method="post" action="/ui/audit"><div class="grid">',
        text("patient", "Patient id", hint=' placeholder="as in Patient/{id}" spellcheck="false"'),
        text("user", "User", hint=' placeholder="user id or token name" spellcheck="false"'),
        '<div><label for="facility">Facility</label><select id="facility" name="facility">'
        + "".join(options)
        + "</select></div>",
        text("since", "From (UTC)", "datetime-local", ' step="1"'),
        text("until", "Until (UTC, not included)", "datetime-local", ' step="1"'),
        "</div>",
        '<button class="primary" type="submit">Search</button> '
        '<button class="secondary" type="submit" formaction="/ui/audit/export">'
        "Export (FHIR Bundle)</button></form>",
        '<p class="note">Each search and export is recorded in the audit trail under your token\'s name.</p>',
        results,
    ]
    return page("vitalgate: audit trail", "".join(parts), nav=SIGN_OUT_FORM)


def forbidden() -> web.Response:
    return web.json_response(
        {"error": "forbidden", "detail": "the audit trail is readable by the auditor role only"},
        status=403,
    )


def no_trail() -> web.Response:
    return web.json_response({"error": "no audit trail configured (audit:)"}, status=404)


class AuditPage:
    def __init__(self, source: AuditSource) -> None:
        self.source = source

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(AUDIT_PAGE, self.show)
        app.router.add_post(AUDIT_PAGE, self.search)
        app.router.add_post(AUDIT_PAGE + "/export", self.export)
        app.router.add_get(AUDIT_PAGE + "/verify", self.verify)

    def _facilities(self) -> list[tuple[str, str]]:
        return [(f.id, f.name) for f in self.source.config.facilities()]

    def _trail(self, request: web.Request) -> AuditTrail | web.Response:
        identity = identity_of(request)
        if identity.role != "auditor":
            self.source.refused(request, identity, 403, "role")
            return forbidden()
        return self.source.audit or no_trail()

    async def show(self, request: web.Request) -> web.Response:
        trail = self._trail(request)
        if isinstance(trail, web.Response):
            return trail
        return html_response(audit_page(self._facilities(), {}))

    async def verify(self, request: web.Request) -> web.Response:
        trail = self._trail(request)
        if isinstance(trail, web.Response):
            return trail
        config = self.source.config
        try:
            report = await asyncio.get_running_loop().run_in_executor(None, verify_trail, config)
        except (AuditKeyError, OSError, ValueError) as exc:
            log.error("admin listener: the audit page could not verify the trail: %s", exc)
            return html_response(audit_page(self._facilities(), {}, "", verify_box(None, str(exc))), 500)
        # (a damaged trail is this page's finding, shown as such: the page itself worked)
        return html_response(audit_page(self._facilities(), {}, "", verify_box(report, None)))

    async def _found(
        self, request: web.Request
    ) -> tuple[dict[str, str], list[dict[str, Any]]] | web.Response:
        """The form's search, run and recorded as a read of the trail (the bad ones are not:
        they read nothing)."""
        trail = self._trail(request)
        if isinstance(trail, web.Response):
            return trail
        form = await request.post()
        fields = _search_fields({k: v for k, v in form.items() if isinstance(v, str)})
        try:
            query = AuditQuery.of(*(fields.get(k) for k in FIELDS))
        except ValueError as exc:
            return html_response(audit_page(self._facilities(), fields, message=str(exc)), 400)
        identity = identity_of(request)
        trail.record_read(identity.name, request.remote, urlencode(fields), time.time())
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, trail.search, query)
        except ValueError as exc:  # a damaged trail: say so, as verify would
            log.error("admin listener: the audit trail could not be read: %s", exc)
            return html_response(
                audit_page(self._facilities(), fields, message=f"The trail could not be read: {exc}"), 500
            )
        return fields, found

    async def search(self, request: web.Request) -> web.Response:
        done = await self._found(request)
        if isinstance(done, web.Response):
            return done
        fields, found = done
        return html_response(audit_page(self._facilities(), fields, results_table(found)))

    async def export(self, request: web.Request) -> web.Response:
        """What the search finds, as ``vitalgate audit export`` writes it: a FHIR Bundle of type
        ``collection`` (for a patient: the accounting of disclosures)."""
        done = await self._found(request)
        if isinstance(done, web.Response):
            return done
        _, found = done
        now = datetime.now(UTC)
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "total": len(found),
            "entry": [{"fullUrl": f"urn:uuid:{ev['id']}", "resource": ev} for ev in found],
        }
        # The file's name says when, never whom: it may be kept where the events are not.
        name = f"audit-export-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
        return web.Response(
            body=json.dumps(bundle, indent=1).encode() + b"\n",
            content_type="application/fhir+json",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
