"""Uptime reports as standalone HTML (charts embedded) and PDF (weasyprint), plus a CSV
of the daily figures and the SHA-256 of everything the report states."""

from __future__ import annotations

import base64
import csv
import io
import json
from html import escape
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from reports.data import Report, SloReport

MAX_INCIDENTS = 25
CSS = """
@page { size: A4; margin: 16mm 14mm; @bottom-right { content: "page " counter(page) " of " counter(pages); font-size: 8pt; } }
body { font-family: "DejaVu Sans", Arial, sans-serif; font-size: 10pt; color: #1d2633; max-width: 1000px; margin: auto; }
h1 { font-size: 18pt; margin-bottom: 0; } h2 { font-size: 13pt; border-bottom: 1px solid #ccd; margin-top: 22px; }
h3 { font-size: 11pt; margin-bottom: 4px; }
.sub { color: #556; margin-top: 2px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 9pt; }
th, td { border: 1px solid #d5d9e0; padding: 3px 6px; text-align: right; } th { background: #eef1f5; }
td.l, th.l { text-align: left; }
.met { color: #17733a; font-weight: bold; } .missed { color: #b3261e; font-weight: bold; }
.nodata { color: #777; }
img { max-width: 100%; } .charts img { width: 49%; }
pre.appendix { font-family: "DejaVu Sans Mono", monospace; font-size: 7pt; line-height: 1.25; }
.mono { font-family: "DejaVu Sans Mono", monospace; font-size: 8pt; word-break: break-all; }
"""


def _pct(x: float | None, digits: int = 3) -> str:
    return "no data" if x is None else f"{100 * x:.{digits}f}%"


def _plain_pct(x: float | None) -> str:
    return "no data" if x is None else f"{100 * x:.3f}%"


