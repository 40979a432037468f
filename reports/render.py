"""Uptime reports as standalone HTML (charts embedded) and PDF (weasyprint), plus a CSV
of the daily figures and the SHA-256 of everything the report states."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from datetime import datetime, timedelta
from html import escape
from pathlib import Path
from zoneinfo import ZoneInfo

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from reports.data import DEFAULT_PAPER, PAPERS, Report, SloReport, long_date

MAX_INCIDENTS = 25
MARGINS_MM = (16.0, 14.0)
"""Top and bottom, left and right: nothing of the report's content is printed in them; the page
number sits in the bottom margin, inside the left and right ones."""
BUDGET_CLAMP = 1.0
"""The appendix draws the error budget left between -100% and +100%: below that, a budget spent
many times over would flatten every other line (the figure says by how much it was exceeded)."""
SLO_COLUMNS_PER_BLOCK = 5
PHONE_PX = 640
SLA_COLOR = "#b3261e"
"""Below this window width (screens only, never print) tables are laid out as cards."""
"""The daily appendix puts at most this many SLOs side by side, so a line fits the narrower
paper (Letter is 6 mm wider, A4 the reference): more SLOs make more blocks."""


def css(paper: str = DEFAULT_PAPER, screen: bool = True) -> str:
    """The report's style; ``screen`` adds the phone layout (PHONE_PX), which a PDF leaves out:
    weasyprint reads no media feature and warns on one."""
    top, side = MARGINS_MM
    return f"""
@page {{ size: {PAPERS[paper]}; margin: {top}mm {side}mm;
  @bottom-right {{ content: "page " counter(page) " of " counter(pages); font-size: 8pt; }} }}
body {{ font-family: "DejaVu Sans", Arial, sans-serif; font-size: 10pt; color: #1d2633; max-width: 1000px;
  margin: auto; overflow-wrap: anywhere; }}
