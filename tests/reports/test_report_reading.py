"""The uptime report as a new reader meets it, through the CLI: the SLA verdict and the chart
drawn against the SLA count the same thing (minutes), the minute rule is stated beside the
contract, a period that has not ended stops at today and says "so far", an allowance under a
minute is written in seconds, a latency SLO's bad minutes are slow minutes (never downtime),
charts leave room around every value and label, an old period says its minute coverage is no
longer kept, and the HTML reads on a 390 px phone without a word broken in two."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Annotation

from reports.data import build_report, parse_period
from reports.render import chart_figures
from slo.store import Store
from tests import slos
from tests.reports.cdp import chromium
from tests.support.cli import vitalgate
from tests.support.services import require_binary
from vitalgate.config import load_config
from vitalgate.peers import free_port

NEW_YORK = "America/New_York"
PER_MINUTE = 20
RECENT = 120  # minutes before now, every one measured
FAILED_MINUTES = range(10, 15)  # 1 of 20 requests fails in each: 95% good, every one up (target 95%)
SLOW_MINUTE = 30  # 10 of its 20 requests take 450 ms: a slow minute for the latency SLO
OLD_DAY_SHARE = (0.6952, 0.8119)  # two days of a month over 35 days ago: 69.52% and 81.19% good
pytestmark = pytest.mark.slow  # five CLI report runs (about 40 s on 2 cores)


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


def _old_month(now: datetime) -> date:
    """The first day of the month two months back: wholly older than the 35 days of raw minutes."""
    first = now.date().replace(day=1)
    return (first - timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class Run:
    dir: Path
    now: datetime
    current: str
    old: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    d = tmp_path_factory.mktemp("reading")
    cfg = {
        "version": 1,
        "listen": f"127.0.0.1:{free_port()}",
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "upstreams": {"fhir": {"url": f"http://127.0.0.1:{free_port()}"}},
        "routes": [{"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir"}],
        "facilities": {
            "from": [{"header": "X-Facility-ID"}],
            "known": {"east": {"name": "East General", "timezone": NEW_YORK, "sla": 99.5}},
        },
        "telemetry": {"store": {"path": "store.db"}},
        "slos": "slos.yaml",
    }
    (d / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    specs = [
        slos.availability("fhir-availability", 99.9, contractual=True),
        slos.latency("fhir-read-latency", "300ms", 99, ["GET"]),
    ]
    (d / "slos.yaml").write_text(yaml.safe_dump({"version": 1, "slos": specs}))
    now = datetime.now(ZoneInfo(NEW_YORK))
    old = _old_month(now)
    with (d / "access.log").open("w") as f:
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=RECENT)
        for m in range(RECENT):
            for k in range(PER_MINUTE):
                status = 503 if m in FAILED_MINUTES and k == 0 else 200
                slow = m == SLOW_MINUTE and k < PER_MINUTE // 2
                f.write(
                    _line(start + timedelta(minutes=m, seconds=k), "east", status, 450.0 if slow else 40.0)
                    + "\n"
                )
        for day, share in enumerate(OLD_DAY_SHARE):
            t0 = datetime(old.year, old.month, 10 + day, 12, tzinfo=ZoneInfo(NEW_YORK))
            for k in range(10_000):
                status = 200 if k < round(share * 10_000) else 503
                f.write(_line(t0 + timedelta(seconds=0.3 * k), "east", status, 40.0) + "\n")
    vitalgate("store", "import", "--config", str(d / "gateway.yaml"), "--access-log", str(d / "access.log"))
    current = f"{now.year}-{now.month:02d}"
    old_label = f"{old.year}-{old.month:02d}"
    args = ("report", "--config", str(d / "gateway.yaml"))
    for period, out in ((current, "now.pdf"), (current, "now.html"), (old_label, "old.pdf")):
        vitalgate(*args, "--facility", "east", "--period", period, "--out", str(d / out), timeout=300)
    (d / "all").mkdir()
    vitalgate(*args, "--all-facilities", "--period", current, "--out", str(d / "all/now.pdf"), timeout=300)
    return Run(d, now, current, old_label)


def _text(pdf: Path) -> str:
    out = subprocess.run(
        [require_binary("pdftotext"), "-raw", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    return " ".join(out.split())


def test_the_verdict_and_the_sla_chart_count_minutes(run: Run) -> None:
    """One failed request of 20 in five minutes: each minute is up, the SLA is met so far at 100%
    uptime, while the share of requests misses the objective (and only the objective)."""
    text = _text(run.dir / "now.pdf")
    assert "SLA 99.5%: met so far." in text
    # 120 measured minutes at 99.5%: 0.6 minutes allowed, written in seconds.
    assert "fhir-availability 100.000% 99.5% 36 seconds 0 minutes met so far" in text
    assert "A minute is up when at least 95% of its requests succeeded" in text
    assert "timeslice: {target: ...}, 95% when not set" in text
    share = 100 * (RECENT * PER_MINUTE - len(FAILED_MINUTES)) / (RECENT * PER_MINUTE)  # 99.792%
    assert f"fhir-availability {share:.3f}% of requests succeeded 99.9% missed" in text
    config = load_config(run.dir / "gateway.yaml")
    (facility,) = config.facilities()
    store = Store(run.dir / "store.db", readonly=True)
    try:
        report = build_report(store, config.slos, facility, parse_period(run.current), run.now.timestamp())
    finally:
        store.close()
    s = report.slos[0]
    charts = dict(chart_figures(report, s))
    uptime, requests = charts["Uptime per day (minutes up)"], charts["Requests succeeded per day"]
    assert _line_labels(uptime) == ["daily uptime", "SLA 99.5%"]
    assert _line_labels(requests) == ["daily share of requests", "objective 99.9%"]
    ys = np.asarray(uptime.axes[0].get_lines()[0].get_ydata(), dtype=float)
    drawn = list(ys[~np.isnan(ys)])
    assert drawn and all(v == 100.0 for v in drawn)  # the measure of the verdict, not of requests
    # The days stop at today: no day ahead of now is drawn or listed.
    assert [d.day for d in s.days][-1] == run.now.date().isoformat()
    assert len(s.budget_curve) == len(s.days) == run.now.day


def _line_labels(fig: Figure) -> list[str]:
    return [str(line.get_label()) for line in fig.axes[0].get_lines()]


def test_partial_period_lists_no_day_ahead(run: Run) -> None:
    rows = list(csv.DictReader((run.dir / "now.csv").open()))
    assert rows and {r["day"] for r in rows} <= {
        (run.now.date().replace(day=1) + timedelta(days=i)).isoformat() for i in range(run.now.day)
    }
    appendix = _text(run.dir / "now.pdf").split("Appendix: daily figures")[1].split("Appendix: error")[0]
    days = re.findall(r"\d{4}-\d{2}-(\d{2}) ", appendix)
    assert days and int(days[-1]) == run.now.day


def test_fleet_summary_says_so_far_and_seconds(run: Run) -> None:
    text = _text(run.dir / "all/now-fleet.pdf")
    assert "1 facility: 1 met their SLA so far, 0 missed it, 0 without a result." in text
    assert "0 minutes of 36 seconds met so far (1 of 1 SLO)" in text
    assert "0.0 minutes" not in text
    index = (run.dir / "all/now-index.html").read_text()
    assert "met so far</span> (1 of 1 SLO)" in index


def test_a_latency_slo_has_slow_minutes_not_downtime(run: Run) -> None:
    text = _text(run.dir / "now.pdf")
    section = text.split("fhir-read-latency (fhir)")[1].split("Maintenance windows")[0]
    assert f"{RECENT - 1} minutes within target, 1 slow minute" in section
    assert "Periods of slow responses" in section and "Slow minutes" in section
    assert "down" not in section.lower().replace("slow, not down", "")
    assert "for a latency SLO it is a slow minute (requests were served, too slowly), never downtime" in text


def test_dates_read_as_words(run: Run) -> None:
    text = _text(run.dir / "old.pdf")
    old = date.fromisoformat(run.old + "-01")
    last = (old + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    assert f"Period {run.old}: 1 {old:%B %Y} to {last.day} {old:%B %Y} ({NEW_YORK})." in text
    assert "T00:00" not in text
    assert "SLO-minute" not in text and "Evidence (" not in text


def test_old_period_says_minute_coverage_is_not_kept(run: Run) -> None:
    text = _text(run.dir / "old.pdf")
    section = text.split("fhir-availability (fhir)")[1]
    assert "0 minutes with requests from the facility's systems" in section
    assert "this detail is no longer kept (the gateway keeps minute-level coverage for 35 days" in section
    figures = json.loads((run.dir / "old.figures.json").read_text())
    s = figures["slos"][0]
    assert s["total"] == 20_000 and s["coverage_not_kept_minutes"] > 0
    assert s["no_evidence_minutes"] + s["coverage_not_kept_minutes"] + s["traffic_minutes"] > 0


def _inside(fig: Figure) -> list[str]:
    """Every data point and every annotation of the figure's axes, checked for room: a point
    not on the plot's edge, a label wholly inside the plot and above its bar."""
    renderer = FigureCanvasAgg(fig).get_renderer()  # type: ignore[no-untyped-call]  # untyped in matplotlib
    fig.draw(renderer)
    ax = fig.axes[0]
    box = ax.get_window_extent(renderer)
    lo, hi = ax.get_ylim()
    problems = []
    for line in ax.get_lines()[:1]:
        for y in np.asarray(line.get_ydata(), dtype=float):
            if not np.isnan(y) and not lo + 0.05 * (hi - lo) <= y <= hi - 0.05 * (hi - lo):
                problems.append(f"{ax.get_title()}: point {y} at the edge of {lo}..{hi}")
    for child in ax.get_children():
        if isinstance(child, Annotation):
            ext = child.get_window_extent(renderer)
            if not (box.y0 <= ext.y0 and ext.y1 <= box.y1):
                problems.append(f"{ax.get_title()}: label {child.get_text()} outside the plot")
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    for bar, label in zip(bars, [c for c in ax.get_children() if isinstance(c, Annotation)], strict=False):
        top = ax.transData.transform((0, bar.get_y() + bar.get_height()))[1]
        if label.get_text() != "no data" and label.get_window_extent(renderer).y0 < top - 0.5:
            problems.append(f"{ax.get_title()}: label {label.get_text()} struck by its bar")
    return problems


