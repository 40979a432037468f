"""``vitalgate report`` and ``store``: the figures the embedded store keeps and what is made
of them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gateway.config import Config
from gateway.dataplane.metrics import duration_buckets_s
from gateway.importer import import_file
from reports.data import DEFAULT_PAPER, PAPERS
from slo.prometheus import SERIES_CHOICES, PrometheusBackend, PrometheusError
from slo.spec import latency_thresholds_s
from slo.status import now_utc
from vitalgate.commands import Subcommands, open_store, prometheus_url, with_config
from vitalgate.config import ProductConfig


def cmd_report(config: Config[ProductConfig], args: argparse.Namespace) -> int:
    from reports.data import (  # noqa: PLC0415
        PeriodError,
        ReportBackend,
        StoreReportBackend,
        build_report,
        paper_of,
        parse_period,
    )
    from reports.fleet import fleet_pdf, fleet_row, index_html  # noqa: PLC0415
    from reports.render import write_report  # noqa: PLC0415

    try:
        period = parse_period(args.period)
    except PeriodError as exc:
        print(f"vitalgate: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.suffix.lower() not in (".pdf", ".html"):
        print("vitalgate: --out must end in .pdf or .html", file=sys.stderr)
        return 2
    facilities = {f.id: f for f in config.facilities()}
    if args.all_facilities:
        chosen = list(facilities.values())
    elif args.facility in facilities:
        chosen = [facilities[args.facility]]
    else:
        known = ", ".join(sorted(facilities)) or "none"
        print(f"vitalgate: unknown facility {args.facility!r} (known: {known})", file=sys.stderr)
        return 2
    backend: ReportBackend
    if args.backend == "prometheus":
        from reports.prometheus_backend import PrometheusReportBackend  # noqa: PLC0415

        url = prometheus_url(args)
        if url is None:
            return 2
        prom = PrometheusBackend(url, source=args.source)
        backend = PrometheusReportBackend(prom)
    else:
        prom = None
        store = open_store(config)
        if store is None:
            return 1
        backend = StoreReportBackend(store)
    now = now_utc()
    rows = []
    for i, facility in enumerate(chosen, 1):
        target = out if not args.all_facilities else out.with_name(f"{out.stem}-{facility.id}{out.suffix}")
        try:
            report = build_report(backend, config.slos, facility, period, now)
        except PrometheusError as exc:
            print(f"vitalgate: {exc}", file=sys.stderr)
            return 1
        except PeriodError as exc:  # a period that has not begun: nothing to report
            print(f"vitalgate: {exc}", file=sys.stderr)
            return 2
        write_report(report, target, paper_of(facility, args.paper))
        rows.append(fleet_row(report, target.name))
        if args.all_facilities and sys.stdout.isatty():  # a bar only where someone watches it
            width = 30
            done = int(width * i / len(chosen))
            print(
                f"\r[{'#' * done}{'.' * (width - done)}] {i}/{len(chosen)} {facility.id:<24}",
                end="",
                flush=True,
            )
        else:
            print(f"{target}: {facility.name}, {period.label}; sha256 {report.sha256}")
    if args.all_facilities:
        generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
        fleet = out.with_name(f"{out.stem}-fleet.pdf")
        fleet.write_bytes(fleet_pdf(period.label, generated, rows, args.paper or DEFAULT_PAPER))
        index = out.with_name(f"{out.stem}-index.html")
        index.write_text(index_html(period.label, generated, rows, fleet.name), encoding="utf-8")
        if sys.stdout.isatty():
            print()
        print(f"wrote {len(chosen)} reports next to {out}; index {index}, fleet summary {fleet}")
    for note in dict.fromkeys(prom.notes if prom else []):
        print(f"vitalgate: {note}", file=sys.stderr)
    return 0


def cmd_store_import(config: Config[ProductConfig], args: argparse.Namespace) -> int:
    path = Path(args.access_log)
    if not path.is_file():
        print(f"vitalgate: {path}: no such file", file=sys.stderr)
        return 1
    store = open_store(config, readonly=False)
    if store is None:
        return 1
    bounds = duration_buckets_s(latency_thresholds_s(config.slos))
    result = import_file(store, config.slos, bounds, path)
    store.compact_and_purge(
        now_utc(),
        int(config.gateway.telemetry.store.minute_retention // 86400),
        int(config.gateway.telemetry.store.hour_retention // 86400),
    )
    store.close()
    print(
        f"{path}: imported {result.requests} requests over {result.minutes} minutes"
        + (f" ({result.first} .. {result.last})" if result.first else "")
        + (f"; skipped {result.skipped} lines that are not request records" if result.skipped else "")
    )
    return 0


def add_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """report and store: the figures the embedded store keeps and what is made of them."""
    p = sub.add_parser("report", help="uptime report for a facility and period (PDF or HTML)")
    p.add_argument("--config", required=True)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--facility", help="a facility id of the config (facilities.known)")
    who.add_argument(
        "--all-facilities",
        action="store_true",
        help="one report per facility, named after it, and an index page and a one-page fleet summary",
    )
    p.add_argument("--period", required=True, help="2026-10, 2026-Q4 or 2026")
    p.add_argument("--out", required=True, help="FILE.pdf or FILE.html (a CSV goes beside it)")
    p.add_argument(
        "--paper",
        choices=sorted(PAPERS),
        default=None,
        help=f"printed page size (default: the facility's paper in the config, else {DEFAULT_PAPER})",
    )
    p.add_argument(
        "--backend",
        choices=["embedded", "prometheus"],
        default="embedded",
        help="where the counts are read: the embedded store (default) or a Prometheus-compatible API",
    )
    p.add_argument("--prometheus-url", default=None, help="Prometheus base URL (or PROMETHEUS_URL)")
    p.add_argument(
        "--source",
        choices=SERIES_CHOICES,
        default="auto",
        help="prometheus backend: the rules' recorded tiles, the raw counters, or the tiles where they"
        " cover the window (auto, the default)",
    )
    p.set_defaults(func=with_config(cmd_report))

    store = sub.add_parser("store", help="the embedded store").add_subparsers(
        dest="store_command", required=True, metavar="COMMAND"
    )
    p = store.add_parser("import", help="backfill from the gateway's JSON access log (idempotent)")
    p.add_argument("--config", required=True)
    p.add_argument("--access-log", required=True, help="the gateway's JSON access log (one request a line)")
    p.set_defaults(func=with_config(cmd_store_import))