h1 {{ font-size: 18pt; margin: 2px 0 0; }} h2 {{ font-size: 13pt; border-bottom: 1px solid #ccd; margin-top: 22px; }}
h3 {{ font-size: 11pt; margin-bottom: 4px; }}
.kicker {{ color: #556; font-size: 11pt; margin: 0; text-transform: uppercase; letter-spacing: 0.08em; }}
.sub {{ color: #556; margin-top: 2px; }}
.partial {{ border: 1px solid #d98a00; background: #fff6e0; padding: 4px 8px; font-weight: bold; }}
.verdict {{ font-size: 12pt; }}
table {{ border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 9pt; table-layout: fixed; }}
th, td {{ border: 1px solid #d5d9e0; padding: 3px 5px; text-align: right; overflow-wrap: anywhere; }}
th {{ background: #eef1f5; }}
td.l, th.l {{ text-align: left; }}
.met {{ color: #17733a; font-weight: bold; }} .missed {{ color: #b3261e; font-weight: bold; }}
.nodata {{ color: #777; }} .note {{ font-size: 8.5pt; color: #445; }}
img {{ max-width: 100%; }}
figure {{ display: inline-block; width: 49%; margin: 0 0 8px; vertical-align: top; break-inside: avoid; }}
figure img {{ width: 100%; }} figcaption {{ font-size: 8pt; color: #445; }}
pre.appendix {{ font-family: "DejaVu Sans Mono", monospace; font-size: 7pt; line-height: 1.25; }}
.mono {{ font-family: "DejaVu Sans Mono", monospace; font-size: 8pt; word-break: break-all; }}
""" + (PHONE_CSS if screen else "")


PHONE_CSS = f"""
@media screen and (max-width: {PHONE_PX}px) {{
  body {{ overflow-wrap: break-word; margin: 0 8px; }}
  table, tbody, tr, td {{ display: block; width: auto; }}
  thead, colgroup {{ display: none; }}
  tr {{ border: 1px solid #d5d9e0; margin: 0 0 6px; padding: 2px 0; }}
  td {{ border: none; text-align: left; padding: 1px 6px; overflow-wrap: break-word; }}
  td[data-label]::before {{ content: attr(data-label) ": "; color: #556; }}
  figure {{ width: 100%; }}
  pre.appendix {{ overflow-x: auto; }}
}}
"""
"""Screens narrower than PHONE_PX: each table row becomes a card of "heading: value" lines."""


def _pct(x: float | None, digits: int = 3) -> str:
    return "no data" if x is None else f"{100 * x:.{digits}f}%"


def _plain_pct(x: float | None) -> str:
    return "no data" if x is None else f"{100 * x:.3f}%"


def _target(x: float) -> str:
    """An objective or SLA as written in the config (99.9%, not 99.900%)."""
    return f"{100 * x:g}%"


def plural(n: float, unit: str, units: str = "") -> str:
    """``1 minute``, ``2 minutes``, ``0.5 minutes``, ``1,440 minutes`` (``units``: an irregular plural)."""
    number = f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"
    return f"{number} {unit}" if n == 1 else f"{number} {units or unit + 's'}"


def _threshold(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{1000 * seconds:g} ms" if seconds < 1 else f"{seconds:g} s"


def duration_words(minutes: float) -> str:
    """A downtime as a person reads it: ``4.3 minutes``, ``36 seconds`` under a minute, never
    ``0.0 minutes`` for an allowance that is small but not nothing."""
    if minutes >= 1 or minutes == 0:
        return plural(minutes if isinstance(minutes, int) else round(minutes, 1), "minute")
    seconds = 60 * minutes
    return plural(round(seconds), "second") if seconds >= 1 else f"{seconds:.1f} seconds"


def down_word(s: SloReport) -> str:
    """What a bad minute is called: downtime for an availability SLO, a slow minute for a latency
    SLO (its requests were served, too slowly: never downtime)."""
    return "slow" if s.kind == "latency" else "down"


def local_when(iso: str, tz: str, same_day_as: str | None = None) -> str:
    """``6 October 2026 09:00 CEST`` from a local ISO time; only ``09:30 CEST`` when it falls on
    the day of ``same_day_as`` (an incident's end beside its start)."""
    t = datetime.fromisoformat(iso).astimezone(ZoneInfo(tz))
    if (
        same_day_as is not None
        and datetime.fromisoformat(same_day_as).astimezone(ZoneInfo(tz)).date() == t.date()
    ):
        return f"{t:%H:%M} {t.tzname()}"
    return f"{long_date(t.date())} {t:%H:%M} {t.tzname()}"


def period_words(r: Report) -> str:
    """``1 December 2026 to 31 December 2026 (America/New_York)``: first and last day, both included."""
    first = datetime.fromisoformat(r.start).date()
    last = datetime.fromisoformat(r.end).date() - timedelta(days=1)
    return f"{long_date(first)} to {long_date(last)} ({r.timezone})"


def measure_text(s: SloReport) -> str:
    """What the SLO measured, in its own terms: a latency SLO is never called availability."""
    by_minutes = s.budgeting == "timeslices"
    if not s.total:
        return "no requests"
    if s.kind == "latency":
        within = _threshold(s.threshold_s)
        if by_minutes:
            return f"{_pct(s.uptime)} of minutes good (requests within {within})"
        return f"{_pct(s.availability)} of requests within {within}"
    return (
        f"{_pct(s.uptime)} of minutes up" if by_minutes else f"{_pct(s.availability)} of requests succeeded"
    )


def _verdict(met: bool | None, partial: bool = False) -> str:
    """Met or missed; ``met so far`` for a period that has not ended (a miss stays a miss)."""
    if met is None:
        return '<span class="nodata">no data</span>'
    if not met:
        return '<span class="missed">missed</span>'
    return '<span class="met">met so far</span>' if partial else '<span class="met">met</span>'


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of its own, outside pyplot: nothing process-wide (backend, figure list) is
    touched, and it is freed with its last reference."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _legend_outside(ax: Axes) -> None:
    """The legend to the right of the plotting area, never over it: a lone point or a line
    along an edge stays visible whatever the data."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _day_axis(ax: Axes, labels: list[str]) -> None:
    step = max(1, len(labels) // 12)
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels(labels[::step], rotation=90, fontsize=6)


def _marker(n: int) -> str | None:
    return "." if n < 100 else None


def _room(ax: Axes, values: list[float], labels_above: bool = False, percent: bool = True) -> None:
    """Y limits that leave room around every value and line (and a label drawn above a bar), with
    ticks kept to 0..100 for a percentage: a point at the bottom of the range stays clear of the
    axis."""
    known = [v for v in values if not math.isnan(v)]  # no data is not drawn
    if not known:
        return
    lo, hi = min(known), max(known)
    span = max(hi - lo, 0.5 if percent else 0.1 * hi, 1e-9)
    bottom = max(0.0, lo - 0.12 * span)
    top = hi + (0.3 if labels_above else 0.12) * span
    ax.set_ylim(bottom, top)
    ax.set_yticks([t for t in ax.get_yticks() if bottom <= t <= (min(top, 100.0) if percent else top)])


def _daily_chart(
    s: SloReport,
    title: str,
    values: list[float],
    label: str,
    ylabel: str,
    lines: list[tuple[float, str, str]],
) -> Figure:
    fig, ax = _figure(6.4, 2.6)
    x = list(range(len(values)))
    ax.plot(x, values, marker=_marker(len(x)), color="#2461b3", label=label)
    for y, color, line_label in lines:
        ax.axhline(y, color=color, linestyle="--" if color == SLA_COLOR else ":", label=line_label)
    ax.set_ylabel(ylabel)
    _room(ax, values + [y for y, _, _ in lines])
    ax.set_title(title)
    _legend_outside(ax)
    _day_axis(ax, [d.day[5:] for d in s.days])
    return fig


def chart_figures(r: Report, s: SloReport) -> list[tuple[str, Figure]]:
    """The customer-facing charts of one SLO, titled as their captions. A line is only drawn
    over the measure it judges: the SLA over daily uptime (minutes, as the contract is judged),
    the objective over the measure of its budgeting (minutes or requests)."""
    out: list[tuple[str, Figure]] = []
    nan = float("nan")
    by_minutes = s.budgeting == "timeslices"
    objective = (100 * s.objective, "#888", f"objective {_target(s.objective)}")
    minute_lines = []
    if s.contractual and s.sla is not None:
        minute_lines.append((100 * s.sla, SLA_COLOR, f"SLA {_target(s.sla)}"))
    if by_minutes:
        minute_lines.append(objective)
    if minute_lines:
        uptime = [100 * d.uptime if d.uptime is not None else nan for d in s.days]
        if s.kind == "latency":
            title, label = "Minutes within the latency target, per day", "daily good minutes"
        else:
            title, label = "Uptime per day (minutes up)", "daily uptime"
        out.append((title, _daily_chart(s, title, uptime, label, "% of measured minutes", minute_lines)))
    daily = [100 * d.availability if d.availability is not None else nan for d in s.days]
    if s.kind == "latency":
        title, label = (
            f"Requests within {_threshold(s.threshold_s)}, per day",
            f"within {_threshold(s.threshold_s)}",
        )
    else:
        title, label = "Requests succeeded per day", "daily share of requests"
    request_lines = [] if by_minutes else [objective]
    out.append((title, _daily_chart(s, title, daily, label, "% of requests", request_lines)))
    weeks = r.latency_weeks.get(s.service, [])
    if weeks and s.kind == "latency":
        fig, ax = _figure(6.4, 2.6)
        labels = [w[0][5:] for w in weeks]
        for idx, (name, color) in enumerate((("p50", "#2e8b57"), ("p95", "#d98a00"), ("p99", "#b3261e"))):
            values = [w[idx + 1] for w in weeks]
            ms = [1000 * v if isinstance(v, float) else float("nan") for v in values]
            ax.plot(range(len(labels)), ms, marker="o" if len(labels) < 20 else None, color=color, label=name)
        ax.axhline(1000 * (s.threshold_s or 0.0), color="#888", linestyle=":", label="threshold")
        shown = [1000 * v for w in weeks for v in w[1:] if isinstance(v, float)]
        _room(ax, [*shown, 1000 * (s.threshold_s or 0.0)], percent=False)
        ax.set_ylabel("ms")
        title = f"Latency percentiles by week ({s.service}, weeks from Monday)"
        ax.set_title(title)
        _legend_outside(ax)
        _day_axis(ax, labels)
        out.append((title, fig))
    if s.previous:
        out.append(_previous_figure(r, s))
    return out


def _previous_figure(r: Report, s: SloReport) -> tuple[str, Figure]:
    """Request shares of this period and the previous ones, against the objective only (the SLA is
    judged on minutes, not on these shares); each value written above its bar."""
    fig, ax = _figure(6.4, 2.4)
    bars = [p for p, _ in reversed(s.previous)] + [r.period]
    shares = [a for _, a in reversed(s.previous)] + [s.availability]
    heights = [100 * v if v is not None else float("nan") for v in shares]
    _room(ax, [*heights, 100 * s.objective], labels_above=True)
    floor = ax.get_ylim()[0]
    ax.bar(bars, [0.0 if math.isnan(h) else h for h in heights], color="#2461b3", label="share of requests")
    for k, v in enumerate(shares):
        # An empty period is written, never drawn as a bar of 0%.
        ax.annotate(
            "no data" if v is None else f"{100 * v:.3f}%",
            (k, floor if v is None else 100 * v),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            color="#333",
        )
    ax.axhline(100 * s.objective, color="#888", linestyle=":", label=f"objective {_target(s.objective)}")
    ax.set_ylabel("% of requests")
    title = "This period beside the previous ones"
    ax.set_title(title)
    _legend_outside(ax)
    return title, fig


def budget_figure(r: Report, s: SloReport) -> tuple[str, Figure]:
    """The SRE's error-budget burn-down, clamped to +-100% (BUDGET_CLAMP)."""
    days = [d.day[5:] for d in s.days]
    raw = [100 * c if c is not None else float("nan") for c in s.budget_curve]
    lo = -100 * BUDGET_CLAMP
    fig, ax = _figure(6.4, 2.6)
    ax.plot(
        range(len(days)),
        [max(lo, v) for v in raw],
        marker=_marker(len(days)),
        color="#7a4cc2",
        label="budget left",
    )
    ax.axhline(0, color="#b3261e", linewidth=0.8, label="all spent")
    ax.set_ylim(lo - 5, 105)
    ax.set_ylabel("% of budget")
    title = f"Error budget left: {s.slo}"
    ax.set_title(title, fontsize=9)
    _legend_outside(ax)
    _day_axis(ax, days)
    return title, fig


def _caption(r: Report, title: str) -> str:
    partial = f" ({_partial(r)})" if r.partial_through else ""
    return f"{escape(title)}, {escape(r.period)}{escape(partial)}."


def _partial(r: Report, word: str = "partial") -> str:
    return f"{word}: through {r.partial_through} ({r.timezone})"


def _figures(r: Report, charts: list[tuple[str, Figure]]) -> list[str]:
    return [
        f'<figure><img alt="{escape(title)}" src="{_png(fig)}"><figcaption>{_caption(r, title)}</figcaption></figure>'
        for title, fig in charts
    ]


def table_head(*columns: tuple[str, int, str]) -> str:
    """A table's opening with fixed column widths (percent: a long cell wraps, never widens the
    table past the page) and a header row that repeats on every page the table runs onto.
    ``columns``: (heading, width %, "l" or "r")."""
    cols = "".join(f"<col style='width:{width}%'>" for _, width, _ in columns)
    heads = "".join(f"<th{' class=l' if align == 'l' else ''}>{escape(h)}</th>" for h, _, align in columns)
    return f"<table><colgroup>{cols}</colgroup><thead><tr>{heads}</tr></thead>"


def label_cells(html: str) -> str:
    """Each table cell carries its column's heading (``data-label``), which a phone shows before
    the value when the rows are laid out as cards (``PHONE_PX``)."""

    def one_table(m: re.Match[str]) -> str:
        table = m.group(0)
        heads = re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)

        def one_row(row: re.Match[str]) -> str:
            col = 0

            def one_cell(cell: re.Match[str]) -> str:
                nonlocal col
                attrs = cell.group(1)
                label = re.sub(r"<[^>]+>", "", heads[col]) if col < len(heads) else ""
                span = re.search(r"colspan=(\d+)", attrs)
                col += int(span.group(1)) if span else 1
                return f'<td data-label="{label}"{attrs}>' if label else cell.group(0)

            return re.sub(r"<td([^>]*)>", one_cell, row.group(0))

        return re.sub(r"<tr>.*?</tr>", one_row, table, flags=re.S)

    return re.sub(r"<table>.*?</table>", one_table, html, flags=re.S)


def _incidents(r: Report, s: SloReport) -> list[str]:
    slow = s.kind == "latency"
    parts = ["<h3>Periods of slow responses</h3>" if slow else "<h3>Incidents</h3>"]
    if not s.incidents:
        return [*parts, "<p>None.</p>"]
    word = down_word(s)
    shown = sorted(sorted(s.incidents, key=lambda i: -i.minutes)[:MAX_INCIDENTS], key=lambda i: i.start)
    if len(shown) < len(s.incidents):
        what = "periods of slow responses" if slow else "incidents"
        parts.append(
            f"<p>{len(s.incidents)} {what}, {plural(sum(i.minutes for i in s.incidents), f'{word} minute')}; the "
            f"{len(shown)} longest below, every one in the incidents CSV beside this report.</p>"
        )
    parts.append(
        table_head(
            ("Start", 30, "l"),
            ("End", 26, "l"),
            (f"{word.capitalize()} minutes", 20, "r"),
            ("Requests slower" if slow else "Requests failed", 24, "r"),
        )
    )
    for inc in shown:
        parts.append(
            f"<tr><td class=l>{escape(local_when(inc.start, r.timezone))}</td>"
            f"<td class=l>{escape(local_when(inc.end, r.timezone, inc.start))}</td>"
            f"<td>{inc.minutes}</td><td>{inc.requests_affected:,}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _cover(r: Report) -> list[str]:
    contract = [s for s in r.slos if s.contractual]
    generated = local_when(r.generated_at, r.timezone)
    parts = [
        '<p class="kicker">Uptime report</p>',
        f"<h1>{escape(r.facility_name)}</h1>",
        f'<p class="sub">Period {escape(r.period)}: {escape(period_words(r))}. Generated {escape(generated)}.</p>',
    ]
    if r.partial_through:
        parts.append(
            f'<p class="partial">{escape(_partial(r, "Partial"))}. The period has not ended: every figure'
            " below covers it up to that time.</p>"
        )
    if r.sla is None:
        parts.append(
            '<p class="verdict">No SLA is set for this facility: the objectives are listed below.</p>'
        )
    elif not contract:
        parts.append(
            f'<p class="verdict">SLA {_target(r.sla)}: no SLO is contractual, nothing is judged.</p>'
        )
    else:
        parts.append(
            f'<p class="verdict">SLA {_target(r.sla)}: {_verdict(r.sla_met, bool(r.partial_through))}.</p>'
        )
    return parts


def minute_rule(r: Report, slos: list[SloReport]) -> str:
    """How a minute is judged up or down, with the target of each SLO and where it is set."""
    targets = sorted({s.timeslice_target for s in slos})
    which = (
        _target(targets[0])
        if len(targets) == 1
        else ", ".join(f"{escape(s.slo)} {_target(s.timeslice_target)}" for s in slos)
    )
    return (
        f"A minute is up when at least {which} of its requests succeeded, and down otherwise; this share is"
        " set per SLO in the SLO definitions (<code>timeslice: {target: ...}</code>, 95% when not set). A"
        " minute can be up while some of its requests failed: the share of requests that succeeded is"
        " compared with each SLO's objective under Service objectives, not with the SLA."
    )


def _contract(r: Report) -> list[str]:
    contract = [s for s in r.slos if s.contractual]
    if r.sla is None or not contract:
        return []
    partial = bool(r.partial_through)
    parts = [
        f"<h2>Contract: SLA {_target(r.sla)} uptime</h2>",
        table_head(
            ("Contractual SLO", 31, "l"),
            ("Uptime", 13, "r"),
            ("SLA", 9, "r"),
            ("Downtime allowed", 17, "r"),
            ("Downtime used", 17, "r"),
            ("Result", 13, "r"),
        ),
    ]
    for s in contract:
        if s.insufficient_data or s.downtime_allowed_minutes is None:
            parts.append(
                f"<tr><td class=l>{escape(s.slo)}</td><td colspan=5 class=l><b>insufficient data</b>: no"
                f" request or probe in {plural(s.no_evidence_minutes, 'minute')}</td></tr>"
            )
            continue
        parts.append(
            f"<tr><td class=l>{escape(s.slo)}</td><td>{_pct(s.uptime)}</td><td>{_target(r.sla)}</td>"
            f"<td>{duration_words(s.downtime_allowed_minutes)}</td><td>{plural(s.down_minutes, 'minute')}</td>"
            f"<td>{_verdict(s.sla_met, partial)}</td></tr>"
        )
    parts.append("</table>")
    names = ", ".join(escape(s.slo) for s in contract)
    marked = r.contractual_marked
    why = (
        "marked <code>contractual: true</code> in the SLO definitions"
        if marked
        else "every availability SLO, as none is marked <code>contractual</code>"
    )
    parts.append(
        f'<p class="note">{minute_rule(r, contract)}</p>'
        f'<p class="note">The SLA is judged on {names} ({why}). Uptime is the share of measured minutes that were'
        " up; the downtime allowed is the rest of the SLA's share of those minutes. Minutes without any request"
        " or probe are not measured (listed per SLO below); planned maintenance is excluded.</p>"
    )
    return parts


def _objectives(r: Report) -> list[str]:
    partial = bool(r.partial_through)
    parts = [
        "<h2>Service objectives</h2>",
        table_head(
            ("SLO", 29, "l"),
            ("Measured", 37, "l"),
            ("Objective", 11, "r"),
            ("Result", 11, "r"),
            ("Incidents", 12, "r"),
        ),
    ]
    for s in r.slos:
        if s.insufficient_data:
            parts.append(
                f"<tr><td class=l>{escape(s.slo)}</td><td colspan=4 class=l><b>insufficient data</b>: no"
                f" request or probe in {plural(s.no_evidence_minutes, 'minute')}</td></tr>"
            )
            continue
        parts.append(
            f"<tr><td class=l>{escape(s.slo)}</td><td class=l>{escape(measure_text(s))}</td>"
            f"<td>{_target(s.objective)}</td><td>{_verdict(s.objective_met, partial)}</td>"
            f"<td>{len(s.incidents)}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        '<p class="note">Objectives are the service\'s own targets; only the contractual SLOs above are compared'
        " with the SLA. For a latency SLO an incident is a period of slow responses, not downtime.</p>"
    )
    return parts


def _coverage(s: SloReport) -> str:
    """Which minutes the figures rest on, in plain words; probes only where some minute had them."""
    parts = [f"{plural(s.traffic_minutes, 'minute')} with requests from the facility's systems"]
    if s.probe_only_minutes:
        parts.append(
            f"{plural(s.probe_only_minutes, 'minute')} covered only by the gateway's own test requests"
        )
    parts.append(f"{plural(s.no_evidence_minutes, 'minute')} with no request at all")
    text = "Coverage: " + ", ".join(parts) + "."
    if s.coverage_not_kept_minutes:
        text += (
            f" For {plural(s.coverage_not_kept_minutes, 'measured minute')} this detail is no longer kept"
            " (the gateway keeps minute-level coverage for 35 days by default, <code>minute_retention</code>);"
            " their requests are counted above."
        )
    return text


def _slo_section(r: Report, s: SloReport) -> list[str]:
    what = f"{s.good:,} within {_threshold(s.threshold_s)}" if s.kind == "latency" else f"{s.good:,} good"
    if s.kind == "latency":
        minutes = (
            f"{plural(s.up_minutes, 'minute')} within target, <b>{plural(s.down_minutes, 'slow minute')}</b>"
            f" (under {_target(s.timeslice_target)} of requests within {_threshold(s.threshold_s)}; slow, not down)"
        )
    else:
        minutes = f"{plural(s.up_minutes, 'minute')} up, <b>{plural(s.down_minutes, 'minute')} down</b>"
    parts = [
        f"<h2>{escape(s.slo)} ({escape(s.service)})</h2>",
        f"<p>{plural(s.total, 'request')}, {what}: <b>{escape(measure_text(s))}</b>; objective"
        f" {_target(s.objective)}{', contractual' if s.contractual else ''}. {minutes},"
        f" {plural(s.no_data_minutes, 'minute')} without traffic"
        f" (no data), {plural(s.maintenance_minutes, 'minute')} of planned maintenance excluded.</p>",
        f"<p>{_coverage(s)}"
        + (
            " <b>Insufficient data</b>: no figure can be stated for this period."
            if s.insufficient_data
            else ""
        )
        + "</p>",
        '<div class="charts">',
        *_figures(r, chart_figures(r, s)),
        "</div>",
        *_incidents(r, s),
    ]
    if s.previous:
        prev = ", ".join(f"{escape(p)}: {_pct(a)}" for p, a in s.previous)
        parts.append(f"<p>Previous periods: {prev}.</p>")
    return parts


def _daily_appendix(r: Report) -> list[str]:
    # Preformatted rather than a table: a year is 365 rows, and text lays out far faster than cells.
    through = (
        f" The period has not ended: the days stop at {escape(r.partial_through)}."
        if r.partial_through
        else ""
    )
    parts = [
        "<h2>Appendix: daily figures</h2><p>Per day, the share of good requests (for a latency SLO, within its "
        "threshold) and the down minutes (for a latency SLO, the slow minutes); requests and the other columns"
        f" are in the CSV beside this report.{through}</p>"
    ]
    numbered = list(enumerate(r.slos, 1))
    for b in range(0, len(numbered), SLO_COLUMNS_PER_BLOCK):
        block = numbered[b : b + SLO_COLUMNS_PER_BLOCK]
        key = "; ".join(f"[{n}] {escape(s.slo)}" for n, s in block)
        parts.append(f'<p class="note">Columns: {key}.</p><pre class=appendix>')
        parts.append(
            escape("day        " + "".join(f"{f'[{n}] good':>13}{down_word(s):>6}" for n, s in block))
        )
        for i, day in enumerate(r.slos[0].days):
            cells = "".join(
                f"{_plain_pct(s.days[i].availability):>13}{s.days[i].down_minutes:>6}" for _, s in block
            )
            parts.append(escape(f"{day.day} {cells}"))
        parts.append("</pre>")
    return parts


def _budget_appendix(r: Report) -> list[str]:
    parts = [
        "<h2>Appendix: error budgets (for the service's engineers)</h2>",
        '<p class="note">Each objective allows a share of bad requests (or down minutes) in the period: its error'
        " budget. These figures steer the engineering work; they are not terms of the contract. Used above 100%"
        " means the objective was missed; the charts stop where the budget is overspent by its whole size, and"
        " the table gives the multiple.</p>",
        table_head(("SLO", 40, "l"), ("Objective", 20, "r"), ("Error budget used", 40, "l")),
    ]
    for s in r.slos:
        if s.budget_used is None:
            used = "no data"
        elif s.budget_used > 1:
            times = f"{s.budget_used:,.2f}" if s.budget_used < 10 else f"{s.budget_used:,.1f}"
            used = f"all of it: {times} times the budget"
        else:
            used = f"{100 * s.budget_used:.1f}%"
        parts.append(
            f"<tr><td class=l>{escape(s.slo)}</td><td>{_target(s.objective)}</td><td class=l>{used}</td></tr>"
        )
    parts.append("</table>")
    parts.extend(_figures(r, [budget_figure(r, s) for s in r.slos if not s.insufficient_data]))
    return parts


def render_html(r: Report, paper: str = DEFAULT_PAPER, screen: bool = True) -> str:
    """The whole report; ``paper`` (a key of PAPERS) sets the printed page size; ``screen``: for a
    browser (with the phone layout), else for weasyprint."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Uptime report: {escape(r.facility_name)}, {escape(r.period)}</title><style>{css(paper, screen)}</style>"
        "</head><body>",
        *_cover(r),
        *_contract(r),
        *_objectives(r),
    ]
    for s in r.slos:
        parts.extend(_slo_section(r, s))
    parts.append("<h2>Maintenance windows (excluded)</h2>")
    if r.maintenance:
        parts.append(table_head(("Start", 28, "l"), ("End", 28, "l"), ("Reason", 44, "l")))
        for m in r.maintenance:
            parts.append(
                f"<tr><td class=l>{escape(local_when(m['start'], r.timezone))}</td>"
                f"<td class=l>{escape(local_when(m['end'], r.timezone, m['start']))}</td>"
                f"<td class=l>{escape(m['reason'])}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>None in this period.</p>")
    parts.append(
        "<h2>Methods</h2><p>Every request to the facility's clinical APIs passed through the vitalgate gateway, "
        "which measured it where the facility's systems meet the service: status and duration, attributed to "
        f"the facility, with no patient data recorded. Times are in {escape(r.timezone)}; the period runs from "
        "local midnight to local midnight. A request is good for an availability SLO when its status is below 500 "
        "(and not a status the SLO lists as bad); for a latency SLO when it took no longer than the threshold. "
        "Availability is good requests over all requests. "
        f"{minute_rule(r, r.slos)} For an availability SLO a minute that is not up is down, and down minutes are "
        "downtime; for a latency SLO it is a slow minute (requests were served, too slowly), never downtime. "
        "Uptime is up minutes over measured (up or down) minutes. Incidents are runs of down (or slow) minutes, "
        "joined across minutes without traffic but never across an up minute. Minutes without any request are "
        "stated as no data, not counted as up. Where probes are configured, the gateway sends a test request "
        "through itself at a fixed interval; a minute covered only by probes is up or down by their results. "
        "Planned maintenance is excluded from every figure and listed above.</p>"
    )
    if r.slos:
        parts.extend(_daily_appendix(r))
        parts.extend(_budget_appendix(r))
    parts.append(
        f'<p>SHA-256 of the figures: <span class="mono">{r.sha256}</span><br>'
        "Recompute it from the JSON figures beside this report with <code>sha256sum</code> to check these numbers later.</p>"
    )
    parts.append("</body></html>")
    return label_cells("\n".join(parts))


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


def write_report(r: Report, out: Path, paper: str = DEFAULT_PAPER) -> list[Path]:
    """``out`` ending in .pdf or .html; the CSV and the figures' JSON go beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".pdf":
        out.write_bytes(render_pdf_bytes(r, paper))
    else:
        out.write_text(render_html(r, paper), encoding="utf-8")
    csv_path = out.with_suffix(".csv")
    write_csv(r, csv_path)
    incidents_path = out.with_suffix(".incidents.csv")
    write_incidents_csv(r, incidents_path)
    fig_path = out.with_suffix(".figures.json")
    fig_path.write_text(figures_json(r), encoding="utf-8")
    return [out, csv_path, incidents_path, fig_path]


def html_to_pdf(html: str) -> bytes:
    from weasyprint import HTML  # noqa: PLC0415  (slow import; only for PDFs)

    return bytes(HTML(string=html).write_pdf())


def render_pdf_bytes(r: Report, paper: str = DEFAULT_PAPER) -> bytes:
    return html_to_pdf(render_html(r, paper, screen=False))