def test_charts_leave_room_around_every_value_and_label(run: Run) -> None:
    config = load_config(run.dir / "gateway.yaml")
    (facility,) = config.facilities()
    store = Store(run.dir / "store.db", readonly=True)
    try:
        old = build_report(store, config.slos, facility, parse_period(run.old), run.now.timestamp())
        now = build_report(store, config.slos, facility, parse_period(run.current), run.now.timestamp())
    finally:
        store.close()
    shares = [d.availability for d in old.slos[0].days if d.availability is not None]
    assert [round(100 * v, 2) for v in shares] == [69.52, 81.19]
    checked = 0
    for report in (old, now):
        for s in report.slos:
            for title, fig in chart_figures(report, s):
                assert _inside(fig) == [], title
                checked += 1
    assert checked >= 8
    previous = dict(chart_figures(now, now.slos[0]))["This period beside the previous ones"]
    labels = [c.get_text() for c in previous.axes[0].get_children() if isinstance(c, Annotation)]
    both = sum(round(share * 10_000) for share in OLD_DAY_SHARE) / 20_000
    assert f"{100 * both:.3f}%" in labels  # the month two back, beside this one


async def test_html_report_reads_on_a_phone(run: Run, tmp_path: Path) -> None:
    """At 390 px every table row is a card, and no word of a table is split across two lines."""
    async with chromium(tmp_path / "profile") as browser:
        tab = await browser.new_tab()
        await tab.send(
            "Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=1, mobile=True
        )
        await tab.goto((run.dir / "now.html").as_uri())
        split = await tab.evaluate(
            """(() => {
              const out = [];
              for (const td of document.querySelectorAll('td')) {
                const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
                for (let n = walker.nextNode(); n; n = walker.nextNode()) {
                  const re = /\\S+/g; let m;
                  while ((m = re.exec(n.data))) {
                    const r = document.createRange();
                    r.setStart(n, m.index); r.setEnd(n, m.index + m[0].length);
                    const tops = new Set([...r.getClientRects()].map(x => Math.round(x.top)));
                    if (tops.size > 1) out.push(m[0]);
                  }
                }
              }
              return out;
            })()"""
        )
        assert split == []
        cards = await tab.evaluate(
            "[...document.querySelectorAll('tr')].filter(tr => tr.querySelector('td'))"
            ".map(tr => getComputedStyle(tr).display)"
        )
        assert cards and set(cards) == {"block"}
        text = await tab.text()
        assert "36 seconds" in text and "met so far" in text
        # Each value is preceded by its column's heading (drawn by CSS from data-label).
        labelled = await tab.evaluate(
            "[...document.querySelectorAll('td[data-label]')].map(td => td.dataset.label + ': ' + td.innerText)"
        )
        assert "Downtime allowed: 36 seconds" in labelled and "Result: met so far" in labelled
        await tab.screenshot(tmp_path / "phone.png", 390, 844, mobile=True)
        assert (tmp_path / "phone.png").stat().st_size > 0
