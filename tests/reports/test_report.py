"""A synthetic month with known outages, imported through `vitalgate store import`, must give
exactly the expected availability, downtime and incident times, in HTML and in PDF."""

import csv
import hashlib
import json
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from tests.support.cli import vitalgate
from tests.support.services import require_binary

# One module fixture renders a month of reports for every test here (about 20 s on a loaded
# machine): the module is left out of the developer's loop.
pytestmark = pytest.mark.slow

CHICAGO = "America/Chicago"  # local October 2026 = 2026-10-01T05:00Z .. 2026-11-01T05:00Z (CDT, UTC-5)
OUTAGES_LOCAL = [("2026-10-10T14:00", 30, 503), ("2026-10-20T02:00", 5, 500)]
MAINTENANCE = ("2026-10-25T03:00", "2026-10-25T04:00")  # errors inside it are excluded


def _line(ts: datetime, status: int) -> str:
    return json.dumps(
        {
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "event": "request",
            "trace_id": "0" * 32,
            "span_id": "0" * 16,
            "trace_flags": "01",
            "facility": "chicago",
            "service": "fhir",
            "http.route": "/fhir/Patient/{id}",
            "http.request.method": "GET",
            "http.response.status_code": status,
            "duration_ms": 12.5,
            "upstream_duration_ms": 11.0,
        }
    )


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("report")
    cfg = {
        "version": 1,
        "listen": "127.0.0.1:18080",
        "admin": {"listen": "127.0.0.1:19464"},
        "upstreams": {"fhir": {"url": "http://127.0.0.1:18081"}},
        "routes": [{"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir"}],
        "facilities": {
            "from": [{"header": "X-Facility-ID"}],
            "known": {
                "chicago": {
                    "name": "Chicago General",
                    "timezone": CHICAGO,
                    "sla": 99.9,
                    "maintenance": [
                        {"start": MAINTENANCE[0], "end": MAINTENANCE[1], "reason": "EHR upgrade"}
                    ],
                },
            },
        },
        "telemetry": {"store": {"path": "store.db"}},
        "slos": "slos.yaml",
    }
    (d / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    (d / "slos.yaml").write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "slos": [
                    {
                        "name": "fhir-availability",
                        "service": "fhir",
                        "objective": 99.5,
                        "window": {"calendar": "month"},
                        "sli": {"availability": {}},
                    },
                ],
            }
        )
    )
    bad: set[datetime] = set()
    for start, minutes, _status in OUTAGES_LOCAL:
        t0 = datetime.fromisoformat(start + "-05:00").astimezone(UTC)
        bad |= {t0 + timedelta(minutes=i) for i in range(minutes)}
    m0 = datetime.fromisoformat(MAINTENANCE[0] + "-05:00").astimezone(UTC)
    maint = {m0 + timedelta(minutes=i) for i in range(60)}
    with (d / "access.log").open("w") as f:
        # UTC October 1 00:00 (local September 30, 19:00) to UTC November 1 12:00 (local November).
        t = datetime(2026, 10, 1, 0, 0, 10, tzinfo=UTC)
        while t < datetime(2026, 11, 1, 12, 0, tzinfo=UTC):
            minute = t.replace(second=0)
            local_sept = t < datetime(2026, 10, 1, 5, tzinfo=UTC)
            status = 500 if (minute in bad or minute in maint or local_sept) else 200
            f.write(_line(t, status) + "\n")
            t += timedelta(minutes=1)
    vitalgate(
        "store",
        "import",
        "--config",
        str(d / "gateway.yaml"),
        "--access-log",
        str(d / "access.log"),
        timeout=300,
    )
    for fmt in ("html", "pdf"):
        proc = vitalgate(
            "report",
            "--config",
            str(d / "gateway.yaml"),
            "--facility",
            "chicago",
            "--period",
            "2026-10",
            "--out",
            str(d / f"chicago-2026-10.{fmt}"),
            timeout=300,
        )
        assert "sha256" in proc.stdout
    return d


# Local October: 31 days x 1440 minutes; the maintenance hour is excluded; 35 minutes were down.
TOTAL = 31 * 1440 - 60


