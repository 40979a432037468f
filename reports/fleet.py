"""What ``vitalgate report --all-facilities`` writes beside the facilities' reports: an index
page (HTML, a link to each report) and a one-page fleet summary (PDF) of every facility's SLA
result, both from the same rows."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from reports.data import DEFAULT_PAPER, Report, SloReport
from reports.render import css, duration_words, label_cells, plural, table_head


@dataclass(frozen=True)
class FleetRow:
    """One facility's SLA result: judged on its lowest contractual uptime."""

    facility: str
    name: str
    timezone: str
    sla: float | None
    sla_met: bool | None
    worst: SloReport | None
    """The contractual SLO with the lowest uptime (None: no contractual SLO with data)."""
    contractual: int
    met: int
    report_file: str
    sha256: str
    partial_through: str | None


def fleet_row(r: Report, report_file: str) -> FleetRow:
    judged = [s for s in r.slos if s.contractual and s.uptime is not None]
    worst = min(judged, key=lambda s: s.uptime or 0.0) if judged else None
    return FleetRow(
        facility=r.facility,
        name=r.facility_name,
        timezone=r.timezone,
        sla=r.sla,
        sla_met=r.sla_met,
        worst=worst,
        contractual=sum(1 for s in r.slos if s.contractual),
        met=sum(1 for s in r.slos if s.contractual and s.sla_met),
        report_file=report_file,
        sha256=r.sha256,
        partial_through=r.partial_through,
    )


def _result(row: FleetRow) -> str:
    if row.sla is None:
        return '<span class="nodata">no SLA</span>'
    if row.contractual == 0:
        return '<span class="nodata">no contractual SLO</span>'
    if row.sla_met is None:
        return '<span class="nodata">no data</span>'
    if row.sla_met:
        word = (
            '<span class="met">met so far</span>' if row.partial_through else '<span class="met">met</span>'
        )
    else:
        word = '<span class="missed">missed</span>'
    return f"{word} ({row.met} of {plural(row.contractual, 'SLO')})"


def _used(w: SloReport) -> str:
    """``30 of 4.3 minutes``; ``1 minute of 36 seconds`` when the allowance is under a minute."""
    allowed = w.downtime_allowed_minutes or 0.0
    if allowed >= 1:
        return f"{w.down_minutes:,} of {duration_words(allowed)}"
    return f"{plural(w.down_minutes, 'minute')} of {duration_words(allowed)}"


def _table(rows: list[FleetRow], links: bool) -> list[str]:
    parts = [
        table_head(
            ("Facility", 30, "l"),
            ("SLA", 8, "r"),
            ("Lowest uptime", 12, "r"),
            ("of SLO", 20, "l"),
            ("Downtime used (of allowed)", 15, "r"),
            ("SLA result", 15, "l"),
        )
    ]
    for row in rows:
        name = escape(row.name)
        if links:
            name = f'<a href="{escape(row.report_file)}">{name}</a>'
        sla = "-" if row.sla is None else f"{100 * row.sla:g}%"
        w = row.worst
        if w is None or w.downtime_allowed_minutes is None:
            uptime, slo, used = "-", "-", "-"
        else:
            uptime, slo = f"{100 * (w.uptime or 0.0):.3f}%", escape(w.slo)
            used = _used(w)
        partial = (
            f" <span class=note>partial: through {escape(row.partial_through)}</span>"
            if row.partial_through
            else ""
        )
        parts.append(
            f"<tr><td class=l>{name} <span class=note>({escape(row.facility)})</span>{partial}</td>"
            f"<td>{sla}</td><td>{uptime}</td><td class=l>{slo}</td><td>{used}</td>"
            f"<td class=l>{_result(row)}</td></tr>"
        )
    parts.append("</table>")
    return parts


FLEET_TYPE_PT = (8.0, 7.0, 6.0, 5.0)
"""Type sizes the fleet summary tries, largest first, until it fits one page (a fleet too large
for the smallest runs onto more pages)."""


def _compact(size_pt: float) -> str:
    return (
        f"table {{ font-size: {size_pt}pt; }} th, td {{ padding: 1px 4px; }}"
        f" .note {{ font-size: {size_pt - 1}pt; }}"
    )


def _summary_line(rows: list[FleetRow]) -> str:
    met = sum(1 for r in rows if r.sla_met is True)
    missed = sum(1 for r in rows if r.sla_met is False)
    other = len(rows) - met - missed
    so_far = " so far" if any(r.partial_through for r in rows) else ""
    return (
        f"{plural(len(rows), 'facility', 'facilities')}: {met} met their SLA{so_far},"
        f" {missed} missed it, {other} without a result."
    )


def _page(
    title: str,
    period: str,
    generated_at: str,
    rows: list[FleetRow],
    paper: str,
    links: bool,
    size_pt: float = FLEET_TYPE_PT[0],
) -> str:
    return label_cells(
        "\n".join(
            [
                "<!doctype html><html lang=en><head><meta charset=utf-8>",
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                f"<title>{escape(title)}</title>",
                f"<style>{css(paper, screen=links)} {_compact(size_pt)}</style>",
                "</head><body>",
                '<p class="kicker">Fleet summary</p>',
                f"<h1>{escape(title)}</h1>",
                f'<p class="sub">Generated {escape(generated_at)}. Each facility\'s period runs midnight to'
                " midnight in its own time zone.</p>",
                f'<p class="verdict">{escape(_summary_line(rows))}</p>',
                *_table(rows, links),
                '<p class="note">A facility meets its SLA when every contractual SLO\'s uptime (up minutes'
                " over measured minutes) reaches it, that is when the downtime used stays within the downtime"
                " allowed"
                " (a minute is up when at least the SLO's timeslice target of its requests, 95% unless set in"
                " the SLO definitions, succeeded). A period that has not ended is judged so far."
                " The lowest uptime is shown; each facility's report states every SLO.</p>",
                "</body></html>",
            ]
        )
    )


def index_html(period: str, generated_at: str, rows: list[FleetRow], fleet_pdf: str) -> str:
    """The index page: every facility's SLA result, linked to its report and the fleet PDF."""
    page = _page(f"Uptime reports, {period}", period, generated_at, rows, DEFAULT_PAPER, links=True)
    link = f'<p>One-page summary to print: <a href="{escape(fleet_pdf)}">{escape(fleet_pdf)}</a>.</p>'
    return page.replace("</body>", link + "\n</body>")


def fleet_pdf(period: str, generated_at: str, rows: list[FleetRow], paper: str = DEFAULT_PAPER) -> bytes:
    """The one-page summary: the largest type of FLEET_TYPE_PT that fits every facility on a page."""
    from weasyprint import HTML  # noqa: PLC0415  (slow import; only for PDFs)

    title = f"Uptime, {period}: every facility"
    for size_pt in FLEET_TYPE_PT:
        document = HTML(string=_page(title, period, generated_at, rows, paper, False, size_pt)).render()
        if len(document.pages) == 1:
            break
    return bytes(document.write_pdf())