def _verdict(met: bool | None) -> str:
    if met is None:
        return '<span class="nodata">no data</span>'
    return '<span class="met">met</span>' if met else '<span class="missed">missed</span>'


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of its own, outside pyplot: nothing process-wide (backend, figure list) is
    touched, and it is freed with its last reference."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _day_axis(ax: Axes, labels: list[str]) -> None:
    step = max(1, len(labels) // 12)
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels(labels[::step], rotation=90, fontsize=6)


def _charts(r: Report, s: SloReport) -> list[tuple[str, str]]:
    days = [d.day[5:] for d in s.days]
    x = list(range(len(days)))
    avail = [100 * d.availability if d.availability is not None else float("nan") for d in s.days]
    out = []
    fig, ax = _figure(6.4, 2.6)
    ax.plot(x, avail, marker="." if len(x) < 100 else None, color="#2461b3", label="daily availability")
    if s.sla is not None:
        ax.axhline(100 * s.sla, color="#b3261e", linestyle="--", label=f"SLA {100 * s.sla:g}%")
    ax.axhline(100 * s.objective, color="#888", linestyle=":", label=f"objective {100 * s.objective:g}%")
    ax.set_ylabel("%")
    ax.set_title("Daily availability")
    ax.legend(fontsize=7, loc="lower left")
    _day_axis(ax, days)
    out.append(("Daily availability against the SLA", _png(fig)))
    fig, ax = _figure(6.4, 2.6)
    ax.plot(x, [100 * c if c is not None else float("nan") for c in s.budget_curve], color="#7a4cc2")
    ax.axhline(0, color="#b3261e", linewidth=0.8)
    ax.set_title("Error budget left (burn-down across the period)")
    ax.set_ylabel("% of budget")
    _day_axis(ax, days)
    out.append(("Error budget burn-down", _png(fig)))
    weeks = r.latency_weeks.get(s.service, [])
    if weeks:
        fig, ax = _figure(6.4, 2.6)
        labels = [w[0][5:] for w in weeks]
        for idx, (name, color) in enumerate((("p50", "#2e8b57"), ("p95", "#d98a00"), ("p99", "#b3261e"))):
            values = [w[idx + 1] for w in weeks]
            ms = [1000 * v if isinstance(v, float) else float("nan") for v in values]
            ax.plot(range(len(labels)), ms, marker="o" if len(labels) < 20 else None, color=color, label=name)
        ax.set_ylabel("ms")
        ax.set_title(f"Latency percentiles by week ({s.service})")
        ax.legend(fontsize=7)
        _day_axis(ax, labels)
        out.append(("Latency by week", _png(fig)))
    if s.previous:
        fig, ax = _figure(6.4, 2.4)
        bars = [p for p, _ in reversed(s.previous)] + [r.period]
        avails = [a for _, a in reversed(s.previous)] + [s.availability]
        ax.bar(bars, [100 * v if v is not None else 0 for v in avails], color="#2461b3")
        if s.sla is not None:
            ax.axhline(100 * s.sla, color="#b3261e", linestyle="--")
        known = [100 * v for v in avails if v is not None]
        if known:
            ax.set_ylim(max(0, min(known) - 1), 100.05)
        ax.set_title("Availability compared with previous periods")
        out.append(("Previous periods", _png(fig)))
    return out


def _incidents(s: SloReport) -> list[str]:
    parts = ["<h3>Incidents</h3>"]
    if not s.incidents:
        return [*parts, "<p>None.</p>"]
    shown = sorted(sorted(s.incidents, key=lambda i: -i.minutes)[:MAX_INCIDENTS], key=lambda i: i.start)
    if len(shown) < len(s.incidents):
        parts.append(
            f"<p>{len(s.incidents)} incidents, {sum(i.minutes for i in s.incidents)} down minutes; the "
            f"{len(shown)} longest below, every one in the incidents CSV beside this report.</p>"
        )
    parts.append(
        "<table><tr><th class=l>Start</th><th class=l>End</th><th>Down minutes</th><th>Requests affected</th></tr>"
    )
    for inc in shown:
        parts.append(
            f"<tr><td class=l>{escape(inc.start)}</td><td class=l>{escape(inc.end)}</td>"
            f"<td>{inc.minutes}</td><td>{inc.requests_affected:,}</td></tr>"
        )
    parts.append("</table>")
    return parts


def render_html(r: Report) -> str:
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Uptime report: {escape(r.facility_name)}, {escape(r.period)}</title><style>{CSS}</style></head><body>",
        f"<h1>Uptime report: {escape(r.facility_name)}</h1>",
        f'<p class="sub">Period {escape(r.period)}: {escape(r.start)} to {escape(r.end)} ({escape(r.timezone)}). '
        f"Generated {escape(r.generated_at)}.</p>",
        "<h2>Summary</h2><table><tr><th class=l>SLO</th><th>Availability</th><th>Uptime minutes</th>"
        "<th>Contract SLA</th><th>SLA met?</th><th>Objective</th><th>Objective met?</th><th>Budget used</th>"
        "<th>Downtime (min)</th><th>Incidents</th></tr>",
    ]
    for s in r.slos:
        if s.insufficient_data:
            parts.append(
                f"<tr><td class=l>{escape(s.slo)}</td><td colspan=9 class=l><b>insufficient data</b>: no"
                f" request or probe in {s.no_evidence_minutes:,} minutes</td></tr>"
            )
            continue
        parts.append(
            f"<tr><td class=l>{escape(s.slo)}</td><td>{_pct(s.availability)}</td><td>{_pct(s.uptime)}</td>"
            f"<td>{_pct(s.sla, 2) if s.sla is not None else '-'}</td><td>{_verdict(s.sla_met)}</td>"
            f"<td>{_pct(s.objective, 2)}</td><td>{_verdict(s.objective_met)}</td>"
            f"<td>{_pct(s.budget_used, 1)}</td><td>{s.down_minutes}</td><td>{len(s.incidents)}</td></tr>"
        )
    parts.append("</table>")
    for s in r.slos:
        parts.append(f"<h2>{escape(s.slo)} ({escape(s.service)})</h2>")
        parts.append(
            f"<p>{s.total:,} requests, {s.good:,} good: availability <b>{_pct(s.availability)}</b>. "
            f"{s.up_minutes:,} minutes up, <b>{s.down_minutes:,} minutes down</b>, {s.no_data_minutes:,} minutes "
            f"without traffic (no data), {s.maintenance_minutes:,} minutes of planned maintenance excluded.</p>"
        )
        parts.append(
            f"<p>Evidence ({escape(' and '.join(s.sources))} counted): {s.traffic_minutes:,} minutes with"
            f" client traffic, {s.probe_only_minutes:,} minutes covered only by the gateway's probes,"
            f" {s.no_evidence_minutes:,} minutes with neither."
            + (
                " <b>Insufficient data</b>: no figure can be stated for this period."
                if s.insufficient_data
                else ""
            )
            + "</p>"
        )
        parts.append('<div class="charts">')
        parts.extend(f'<img alt="{escape(title)}" src="{src}">' for title, src in _charts(r, s))
        parts.append("</div>")
        parts.extend(_incidents(s))
        if s.previous:
            prev = ", ".join(f"{escape(p)}: {_pct(a)}" for p, a in s.previous)
            parts.append(f"<p>Previous periods: {prev}.</p>")
    parts.append("<h2>Maintenance windows (excluded)</h2>")
    if r.maintenance:
        parts.append("<table><tr><th class=l>Start</th><th class=l>End</th><th class=l>Reason</th></tr>")
        for m in r.maintenance:
            parts.append(
                f"<tr><td class=l>{escape(m['start'])}</td><td class=l>{escape(m['end'])}</td>"
                f"<td class=l>{escape(m['reason'])}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>None in this period.</p>")
    target = ", ".join(f"{escape(s.slo)} {100 * s.timeslice_target:g}%" for s in r.slos)
    parts.append(
        "<h2>Methods</h2><p>Every request to the facility's clinical APIs passed through the vitalgate gateway, "
        "which measured it where the facility's systems meet the service: status and duration, attributed to "
        f"the facility, with no patient data recorded. Times are in {escape(r.timezone)}; the period runs from "
        "local midnight to local midnight. A request is good for an availability SLO when its status is below 500 "
        "(and not a status the SLO lists as bad); for a latency SLO when it took no longer than the threshold. "
        "Availability is good requests over all requests. A minute is up when at least the timeslice target of its "
        f"requests were good ({target}); down minutes are downtime. Incidents are runs of down minutes, joined across "
        "minutes without traffic but never across an up minute. Minutes without any request are stated as no data, "
        "not counted as up. Where probes are configured, the gateway sends a synthetic request through itself at "
        "a fixed interval; a minute covered only by probes is up or down by their results. Planned maintenance is "
        "excluded from every figure and listed above.</p>"
    )
    no_data = sum(s.no_data_minutes for s in r.slos)
    parts.append(f"<p>Gaps in data: {no_data:,} SLO-minutes without traffic in this period.</p>")
    # Preformatted rather than a table: a year is 365 rows, and text lays out far faster than cells.
    parts.append(
        "<h2>Appendix: daily figures</h2><p>Availability and down minutes per day; requests and the other "
        "columns are in the CSV beside this report.</p><pre class=appendix>"
    )
    parts.append(escape("day         " + "".join(f"{s.slo[:18]:>20}{'down':>6}" for s in r.slos)))
    for i, day in enumerate(r.slos[0].days if r.slos else []):
        cells = "".join(
            f"{_plain_pct(s.days[i].availability):>20}{s.days[i].down_minutes:>6}" for s in r.slos
        )
        parts.append(escape(f"{day.day}  {cells}"))
    parts.append("</pre>")
    parts.append(
        f'<p>SHA-256 of the figures: <span class="mono">{r.sha256}</span><br>'
        "Recompute it from the JSON figures beside this report with <code>sha256sum</code> to check these numbers later.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_csv(r: Report, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "facility",
                "period",
                "slo",
                "day",
                "requests",
                "good",
                "availability",
                "up_minutes",
                "down_minutes",
                "no_data_minutes",
                "maintenance_minutes",
            ]
        )
        for s in r.slos:
            for d in s.days:
                w.writerow(
                    [
                        r.facility,
                        r.period,
                        s.slo,
                        d.day,
                        d.total,
                        d.good,
                        "" if d.availability is None else f"{d.availability:.6f}",
                        d.up_minutes,
                        d.down_minutes,
                        d.no_data_minutes,
                        d.maintenance_minutes,
                    ]
                )


