"""The account manager's report, through the CLI: every page fits A4 and US Letter inside its
margins (a very long facility name, 12 SLOs), the contract is stated in its own terms (uptime
against the SLA on the contractual SLOs, downtime allowed and used), latency objectives read as
such, a period that has not ended says so, legends never cover data, ``--all-facilities``
writes an index and a one-page fleet summary, and no third-party INFO or DEBUG line is logged
(CLI and gateway)."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg

from reports.data import build_report, parse_period
from reports.fleet import fleet_pdf, fleet_row
from reports.render import MARGINS_MM, budget_figure, chart_figures
from slo.store import Store
from tests import slos
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess
from tests.support.services import require_binary
from vitalgate.config import load_config
from vitalgate.peers import free_port

LONG_NAME = (
    "Saint Bartholomew's Regional Medical Center and University Teaching Hospital of the Greater"
    " Northwestern Metropolitan Health District, Cardiothoracic and Transplant Surgery Campus"
    " (Universitätsklinikumsverwaltungsgesellschaftsbetriebsstättenzentrum)"
)
LONG_SLO = "fhir-patient-everything-operation-availability-for-emergency-op"  # 63, the most allowed
BERLIN = "Europe/Berlin"
# Local October 5 to 7, 2026 in Berlin (CEST, UTC+2): one GET a minute per facility.
DATA_START = datetime(2026, 10, 5, 0, 0, tzinfo=ZoneInfo(BERLIN))
DATA_MINUTES = 3 * 1440
LONG_OUTAGE = (datetime(2026, 10, 6, 9, 0, tzinfo=ZoneInfo(BERLIN)), 30)  # 30 minutes of 503
SHORT_OUTAGE = (datetime(2026, 10, 6, 9, 0, tzinfo=ZoneInfo(BERLIN)), 5)
SLOW_EVERY = 10  # one request in ten takes 450 ms: 90% within 300 ms
RECENT_MINUTES = 90  # the last minutes before now, for a period that has not ended

SLOS = [
    slos.availability("fhir-availability", 99.9, contractual=True),
    slos.latency("fhir-read-latency", "300ms", 99, ["GET"]),
    slos.availability("fhir-read-availability", 99.5, filter={"methods": ["GET"]}, contractual=True),
    slos.availability("fhir-strict-availability", 99.99),
    slos.latency("fhir-read-latency-fast", "100ms", 95, ["GET"]),
    slos.latency("fhir-read-latency-slow", "1s", 99.9, ["GET"]),
    slos.availability(LONG_SLO, 99.95),
    slos.availability("fhir-writes", 99.9, filter={"methods": ["POST", "PUT"]}),
    slos.availability("fhir-minutes", 99.5, budgeting="timeslices"),
    slos.latency("fhir-latency-all", "500ms", 99),
    slos.availability("fhir-availability-429", 99.0, sli={"availability": {"bad_statuses": [429]}}),
    slos.latency("fhir-latency-minutes", "300ms", 90),
]
CONTRACTUAL = ["fhir-availability", "fhir-read-availability"]
FACILITIES = {
    "long": {"name": LONG_NAME, "timezone": BERLIN, "sla": 99.9, "paper": "letter"},
    "short": {"name": "Riverside", "timezone": BERLIN, "sla": 99.5},
}
pytestmark = pytest.mark.slow  # one module fixture renders five reports (about 40 s on 2 cores)
MM = 72 / 25.4
PAGES = {"a4": (595.28, 841.89), "letter": (612.0, 792.0)}


def _line(ts: datetime, facility: str, status: int, duration_ms: float) -> str:
    return json.dumps(
        {
            "timestamp": ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "event": "request",
            "trace_id": "0" * 32,
            "span_id": "0" * 16,
            "trace_flags": "01",
            "facility": facility,
            "service": "fhir",
            "http.route": "/fhir/Patient/{id}",
            "http.request.method": "GET",
            "http.response.status_code": status,
            "duration_ms": duration_ms,
            "upstream_duration_ms": duration_ms - 1,
        }
    )


def _access_log(path: Path, now: datetime) -> None:
    outages = {"long": LONG_OUTAGE, "short": SHORT_OUTAGE}
    with path.open("w") as f:
        minutes = [DATA_START + timedelta(minutes=i, seconds=10) for i in range(DATA_MINUTES)]
        recent = now.replace(second=10, microsecond=0) - timedelta(minutes=RECENT_MINUTES)
        minutes += [recent + timedelta(minutes=i) for i in range(RECENT_MINUTES - 1)]
        for i, t in enumerate(minutes):
            for facility, (start, length) in outages.items():
                down = start <= t < start + timedelta(minutes=length)
                f.write(
                    _line(t, facility, 503 if down else 200, 450.0 if i % SLOW_EVERY == 0 else 40.0) + "\n"
                )


@dataclass(frozen=True)
class Run:
    """The files of the module's report runs, and every run's stderr."""

    dir: Path
    now: datetime
    current: str
    stderr: list[str]


def _report(d: Path, stderr: list[str], *args: str) -> None:
    proc = vitalgate("report", "--config", str(d / "gateway.yaml"), *args, timeout=300)
    stderr.append(proc.stderr)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    d = tmp_path_factory.mktemp("contract")
    cfg = {
        "version": 1,
        "listen": f"127.0.0.1:{free_port()}",
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "upstreams": {"fhir": {"url": f"http://127.0.0.1:{free_port()}"}},
        "routes": [{"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir"}],
        "facilities": {"from": [{"header": "X-Facility-ID"}], "known": FACILITIES},
        "telemetry": {"access_log": {"path": "access.out"}, "store": {"path": "store.db"}},
        "slos": "slos.yaml",
    }
    (d / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    (d / "slos.yaml").write_text(yaml.safe_dump({"version": 1, "slos": SLOS}))
    now = datetime.now(ZoneInfo(BERLIN))
    _access_log(d / "access.log", now)
    vitalgate("store", "import", "--config", str(d / "gateway.yaml"), "--access-log", str(d / "access.log"))
    current = f"{now.year}-{now.month:02d}"
    stderr: list[str] = []
    _report(
        d, stderr, "--facility", "long", "--period", "2026-10", "--paper", "a4", "--out", str(d / "a4.pdf")
    )
    _report(d, stderr, "--facility", "long", "--period", "2026-10", "--out", str(d / "oct.html"))
    _report(d, stderr, "--facility", "long", "--period", current, "--out", str(d / "partial.html"))
    (d / "all").mkdir()
    # No --paper: each facility's own (long: letter), else A4.
    _report(d, stderr, "--all-facilities", "--period", "2026-10", "--out", str(d / "all/oct.pdf"))
    return Run(d, now, current, stderr)


def _text(pdf: Path) -> str:
    out = subprocess.run(
        [require_binary("pdftotext"), "-raw", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    return " ".join(out.split())


def _html_text(html: str) -> str:
    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    p = Text()
    p.feed(html)
    return " ".join(" ".join(p.parts).split())


@dataclass(frozen=True)
class Word:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float


def _pages(pdf: Path) -> list[tuple[float, float, list[Word]]]:
    """Each page's width, height and words (points, origin top left) from ``pdftotext -bbox``."""
    xhtml = subprocess.run(
        [require_binary("pdftotext"), "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    ns = {"x": "http://www.w3.org/1999/xhtml"}
    root = ET.fromstring(xhtml)  # noqa: S314 (pdftotext's output for a PDF this test made)
    out = []
    for page in root.iter(f"{{{ns['x']}}}page"):
        words = [
            Word(w.text or "", *(float(w.attrib[k]) for k in ("xMin", "yMin", "xMax", "yMax")))
            for w in page.iter(f"{{{ns['x']}}}word")
        ]
        out.append((float(page.attrib["width"]), float(page.attrib["height"]), words))
    return out


def _assert_inside_margins(pdf: Path, paper: str) -> int:
    """Every word inside the page minus its margins, but the page number, which sits in the bottom
    margin inside the side margins. Returns the number of pages."""
    top, side = (m * MM for m in MARGINS_MM)
    tolerance = 1.0  # points: glyph boxes are the font's, a hair taller than the line
    pages = _pages(pdf)
    assert pages
    for n, (width, height, words) in enumerate(pages, 1):
        assert (round(width, 1), round(height, 1)) == tuple(round(v, 1) for v in PAGES[paper]), (pdf, n)
        assert words, f"{pdf.name} page {n} is empty"
        footer = [w for w in words if w.y0 > height - top - tolerance]
        assert " ".join(w.text for w in footer) == f"page {n} of {len(pages)}", (pdf.name, n, footer)
        for w in words:
            where = f"{pdf.name} page {n}: {w}"
            assert side - tolerance <= w.x0 and w.x1 <= width - side + tolerance, where
            assert top - tolerance <= w.y0, where
            if w not in footer:
                assert w.y1 <= height - top + tolerance, where
            assert w.y1 <= height, where
    return len(pages)


@pytest.mark.parametrize(("pdf", "paper"), [("a4.pdf", "a4"), ("all/oct-long.pdf", "letter")])
def test_every_page_fits_its_paper(run: Run, pdf: str, paper: str) -> None:
    pages = _assert_inside_margins(run.dir / pdf, paper)
    assert pages >= 4  # 12 SLOs: the check ran over many pages, tables and appendices


def test_the_paper_choice_is_kept_by_every_pdf(run: Run) -> None:
    """``--paper`` over the facility's ``paper:``, over A4."""
    _assert_inside_margins(run.dir / "all/oct-short.pdf", "a4")
    _assert_inside_margins(run.dir / "all/oct-fleet.pdf", "a4")


def test_unknown_paper_is_a_config_error(run: Run, tmp_path: Path) -> None:
    cfg = yaml.safe_load((run.dir / "gateway.yaml").read_text())
    cfg["facilities"]["known"]["short"]["paper"] = "a3"
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "slos.yaml").write_text((run.dir / "slos.yaml").read_text())
    proc = vitalgate("check", "--config", str(tmp_path / "gateway.yaml"), check=False)
    assert proc.returncode == 1
    assert re.search(
        r"gateway\.yaml:\d+:\d+: facilities\.known\.short\.paper: .*must be one of a4, letter \(got 'a3'\)",
        proc.stderr,
    ), proc.stderr
    proc = vitalgate(
        "report",
        "--config",
        str(run.dir / "gateway.yaml"),
        "--facility",
        "long",
        "--period",
        "2026-10",
        "--paper",
        "a3",
        "--out",
        str(tmp_path / "x.pdf"),
        check=False,
    )
    assert proc.returncode == 2 and "invalid choice: 'a3'" in proc.stderr


def test_long_facility_name_is_printed_whole(run: Run) -> None:
    text = _text(run.dir / "a4.pdf")
    squeezed = text.replace(" ", "")
    assert LONG_NAME.replace(" ", "") in squeezed
    assert LONG_SLO in squeezed


def test_contract_terms_on_contractual_slos_only(run: Run) -> None:
    text = _text(run.dir / "a4.pdf")
    # 4,320 measured minutes at 99.9%: 4.3 minutes of downtime allowed; 30 used: missed.
    assert "Contract: SLA 99.9% uptime" in text
    assert "SLA 99.9%: missed" in text
    assert (
        f"fhir-availability {100 * (DATA_MINUTES - 30) / DATA_MINUTES:.3f}% 99.9% 4.3 minutes 30 minutes missed"
        in text
    )
    assert f"The SLA is judged on {', '.join(CONTRACTUAL)} (marked contractual: true" in text
    figures = json.loads((run.dir / "a4.figures.json").read_text())
    by_name = {s["slo"]: s for s in figures["slos"]}
    assert sorted(n for n, s in by_name.items() if s["contractual"]) == sorted(CONTRACTUAL)
    assert all(s["sla_met"] is None for n, s in by_name.items() if n not in CONTRACTUAL)
    assert by_name["fhir-availability"]["downtime_allowed_minutes"] == pytest.approx(4.32)
    assert figures["sla_met"] is False and figures["partial_through"] is None


def test_a_latency_slo_cannot_be_contractual(tmp_path: Path) -> None:
    cfg = {
        "version": 1,
        "listen": "127.0.0.1:0",
        "upstreams": {"fhir": {"url": "http://127.0.0.1:9"}},
        "routes": [{"prefix": "/fhir/", "upstream": "fhir"}],
        "slos": "slos.yaml",
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    bad = {**slos.latency("fhir-read-latency", "300ms", 99), "contractual": True}
    (tmp_path / "slos.yaml").write_text(yaml.safe_dump({"version": 1, "slos": [slos.availability(), bad]}))
    proc = vitalgate("check", "--config", str(tmp_path / "gateway.yaml"), check=False)
    assert proc.returncode == 1
    assert re.search(
        r"slos\.yaml:\d+:\d+: slos\[1\]\.contractual: only an availability SLO can be judged against a facility's SLA",
        proc.stderr,
    ), proc.stderr


def test_latency_objectives_read_as_latency(run: Run) -> None:
    text = _text(run.dir / "a4.pdf")
    # Requests every minute, one in ten slow: 90% within 300 ms (and the outage's are fast).
    assert "fhir-read-latency 90.000% of requests within 300 ms 99% missed" in text
    assert "fhir-read-latency-slow 100.000% of requests within 1 s 99.9% met" in text
    assert "fhir-minutes 99.306% of minutes up 99.5% missed" in text
    assert "availability 90.000%" not in text
    for name in ("fhir-read-latency", "fhir-latency-all"):
        contract_table = text.split("Service objectives")[0]
        assert f"{name} " not in contract_table


def test_wording_and_units(run: Run) -> None:
    for text in (_text(run.dir / "a4.pdf"), _html_text((run.dir / "oct.html").read_text())):
        assert "Uptime minutes" not in text
        assert not re.search(r"(?<![\d.,])1 (minutes|requests)\b", text)
        assert "30 minutes down" in text
        # No internal figure above 100% or below 0% reaches the reader: budgets are stated as multiples.
        percents = [float(p.replace(",", "")) for p in re.findall(r"(-?[\d,]+(?:\.\d+)?)%", text)]
        assert percents and all(0 <= p <= 100 for p in percents), [p for p in percents if not 0 <= p <= 100]
        assert "Appendix: error budgets" in text
        # 99.99%: 30 bad of 4,320 requests is 69.4 times the budget of 0.432.
        assert "fhir-strict-availability 99.99% all of it: 69.4 times the budget" in text


def test_period_not_ended_is_marked(run: Run) -> None:
    html = (run.dir / "partial.html").read_text()
    figures = html.count("<figure>")
    assert figures >= 12  # a chart per SLO at least, and a budget chart each
    marker = re.compile(r"[Pp]artial: through (\d{4}-\d{2}-\d{2}) (\d{2}):(\d{2}) (CES?T) \(Europe/Berlin\)")
    found = marker.findall(html)
    assert len(found) == figures + 1  # the cover and every caption
    stamped = datetime.fromisoformat(f"{found[0][0]}T{found[0][1]}:{found[0][2]}").replace(
        tzinfo=ZoneInfo(BERLIN)
    )
    assert abs((stamped - run.now).total_seconds()) < 3600  # the time the report was made, local
    assert len(re.findall(r"<figcaption>[^<]*partial: through", html)) == figures
    ended = (run.dir / "oct.html").read_text()
    assert "partial: through" not in ended.lower()


def _hidden_by_legend(fig: object) -> list[str]:
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    renderer = FigureCanvasAgg(fig).get_renderer()  # type: ignore[no-untyped-call]  # untyped in matplotlib
    fig.draw(renderer)
    problems = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None and legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)):
            problems.append(ax.get_title())
    return problems


