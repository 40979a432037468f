"""The built-in status pages: server-rendered HTML, no build step, readable on a phone."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from reports.data import Incident
from slo.status import StatusRow

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2633; background: #f6f7f9; }
header { background: #1d2633; color: white; padding: 12px 16px; } header a { color: #cfe0ff; }
main { padding: 12px 16px; max-width: 1100px; margin: auto; }
h1 { font-size: 1.3rem; margin: 0; } h2 { font-size: 1.05rem; margin-top: 1.4rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: white; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #e2e5ea; padding: 6px 8px; text-align: right; white-space: nowrap; }
th { background: #eef1f5; } td.l, th.l { text-align: left; }
.ok { color: #17733a; } .warn { color: #9a6700; } .bad { color: #b3261e; font-weight: 600; } .muted { color: #777; }
.alert-page { background: #b3261e; color: white; padding: 1px 6px; border-radius: 3px; }
.alert-ticket { background: #9a6700; color: white; padding: 1px 6px; border-radius: 3px; }
.cal { display: grid; grid-template-columns: repeat(auto-fill, minmax(14px, 1fr)); gap: 3px; max-width: 720px; }
.cal span { display: block; height: 14px; border-radius: 2px; background: #dde1e6; }
.cal .g { background: #2e8b57; } .cal .y { background: #e0b000; } .cal .r { background: #b3261e; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px; vertical-align: middle; }
ul.links li { margin: 4px 0; }
header form { display: inline; margin-left: 14px; } header button { background: none; border: 1px solid #cfe0ff; color: #cfe0ff; border-radius: 4px; padding: 2px 9px; font: inherit; cursor: pointer; }
"""


SIGN_OUT = '<form method="post" action="/ui/sign-out"><button type="submit">Sign out</button></form>'
"""Ends a browser's session (``/ui/sign-in``); with no tokens configured it only leads there."""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{escape(title)}</h1><a href="/ui">Fleet</a>{SIGN_OUT}</header><main>{body}</main></body></html>'
    )


def _pct(x: float | None, digits: int = 3) -> str:
    return '<span class="muted">no data</span>' if x is None else f"{100 * x:.{digits}f}%"


def _budget(x: float | None) -> str:
    if x is None:
        return '<span class="muted">no data</span>'
    cls = "ok" if x >= 0.5 else "warn" if x >= 0 else "bad"
    return f'<span class="{cls}">{100 * x:.1f}%</span>'


def _alert(a: str) -> str:
    return (
        f'<span class="alert-{a}">{a}</span>'
        if a in ("page", "ticket")
        else '<span class="muted">none</span>'
    )


def _stale(r: StatusRow) -> str:
    """The mark of an SLO with nothing counted in the last hour (no traffic, no probe)."""
    return (
        ' <span class="muted" title="nothing counted in the last hour">no data 1h</span>'
        if r.no_data_1h
        else ""
    )


def fleet_page(rows: Sequence[StatusRow]) -> str:
    head = (
        '<div class="scroll"><table><tr><th class=l>Facility</th><th class=l>SLO</th><th>SLI</th>'
        "<th>Objective</th><th>SLA</th><th>Budget left</th><th>1h burn</th><th>Alert</th></tr>"
    )
    body = []
    for r in rows:
        name = escape(r.facility_name or r.facility)
        link = name if r.facility == "*" else f'<a href="/ui/facilities/{escape(r.facility)}">{name}</a>'
        burn = r.burn_rates.get("1h")
        body.append(
            f"<tr><td class=l>{link}</td><td class=l>{escape(r.slo)}</td><td>{_pct(r.sli)}</td>"
            f"<td>{_pct(r.objective, 2)}</td><td>{_pct(r.sla, 2) if r.sla is not None else '-'}</td>"
            f"<td>{_budget(r.budget_remaining)}</td><td>{'-' if burn is None else f'{burn:.2f}x'}</td>"
            f"<td>{_alert(r.alert)}{_stale(r)}</td></tr>"
        )
    paging = sum(1 for r in rows if r.alert == "page")
    summary = f"<p>{len({r.facility for r in rows if r.facility != '*'})} facilities, {paging} SLOs paging. Worst error budget first.</p>"
    return _page("vitalgate: fleet", summary + head + "".join(body) + "</table></div>")