def write_incidents_csv(r: Report, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["facility", "period", "slo", "start", "end", "down_minutes", "requests_affected"])
        for s in r.slos:
            for inc in s.incidents:
                w.writerow(
                    [r.facility, r.period, s.slo, inc.start, inc.end, inc.minutes, inc.requests_affected]
                )


def figures_json(r: Report) -> str:
    return json.dumps(r.figures(), sort_keys=True, separators=(",", ":"), default=str)


def write_report(r: Report, out: Path) -> list[Path]:
    """``out`` ending in .pdf or .html; the CSV and the figures' JSON go beside it."""
    html = render_html(r)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".pdf":
        from weasyprint import HTML  # noqa: PLC0415  (slow import; only for PDFs)

        HTML(string=html).write_pdf(out)
    else:
        out.write_text(html, encoding="utf-8")
    csv_path = out.with_suffix(".csv")
    write_csv(r, csv_path)
    incidents_path = out.with_suffix(".incidents.csv")
    write_incidents_csv(r, incidents_path)
    fig_path = out.with_suffix(".figures.json")
    fig_path.write_text(figures_json(r), encoding="utf-8")
    return [out, csv_path, incidents_path, fig_path]


def render_pdf_bytes(r: Report) -> bytes:
    from weasyprint import HTML  # noqa: PLC0415

    return bytes(HTML(string=render_html(r)).write_pdf())
