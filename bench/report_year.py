"""A year's uptime report for one facility: 5 SLOs x 365 days of minute data.

Prints the time to build the figures, render the HTML (charts) and the PDF.
The target is under 10 s for the whole report.

    python -m bench.report_year
    python -m bench.report_year --store victoria-metrics

With ``--store victoria-metrics`` the same year goes, as the gateway's counters scraped every
minute and as the rules' one-minute tiles, into a real VictoriaMetrics (Debian's package, on
loopback) through its import API, and the report is built from it twice, from the tiles and
from the raw counters (``--source recorded`` and ``raw``); each is compared with the report
from an embedded store holding the same minutes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from bench.slo_engine import SLOS_YAML
from gateway.dataplane.metrics import duration_buckets_s
from reports.data import build_report, parse_period
from reports.render import write_report
from slo.spec import Facility, Maintenance, load_slos
from slo.store import MINUTES_PER_DAY, Store, hour_rollup, pack


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--store", choices=["embedded", "victoria-metrics"], default="embedded")
    args = parser.parse_args()
    if args.store == "victoria-metrics":
        from bench.report_year_vm import run

        return run(args.year)
    tmp = Path(tempfile.mkdtemp(prefix="vitalgate-report-bench-"))
    (tmp / "slos.yaml").write_text(SLOS_YAML)
    slos = load_slos(tmp / "slos.yaml")
    tz = ZoneInfo("America/Chicago")
    facility = Facility(
        "st-marys",
        "St Mary's",
        "America/Chicago",
        0.999,
        (
            Maintenance(
                datetime(args.year, 3, 8, 1, tzinfo=tz),
                datetime(args.year, 3, 8, 3, tzinfo=tz),
                "EHR upgrade",
            ),
        ),
    )
    store = Store(tmp / "store.db")
    rng = np.random.default_rng(11)
    d0 = int(datetime(args.year, 1, 1, tzinfo=tz).timestamp()) // 86400 - 1
    d1 = int(datetime(args.year + 1, 1, 1, tzinfo=tz).timestamp()) // 86400 + 1
    t = time.perf_counter()
    bounds = duration_buckets_s([0.3])
    sid = store.series_id(("st-marys", "fhir", "/fhir/Patient/{id}", "GET", 200))
    layout = store.layout_id(bounds)
    for day in range(d0, d1 + 1):
        rows = []
        totals = rng.poisson(30, size=MINUTES_PER_DAY).astype(np.uint32)
        bad = rng.binomial(totals, 0.0005).astype(np.uint32)
        if day % 17 == 0:  # a 20-minute outage every 17 days
            start = int(rng.integers(0, MINUTES_PER_DAY - 20))
            bad[start : start + 20] = totals[start : start + 20]
        for s in slos:
            arr = np.stack([totals, totals - bad])
            rows.append((s.key, "st-marys", day, arr, hour_rollup(arr, s.timeslice_target)))
        store.write((), rows)
        hist = np.zeros((24, len(bounds) + 1), dtype=np.uint32)
        hist[:, 2:8] = rng.integers(100, 400, size=(24, 6))
        store.db.execute("INSERT OR REPLACE INTO raw_hours VALUES (?,?,?,?)", (day, sid, layout, pack(hist)))
    print(f"populated 5 SLOs x {d1 - d0 + 1} days of minutes in {time.perf_counter() - t:.1f} s")
    period = parse_period(str(args.year))
    now = time.time()
    t0 = time.perf_counter()
    report = build_report(store, slos, facility, period, now)
    t1 = time.perf_counter()
    write_report(report, tmp / "year.html")
    t2 = time.perf_counter()
    write_report(report, tmp / "year.pdf")
    t3 = time.perf_counter()
    incidents = sum(len(s.incidents) for s in report.slos)
    print(
        f"\nyear report, {facility.name}, {period.label}: {len(slos)} SLOs, {incidents} incidents, "
        f"{len(report.slos[0].days)} days"
    )
    print(f"  figures (store -> numbers):   {t1 - t0:6.2f} s")
    print(f"  HTML with charts:             {t2 - t1:6.2f} s")
    print(f"  PDF (figures + charts again): {t3 - t2:6.2f} s")
    print(f"  figures + PDF:                {(t1 - t0) + (t3 - t2):6.2f} s   (target < 10 s)")
    print(f"  PDF size {(tmp / 'year.pdf').stat().st_size / 1e6:.1f} MB, in {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
