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
/* Under a phone's width a table's rows become cards, one labelled line per cell: every column
   (budget left, alert) stays in view without sideways scrolling. */
@media (max-width: 640px) {
  table.cards tr:first-child { display: none; }
  table.cards tr { display: block; border-bottom: 2px solid #c9ced6; padding: 4px 0; background: white; }
  table.cards td { display: flex; justify-content: space-between; gap: 10px; border: 0; padding: 2px 8px;
    white-space: normal; overflow-wrap: anywhere; text-align: right; }
  table.cards td::before { content: attr(data-label); color: #555; font-weight: 600; text-align: left;
    flex: none; white-space: nowrap; }
  table.cards td.l { text-align: right; }
}
header form { display: inline; margin-left: 14px; } header button { background: none; border: 1px solid #cfe0ff; color: #cfe0ff; border-radius: 4px; padding: 2px 9px; font: inherit; cursor: pointer; }
"""


SIGN_OUT = '<form method="post" action="/ui/sign-out"><button type="submit">Sign out</button></form>'
"""Ends a browser's session (``/ui/sign-in``): shown only to a browser that has one."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 facility``, ``2 facilities``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _page(title: str, body: str, session: bool) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{escape(title)}</h1><a href="/ui">Fleet</a>{SIGN_OUT if session else ""}</header>'
        f"<main>{body}</main></body></html>"
    )


def _td(label: str, cell: str, left: bool = False) -> str:
    """A cell that names its column (shown beside it when the table becomes cards)."""
    return f'<td{" class=l" if left else ""} data-label="{escape(label)}">{cell}</td>'


def _sla(r: StatusRow) -> str:
    """The facility's SLA, where it judges this SLO ("-": no SLA, all facilities, or an SLO the
    SLA does not judge, such as a latency SLO: ``StatusRow.contractual``)."""
    return "-" if r.sla is None or not r.contractual else _pct(r.sla, 2)


def _exhaustion(r: StatusRow) -> str:
    """When the budget runs out at the last hour's burn: "exhausted" once it has."""
    if r.budget_remaining is not None and r.budget_remaining <= 0:
        return '<span class="bad">exhausted</span>'
    return "-" if r.exhaustion_hours is None else f"{r.exhaustion_hours:.1f} h"


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


def fleet_page(rows: Sequence[StatusRow], session: bool = False) -> str:
    """``/ui``: every (facility, SLO) row the viewer may see, worst budget first; ``session``:
    the browser is signed in (the header offers "Sign out")."""
    head = (
        '<table class="cards"><tr><th class=l>Facility</th><th class=l>SLO</th><th>SLI</th>'
        "<th>Objective</th><th>SLA</th><th>Budget left</th><th>1h burn</th><th>Alert</th></tr>"
    )
    body = []
    for r in rows:
        name = escape(r.facility_name or r.facility)
        link = name if r.facility == "*" else f'<a href="/ui/facilities/{escape(r.facility)}">{name}</a>'
        burn = r.burn_rates.get("1h")
        body.append(
            "<tr>"
            + _td("Facility", link, True)
            + _td("SLO", escape(r.slo), True)
            + _td("SLI", _pct(r.sli))
            + _td("Objective", _pct(r.objective, 2))
            + _td("SLA", _sla(r))
            + _td("Budget left", _budget(r.budget_remaining))
            + _td("1h burn", "-" if burn is None else f"{burn:.2f}x")
            + _td("Alert", _alert(r.alert) + _stale(r))
            + "</tr>"
        )
    facilities = {r.facility for r in rows if r.facility != "*"}
    slos = {r.slo for r in rows}
    # An SLO pages once however many of its facility rows (and its all-facilities row) do.
    paging = {r.slo for r in rows if r.alert == "page"}
    paging_at = {r.facility for r in rows if r.alert == "page" and r.facility != "*"}
    where = f" at {counted(len(paging_at), 'facility', 'facilities')}" if paging_at else ""
    summary = (
        f"<p>{counted(len(facilities), 'facility', 'facilities')}, {counted(len(slos), 'SLO')}; "
        f"{counted(len(paging), 'SLO')} paging{where}. Worst error budget first.</p>"
    )
    return _page("vitalgate: fleet", summary + head + "".join(body) + "</table>", session)


MEASURES = {
    "availability": ("availability", "down minutes", "requests answered without a server error"),
    "latency": ("fast requests", "slow minutes", "requests answered within the threshold"),
}
"""Per SLO kind: what its daily figure is called, what its incidents count, and what the
figure is the share of."""


def facility_page(
    facility_id: str,
    facility_name: str,
    timezone: str,
    rows: Sequence[StatusRow],
    calendars: Sequence[tuple[str, str, float, Sequence[tuple[str, float | None, int]]]],
    recent: Sequence[tuple[str, str, Incident]],
    report_periods: Sequence[str],
    session: bool = False,
) -> str:
    """A facility's page. ``calendars``: (SLO, kind, objective, days of (date, daily SLI,
    requests)); ``recent``: (SLO, kind, incident): each says what it measures by its SLO's
    kind (availability: down minutes; latency: slow minutes)."""
    parts = [
        f"<p>Time zone {escape(timezone)}.</p><h2>SLOs</h2><table class=cards>"
        "<tr><th class=l>SLO</th><th>SLI</th><th>Objective</th><th>SLA</th><th>Budget left</th>"
        "<th>Exhaustion</th><th>Alert</th></tr>"
    ]
    for r in rows:
        parts.append(
            "<tr>"
            + _td("SLO", escape(r.slo), True)
            + _td("SLI", _pct(r.sli))
            + _td("Objective", _pct(r.objective, 2))
            + _td("SLA", _sla(r))
            + _td("Budget left", _budget(r.budget_remaining))
            + _td("Exhaustion", _exhaustion(r))
            + _td("Alert", _alert(r.alert) + _stale(r))
            + "</tr>"
        )
    parts.append("</table>")
    parts.append(
        '<h2>Daily SLI, last 90 days</h2><p class="legend">'
        '<span class="g" style="background:#2e8b57"></span>objective met'
        '<span style="background:#e0b000"></span>below objective'
        '<span style="background:#b3261e"></span>below 99% of the objective'
        '<span style="background:#dde1e6"></span>no data</p>'
    )
    for slo_name, kind, objective, days in calendars:
        figure, _, share = MEASURES[kind]
        cells = []
        for day, sli, requests in days:
            cls = "" if sli is None else "g" if sli >= objective else "y" if sli >= 0.99 * objective else "r"
            value = "no data" if sli is None else f"{100 * sli:.3f}% {figure}"
            title = f"{day}: {value} ({counted(requests, 'request')})"
            cells.append(f'<span class="{cls}" title="{escape(title)}"></span>')
        parts.append(
            f"<h3>{escape(slo_name)}: {escape(figure)}</h3>"
            f'<p class="muted">Each day: the share of {escape(share)}.</p>'
            f"<div class=cal>{''.join(cells)}</div>"
        )
    parts.append("<h2>Recent incidents</h2>")
    if recent:
        parts.append(
            "<table class=cards><tr><th class=l>SLO</th><th class=l>Start</th><th class=l>End</th>"
            "<th>Bad minutes</th><th>Requests affected</th></tr>"
        )
        for slo_name, kind, inc in recent:
            bad = MEASURES[kind][1]
            parts.append(
                "<tr>"
                + _td("SLO", escape(slo_name), True)
                + _td("Start", escape(inc.start), True)
                + _td("End", escape(inc.end), True)
                + _td("Bad minutes", f"{inc.minutes} {escape(bad.split()[0])}")
                + _td("Requests affected", str(inc.requests_affected))
                + "</tr>"
            )
        parts.append(
            '</table><p class="muted">Bad minutes: down minutes of an availability SLO, slow minutes'
            " of a latency SLO.</p>"
        )
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
    return _page(f"vitalgate: {facility_name}", "".join(parts), session)