def _text_checks(text: str) -> None:
    flat = " ".join(text.split())
    assert f"{100 * (TOTAL - 35) / TOTAL:.3f}%" in flat  # 99.922%
    assert f"{TOTAL:,} requests, {TOTAL - 35:,} good" in flat
    assert "35 minutes down" in flat
    assert "60 minutes of planned maintenance excluded" in flat
    # Local times as an account manager reads them: the end's date only when it differs.
    assert "10 October 2026 14:00 CDT 14:30 CDT 30 30" in flat
    assert "20 October 2026 02:00 CDT 02:05 CDT 5 5" in flat
    assert "25 October 2026 03:00 CDT 04:00 CDT EHR upgrade" in flat
    # Both days included; the end is never written as the next month's midnight.
    assert "Period 2026-10: 1 October 2026 to 31 October 2026 (America/Chicago)." in flat
    assert "2026-11-01T00:00" not in flat


def test_html_report_has_the_exact_figures(month: Path) -> None:
    html = (month / "chicago-2026-10.html").read_text()
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    p = Text()
    p.feed(html)
    text = " ".join(p.parts)
    _text_checks(text)
    assert html.count("data:image/png;base64,") >= 3  # charts embedded: the file stands alone
    assert 'src="http' not in html


def test_pdf_report_has_the_exact_figures(month: Path) -> None:
    pdftotext = require_binary("pdftotext")
    text = subprocess.run(
        [pdftotext, "-raw", str(month / "chicago-2026-10.pdf"), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    _text_checks(text)
    assert "Methods" in text and "no data" in text


def test_local_month_is_not_the_utc_month(month: Path) -> None:
    rows = list(csv.DictReader((month / "chicago-2026-10.csv").open()))
    assert rows[0]["day"] == "2026-10-01" and rows[-1]["day"] == "2026-10-31"
    assert len(rows) == 31
    # Local September 30 (UTC October 1, 00:00-05:00) failed; none of it is in local October's first day.
    assert rows[0]["requests"] == "1440" and rows[0]["good"] == "1440"
    # Local October 31 ends at UTC November 1, 05:00: those UTC-November minutes are counted.
    assert rows[-1]["requests"] == "1440"
    assert sum(int(r["requests"]) for r in rows) == TOTAL
    assert sum(int(r["down_minutes"]) for r in rows) == 35


def test_checksum_covers_the_figures(month: Path) -> None:
    figures = (month / "chicago-2026-10.figures.json").read_bytes()
    digest = hashlib.sha256(figures).hexdigest()
    assert digest in (month / "chicago-2026-10.html").read_text()
    data = json.loads(figures)
    assert data["slos"][0]["down_minutes"] == 35
    assert data["slos"][0]["sla_met"] is True and data["slos"][0]["objective_met"] is True
    # No SLO is marked contractual: the availability SLO is, by default, and says so.
    assert data["slos"][0]["contractual"] is True and data["contractual_marked"] is False
    assert data["sla_met"] is True and data["partial_through"] is None
    assert "every availability SLO, as none is marked" in (month / "chicago-2026-10.html").read_text()


def test_bad_period_and_facility(month: Path) -> None:
    for args, msg in (
        (["--facility", "chicago", "--period", "2026-13"], "no month 13"),
        (["--facility", "nowhere", "--period", "2026-10"], "unknown facility 'nowhere'"),
        (
            ["--facility", "chicago", "--period", "2099-03"],
            "period 2099-03 has not started: it begins 1 March 2099",
        ),
    ):
        proc = vitalgate(
            "report",
            "--config",
            str(month / "gateway.yaml"),
            *args,
            "--out",
            str(month / "x.pdf"),
            check=False,
        )
        assert proc.returncode == 2 and msg in proc.stderr, proc.stderr
    assert not (month / "x.pdf").exists()


def test_all_facilities_writes_one_report_each(month: Path, tmp_path: Path) -> None:
    proc = vitalgate(
        "report",
        "--config",
        str(month / "gateway.yaml"),
        "--all-facilities",
        "--period",
        "2026-Q4",
        "--out",
        str(tmp_path / "q4.html"),
        timeout=300,
    )
    assert (tmp_path / "q4-chicago.html").exists()
    # Redirected output: one line per report, no progress bar.
    assert "\r" not in proc.stdout and "[#" not in proc.stdout
    assert f"{tmp_path / 'q4-chicago.html'}: Chicago General, 2026-Q4; sha256 " in proc.stdout
    # The quarter may not have ended: its days stop at today (local), never listed ahead of time.
    rows = list(csv.DictReader((tmp_path / "q4-chicago.csv").open()))
    today = datetime.now(ZoneInfo(CHICAGO)).date()
    days = [date.fromisoformat(r["day"]) for r in rows]
    assert days[0] == date(2026, 10, 1) and days[-1] == min(today, date(2026, 12, 31))
    assert len(days) == (days[-1] - days[0]).days + 1