def facility_page(
    facility_id: str,
    facility_name: str,
    timezone: str,
    rows: Sequence[StatusRow],
    calendars: Sequence[tuple[str, float, Sequence[tuple[str, float | None, int]]]],
    recent: Sequence[tuple[str, Incident]],
    report_periods: Sequence[str],
) -> str:
    parts = [
        f"<p>Time zone {escape(timezone)}.</p><h2>SLOs</h2><div class=scroll><table>"
        "<tr><th class=l>SLO</th><th>SLI</th><th>Objective</th><th>SLA</th><th>Budget left</th>"
        "<th>Exhaustion</th><th>Alert</th></tr>"
    ]
    for r in rows:
        exh = "-" if r.exhaustion_hours is None else f"{r.exhaustion_hours:.1f} h"
        parts.append(
            f"<tr><td class=l>{escape(r.slo)}</td><td>{_pct(r.sli)}</td><td>{_pct(r.objective, 2)}</td>"
            f"<td>{_pct(r.sla, 2) if r.sla is not None else '-'}</td><td>{_budget(r.budget_remaining)}</td>"
            f"<td>{exh}</td><td>{_alert(r.alert)}{_stale(r)}</td></tr>"
        )
    parts.append("</table></div>")
    parts.append(
        '<h2>Daily availability, last 90 days</h2><p class="legend">'
        '<span class="g" style="background:#2e8b57"></span>objective met'
        '<span style="background:#e0b000"></span>below objective'
        '<span style="background:#b3261e"></span>below 99% of the objective'
        '<span style="background:#dde1e6"></span>no data</p>'
    )
    for slo_name, objective, days in calendars:
        cells = []
        for day, avail, requests in days:
            cls = (
                ""
                if avail is None
                else "g"
                if avail >= objective
                else "y"
                if avail >= 0.99 * objective
                else "r"
            )
            title = f"{day}: {'no data' if avail is None else f'{100 * avail:.3f}%'} ({requests} requests)"
            cells.append(f'<span class="{cls}" title="{escape(title)}"></span>')
        parts.append(f"<h3>{escape(slo_name)}</h3><div class=cal>{''.join(cells)}</div>")
    parts.append("<h2>Recent incidents</h2>")
    if recent:
        parts.append(
            "<div class=scroll><table><tr><th class=l>SLO</th><th class=l>Start</th><th class=l>End</th>"
            "<th>Down minutes</th><th>Requests affected</th></tr>"
        )
        for slo_name, inc in recent:
            parts.append(
                f"<tr><td class=l>{escape(slo_name)}</td><td class=l>{escape(inc.start)}</td>"
                f"<td class=l>{escape(inc.end)}</td><td>{inc.minutes}</td><td>{inc.requests_affected}</td></tr>"
            )
        parts.append("</table></div>")
    else:
        parts.append("<p>None this month.</p>")
    latency = f"/ui/facilities/{escape(facility_id)}/latency"
    parts.append(
        f'<h2>Latency</h2><p><a href="{latency}">By route</a>: percentiles, errors, slowest traces</p>'
    )
    parts.append("<h2>Reports</h2><ul class=links>")
    for p in report_periods:
        base = f"/api/v1/reports/{escape(facility_id)}/{escape(p)}"
        parts.append(f'<li>{escape(p)}: <a href="{base}.pdf">PDF</a> · <a href="{base}.html">HTML</a></li>')
    parts.append("</ul>")
    return _page(f"vitalgate: {facility_name}", "".join(parts))