def test_legends_never_cover_data(run: Run) -> None:
    config = load_config(run.dir / "gateway.yaml")
    facility = next(f for f in config.facilities() if f.id == "long")
    store = Store(run.dir / "store.db", readonly=True)
    try:
        checked = 0
        for label in ("2026-10", run.current):
            report = build_report(store, config.slos, facility, parse_period(label), run.now.timestamp())
            for s in report.slos:
                for title, fig in [*chart_figures(report, s), budget_figure(report, s)]:
                    assert fig.axes[0].get_legend() is not None, title
                    assert _hidden_by_legend(fig) == [], title
                    checked += 1
    finally:
        store.close()
    assert checked >= 48


def test_index_and_fleet_summary(run: Run) -> None:
    index = (run.dir / "all/oct-index.html").read_text()
    text = _html_text(index)
    for facility, doc in FACILITIES.items():
        assert f'href="oct-{facility}.pdf"' in index and (run.dir / f"all/oct-{facility}.pdf").exists()
        assert str(doc["name"]) in text
    assert 'href="oct-fleet.pdf"' in index
    assert "2 facilities: 1 met their SLA, 1 missed it, 0 without a result." in text
    pdf = run.dir / "all/oct-fleet.pdf"
    assert len(_pages(pdf)) == 1
    fleet = _text(pdf)
    assert "Riverside" in fleet and "met (2 of 2 SLOs)" in fleet and "missed (0 of 2 SLOs)" in fleet
    assert f"{100 * (DATA_MINUTES - 5) / DATA_MINUTES:.3f}% fhir-availability" in fleet
    assert "30 of 4.3 minutes" in fleet and "5 of 21.6 minutes" in fleet  # 99.5% of 4,320 minutes


def test_fleet_summary_of_a_large_fleet_stays_on_one_page(run: Run) -> None:
    """75 facilities (the rows of this run's report, repeated): the type shrinks, the page holds."""
    config = load_config(run.dir / "gateway.yaml")
    facility = next(f for f in config.facilities() if f.id == "long")
    store = Store(run.dir / "store.db", readonly=True)
    try:
        report = build_report(store, config.slos, facility, parse_period("2026-10"), run.now.timestamp())
    finally:
        store.close()
    rows = [
        replace(fleet_row(report, f"oct-{i}.pdf"), facility=f"site-{i}", name=f"Site {i}") for i in range(75)
    ]
    pdf = run.dir / "fleet75.pdf"
    pdf.write_bytes(fleet_pdf("2026-10", "now", rows))
    assert _assert_inside_margins(pdf, "a4") == 1
    text = _text(pdf)
    assert all(f"Site {i} (site-{i})" in text for i in range(75))


def _third_party_chatter(lines: list[str]) -> list[str]:
    own = ("gateway", "slo", "alerts", "dashboards", "reports", "vitalgate", "__main__")
    out = []
    for line in lines:
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if (
            record.get("level") in ("debug", "info")
            and str(record.get("logger", "")).split(".")[0] not in own
        ):
            out.append(line)
    return out


def test_report_runs_log_no_third_party_info(run: Run) -> None:
    assert len(run.stderr) == 4
    assert _third_party_chatter([line for err in run.stderr for line in err.splitlines()]) == []


def test_report_download_is_partial_and_logs_no_third_party_info(run: Run) -> None:
    """The gateway's download of this month's PDF: on the facility's paper, marked partial on its cover,
    and the gateway's log holds no third-party INFO or DEBUG line after it."""
    gw = GatewayProcess(run.dir / "gateway.yaml")
    try:
        url = f"{gw.admin}/api/v1/reports/long/{run.current}.pdf"
        with urllib.request.urlopen(url, timeout=120) as resp:
            (run.dir / "download.pdf").write_bytes(resp.read())
    finally:
        gw.terminate()
    _assert_inside_margins(run.dir / "download.pdf", "letter")
    text = _text(run.dir / "download.pdf")
    assert "Partial: through" in text and "The period has not ended" in text
    lines = gw.stderr_path.read_text().splitlines()
    assert any('"listening"' in line for line in lines)  # the log was written, and read
    assert _third_party_chatter(lines) == []
