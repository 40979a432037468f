"""The ``vitalgate`` command."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from core.configfile import ConfigError
from core.conventions import ALL_FACILITIES
from gateway.audit.keys import AuditKeyError
from gateway.config import Config, GatewayConfig
from gateway.dataplane.metrics import duration_buckets_s
from gateway.diagnostics import configure as configure_diagnostics
from gateway.importer import import_file
from gateway.native import build
from reports.data import DEFAULT_PAPER, PAPERS
from slo.embedded import EmbeddedBackend, note_threshold_buckets
from slo.openslo import openslo_to_slos_yaml
from slo.prometheus import SOURCES, PrometheusBackend, PrometheusError
from slo.spec import latency_thresholds_s
from slo.status import CountsBackend, compute_status, now_utc, sort_worst_first, to_json, to_table
from slo.store import Store, StoreError, replay
from vitalgate import audit_cli
from vitalgate.config import ProductConfig, load_config

if TYPE_CHECKING:
    from vitalgate.generate import Kubernetes


def _load(path: str) -> Config[ProductConfig] | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        n = len(exc.problems)
        print(f"vitalgate: {n} problem{'s' if n != 1 else ''} in configuration", file=sys.stderr)
        return None


def _with_config(
    command: Callable[[Config[GatewayConfig], argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """A command run with its ``--config`` loaded (exit 1 with the problems when it is bad)."""

    def run(args: argparse.Namespace) -> int:
        config = _load(args.config)
        if config is None:
            return 1
        try:
            return command(config, args)
        except (AuditKeyError, ValueError) as exc:
            print(f"vitalgate: {exc}", file=sys.stderr)
            return 1

    return run


def cmd_version(args: argparse.Namespace) -> int:
    try:
        number = version("vitalgate")
    except PackageNotFoundError:
        number = "unknown (not installed)"
    info = build()
    print(f"vitalgate {number}, {info.describe()}")
    return 1 if info.stale else 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    g = config.gateway
    print(
        f"{args.config}: ok: {len(g.upstreams)} upstreams, {len(g.routes)} routes, "
        f"{len(g.facilities.known)} facilities, {len(config.slos)} SLOs"
    )
    from vitalgate.generate import unrouted_warning  # noqa: PLC0415

    warning = unrouted_warning(config)
    if warning is not None:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from gateway.roles import METRICS_DIR_ENV, Role, prepare_metrics_dir, worker_role_from_env  # noqa: PLC0415

    # Before anything imports prometheus_client (it reads the folder once, at import): a worker
    # inherited it, a supervisor makes it for itself and its workers.
    worker = worker_role_from_env()
    if worker is None and args.workers > 1:
        prepare_metrics_dir()
    from gateway.server import run  # noqa: PLC0415
    from gateway.workers import run_workers  # noqa: PLC0415
    from vitalgate.admin_pages import extend_admin  # noqa: PLC0415

    path = args.config

    def load() -> Config[ProductConfig]:
        return load_config(path)

    if worker is not None:
        index, count, port = worker
        role = Role("worker", index, count, port, os.environ[METRICS_DIR_ENV])
        return run(config, role=role, load=load)
    if args.workers > 1:
        return run_workers(config, args.config, args.workers, admin_extensions=[extend_admin], load=load)
    return run(config, admin_extensions=[extend_admin], load=load)


ADMIN_TOKEN_ENV = "VITALGATE_ADMIN_TOKEN"  # noqa: S105  (the variable's name)


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running gateway (its admin listener, from the config) to reload; the result is
    printed; exit 1 when the running config stayed in force."""
    import http.client  # noqa: PLC0415
    import json  # noqa: PLC0415
    from urllib.parse import urlsplit  # noqa: PLC0415

    config = _load(args.config)
    if config is None:
        return 1  # the gateway would refuse it too: nothing is sent
    url = args.admin_url or f"http://{config.gateway.admin.listen}"
    parts = urlsplit(url)
    headers = {"Content-Length": "0"}
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname or "127.0.0.1", parts.port, timeout=args.timeout)
    try:
        conn.request("POST", parts.path.rstrip("/") + "/api/v1/reload", headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except OSError as exc:
        print(f"vitalgate: {url}: no gateway answered: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError:
        print(f"vitalgate: {url}: HTTP {response.status}, not a reload result", file=sys.stderr)
        return 1
    if response.status not in (200, 422):
        detail = body.get("detail") or body.get("error")
        print(f"vitalgate: {url}: HTTP {response.status}: {detail}", file=sys.stderr)
        if response.status == 401:
            said = "was refused" if token else "is not set"
            print(
                f"vitalgate: {ADMIN_TOKEN_ENV} {said}: set it to an admin token with role sre "
                "(one of admin.tokens in the gateway config)",
                file=sys.stderr,
            )
        return 1
    if body.get("result") != "success":
        for error in body.get("errors", []):
            print(error, file=sys.stderr)
        print("vitalgate: reload failed; the running config stays in force", file=sys.stderr)
        return 1
    workers = f", {body['workers']} workers" if body.get("workers") else ""
    print(f"reloaded: config {body.get('sha256', '')[:12]}{workers}")
    for name in body.get("restart_required", []):
        print(f"needs a restart to change: {name}")
    return 0


def _prometheus_url(args: argparse.Namespace) -> str | None:
    """``--prometheus-url``, else $PROMETHEUS_URL; None (said on stderr) when neither is set."""
    url: str | None = args.prometheus_url or os.environ.get("PROMETHEUS_URL")
    if not url:
        print("vitalgate: this needs --prometheus-url URL (or PROMETHEUS_URL)", file=sys.stderr)
        return None
    return url


def _store(config: Config[ProductConfig], readonly: bool = True) -> Store | None:
    path = config.resolve(config.gateway.telemetry.store.path)
    try:
        return Store(path, readonly=readonly)
    except (StoreError, sqlite3.Error) as exc:
        print(f"vitalgate: store {path}: {exc}", file=sys.stderr)
        return None


def cmd_slo_status(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    facilities = config.facilities()
    if args.facility is not None and args.facility not in {f.id for f in facilities} | {ALL_FACILITIES}:
        known = ", ".join(sorted(f.id for f in facilities)) or "none"
        print(f"vitalgate: unknown facility {args.facility!r} (known: {known}, or '*')", file=sys.stderr)
        return 2
    slos = config.slos
    if args.slo:
        names = {s.name for s in slos}
        unknown = [n for n in args.slo if n not in names]
        if unknown:
            known = ", ".join(sorted(names)) or "none"
            print(f"vitalgate: unknown SLO {', '.join(map(repr, unknown))} (known: {known})", file=sys.stderr)
            return 2
        slos = [s for s in slos if s.name in args.slo]
    backend: CountsBackend
    if args.backend == "prometheus":
        url = _prometheus_url(args)
        if url is None:
            return 2
        backend = PrometheusBackend(url, source=args.source)
    else:
        path = config.resolve(config.gateway.telemetry.store.path)
        if not path.exists():
            print(
                f"vitalgate: no store at {path} yet: start the gateway, or `vitalgate store import` "
                "its access log",
                file=sys.stderr,
            )
            return 1
        store = _store(config, readonly=False)
        if store is None:
            return 1
        for key in replay(store, slos):
            print(
                f"vitalgate: {key.split('@')[0]}: replayed from the recorded history (a gateway started "
                "with this SLO keeps it current)",
                file=sys.stderr,
            )
        backend = EmbeddedBackend(store)
    try:
        rows = compute_status(slos, facilities, backend, now_utc())
    except PrometheusError as exc:
        print(f"vitalgate: {exc}", file=sys.stderr)
        return 1
    if isinstance(backend, PrometheusBackend):
        for note in backend.notes:
            print(f"vitalgate: {note}", file=sys.stderr)
    else:
        note_threshold_buckets(backend.store, slos, rows)
    if args.facility is not None:
        rows = [r for r in rows if r.facility == args.facility]
    rows = sort_worst_first(rows)
    print(to_json(rows) if args.format == "json" else to_table(rows))
    return 0


def cmd_store_import(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    path = Path(args.access_log)
    if not path.is_file():
        print(f"vitalgate: {path}: no such file", file=sys.stderr)
        return 1
    store = _store(config, readonly=False)
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


def cmd_import_openslo(args: argparse.Namespace) -> int:
    try:
        text, notes = openslo_to_slos_yaml(Path(args.file))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    for note in notes:
        print(note, file=sys.stderr)
    print(text, end="")
    return 0


def _kubernetes(args: argparse.Namespace) -> Kubernetes | None:
    """``--namespace`` and ``--label``; None (said on stderr) for a label that is not one."""
    from alerts.operator import parse_labels  # noqa: PLC0415
    from vitalgate.generate import Kubernetes  # noqa: PLC0415

    try:
        labels = parse_labels(args.label)
    except ValueError as exc:
        print(f"vitalgate: {exc}", file=sys.stderr)
        return None
    return Kubernetes(namespace=args.namespace, labels=labels)


def _kubernetes_options(
    p: argparse.ArgumentParser, formats: tuple[str, str], what: str, also: str, default_label: str = ""
) -> None:
    """``--format`` (the plain files, or also Kubernetes resources), ``--namespace`` and ``--label``."""
    p.add_argument("--format", choices=formats, default=formats[0], help=f"{formats[1]}: also {also}")
    p.add_argument("--namespace", default=None, help=f"namespace of the {what} (default: none, kubectl's)")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a label on the {what}, for the selector that must find them (repeatable){default_label}",
    )


def cmd_alerts_generate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from vitalgate.generate import unrouted_warning, write_alerts  # noqa: PLC0415

    out = Path(args.out)
    kube = None
    if args.format == "prometheus-operator":
        kube = _kubernetes(args)
        if kube is None:
            return 2
    files, n_rules = write_alerts(config, out, time_scale=args.time_scale, operator=kube)
    print(f"wrote {len(files)} files to {out}: {n_rules} rules for {len(config.slos)} SLOs")
    for f in files:
        print(f"  {f}")
    warning = unrouted_warning(config)
    if warning is not None:
        print(f"vitalgate: warning: {warning}", file=sys.stderr)
    return 0


def cmd_alerts_verify(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from alerts.verify import RulesUnavailable, loaded_groups, problems  # noqa: PLC0415
    from vitalgate.generate import rule_document  # noqa: PLC0415

    url = _prometheus_url(args)
    if url is None:
        return 1
    expected = rule_document(config, args.time_scale)["groups"]
    try:
        wrong = problems(expected, loaded_groups(url), time.time())
    except RulesUnavailable as exc:
        print(f"vitalgate: {exc}", file=sys.stderr)
        return 1
    for p in wrong:
        print(p)
    n_rules = sum(len(g["rules"]) for g in expected)
    if wrong:
        print(f"{len(wrong)} problems with the {len(expected)} groups generated from {config.path.name}")
        return 1
    print(f"{url}: all {len(expected)} groups ({n_rules} rules) loaded, evaluating and keeping up")
    return 0


def cmd_dashboards_generate(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from vitalgate.generate import write_all_dashboards  # noqa: PLC0415

    kube = None
    if args.format == "configmaps":
        kube = _kubernetes(args)
        if kube is None:
            return 2
    files = write_all_dashboards(config, Path(args.out), configmaps=kube)
    from dashboards.provisioning import GRAFANA_PROVISIONING  # noqa: PLC0415

    print(
        f"wrote {len(files)} files to {args.out}: json/ for the API (or `dashboards publish`); "
        f"provisioning/ to copy onto Grafana's {GRAFANA_PROVISIONING}/"
    )
    return 0


def cmd_dashboards_publish(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    token = os.environ.get("GRAFANA_TOKEN", "")
    if not token:
        print(
            "vitalgate: set GRAFANA_TOKEN to a Grafana service account token (Editor role)", file=sys.stderr
        )
        return 2
    from dashboards.publish import Publisher, PublishError  # noqa: PLC0415
    from vitalgate.generate import dashboards, folder_teams  # noqa: PLC0415

    built = dashboards(config)
    teams = folder_teams(config)
    publisher = Publisher(args.grafana_url, token)
    try:
        grafana_version = publisher.health()
        changes = publisher.plan(built, teams)
        print(f"Grafana {grafana_version} at {args.grafana_url}:")
        for change in changes:
            print(f"  {change}")
        todo = [c for c in changes if c.action != "unchanged"]
        if args.dry_run:
            print(f"dry run: {len(todo)} changes not made")
            return 0
        publisher.apply(built, changes, teams)
    except PublishError as exc:
        print(f"vitalgate: {exc}", file=sys.stderr)
        return 1
    print(f"published: {len(todo)} changes, {len(changes) - len(todo)} unchanged")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    from reports.data import (  # noqa: PLC0415
        PeriodError,
        ReportSource,
        StoreSource,
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
    source: ReportSource
    if args.backend == "prometheus":
        from reports.prometheus_source import PrometheusSource  # noqa: PLC0415

        url = _prometheus_url(args)
        if url is None:
            return 2
        prom = PrometheusBackend(url, source=args.source)
        source = PrometheusSource(prom)
    else:
        prom = None
        store = _store(config)
        if store is None:
            return 1
        source = StoreSource(store)
    now = now_utc()
    rows = []
    for i, facility in enumerate(chosen, 1):
        target = out if not args.all_facilities else out.with_name(f"{out.stem}-{facility.id}{out.suffix}")
        try:
            report = build_report(source, config.slos, facility, period, now)
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


def cmd_demo(args: argparse.Namespace) -> int:
    from vitalgate.demo import run_demo  # noqa: PLC0415

    return run_demo(duration_s=args.duration, out_dir=Path(args.out), rate=args.rate)


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {value!r})") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256 (got {n})")
    return n


# argparse exports no public name for the object add_subparsers returns.
Subcommands = argparse._SubParsersAction


def _gateway_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """serve, version, check and demo: running the gateway."""
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", required=True, help="gateway.yaml")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="proxy processes sharing the port with SO_REUSEPORT (default 1; about one per core)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "reload",
        help="the running gateway re-reads its config (as SIGHUP does)",
        description="Ask the running gateway to re-read its config (as SIGHUP does). When the "
        f"config has admin.tokens, set {ADMIN_TOKEN_ENV} to a token with role sre.",
        epilog=f"environment: {ADMIN_TOKEN_ENV}: the admin token sent as Authorization: Bearer",
    )
    p.add_argument(
        "--config", required=True, help="gateway.yaml (validated here first; names the admin listener)"
    )
    p.add_argument("--admin-url", default=None, help="the admin listener, if not admin.listen of the config")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the result (default 60)")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("version", help="version, and whether the request path runs compiled")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("check", help="validate gateway.yaml and the slos.yaml it names")
    p.add_argument("--config", required=True, help="gateway.yaml")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="run the gateway in front of a demo clinical upstream with traffic")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--out", default="var/demo", help="folder for config, logs and traces (default var/demo)")
    p.add_argument("--rate", type=float, default=60.0, help="requests per second in total (default 60)")
    p.set_defaults(func=cmd_demo)


def _generator_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """slo, alerts and dashboards: what the SLOs are and what is generated from them."""
    slo = sub.add_parser("slo", help="SLO status and import").add_subparsers(
        dest="slo_command", required=True, metavar="COMMAND"
    )
    p = slo.add_parser("status", help="SLIs, error budgets, burn rates and alerts per facility")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--backend",
        choices=["embedded", "prometheus"],
        default="embedded",
        help="where the counts come from: the gateway's embedded store (the default) or Prometheus",
    )
    p.add_argument("--prometheus-url", default=None, help="Prometheus base URL (or PROMETHEUS_URL)")
    p.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="prometheus backend: the rules' recorded tiles, the raw counters, or the tiles where they"
        " cover the window (auto, the default)",
    )
    p.add_argument("--format", choices=["table", "json"], default="table", help="table (the default) or JSON")
    p.add_argument("--facility", default=None, help="one facility id, or '*' for all together")
    p.add_argument("--slo", action="append", default=[], metavar="NAME", help="only this SLO (repeatable)")
    p.set_defaults(func=cmd_slo_status)
    p = slo.add_parser("import-openslo", help="print the slos.yaml equivalent of OpenSLO v1 SLOs")
    p.add_argument("file")
    p.set_defaults(func=cmd_import_openslo)

    alerts = sub.add_parser("alerts", help="Prometheus rules and Alertmanager config").add_subparsers(
        dest="alerts_command", required=True, metavar="COMMAND"
    )
    p = alerts.add_parser("generate", help="write rules, promtool unit tests and alertmanager.yml")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="folder to write into (created if need be)")
    p.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)  # tests: shrink windows
    _kubernetes_options(
        p,
        ("prometheus", "prometheus-operator"),
        "PrometheusRule and AlertmanagerConfig",
        "prometheusrule.yaml and alertmanagerconfig.yaml",
    )
    p.set_defaults(func=cmd_alerts_generate)
    p = alerts.add_parser("verify", help="whether Prometheus runs every generated rule group, without errors")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--prometheus-url", default=None, help="Prometheus (or vmalert) base URL (or PROMETHEUS_URL)"
    )
    p.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_alerts_verify)

    dash = sub.add_parser("dashboards", help="Grafana dashboards").add_subparsers(
        dest="dashboards_command", required=True, metavar="COMMAND"
    )
    p = dash.add_parser("generate", help="write dashboard JSON and Grafana provisioning files")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--out", required=True, help="folder to write json/ and provisioning/ into (created if need be)"
    )
    _kubernetes_options(
        p,
        ("files", "configmaps"),
        "ConfigMaps",
        "configmaps.yaml, a ConfigMap per dashboard for Grafana's sidecar",
        "; default grafana_dashboard=1, what the sidecar looks for",
    )
    p.set_defaults(func=cmd_dashboards_generate)
    p = dash.add_parser("publish", help="upsert the dashboards into Grafana (token from GRAFANA_TOKEN)")
    p.add_argument("--config", required=True)
    p.add_argument("--grafana-url", required=True)
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    p.set_defaults(func=cmd_dashboards_publish)


def _record_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
    """report and store: the figures the embedded store keeps and what is made of them."""
    p = sub.add_parser("report", help="uptime report for a facility and period (PDF or HTML)")
    p.add_argument("--config", required=True)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--facility")
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
    p.add_argument("--backend", choices=["embedded", "prometheus"], default="embedded")
    p.add_argument("--prometheus-url", default=None, help="Prometheus base URL (or PROMETHEUS_URL)")
    p.add_argument(
        "--source",
        choices=SOURCES,
        default="auto",
        help="prometheus backend: the rules' recorded tiles, the raw counters, or the tiles where they"
        " cover the window (auto, the default)",
    )
    p.set_defaults(func=cmd_report)

    store = sub.add_parser("store", help="the embedded store").add_subparsers(
        dest="store_command", required=True, metavar="COMMAND"
    )
    p = store.add_parser("import", help="backfill from the gateway's JSON access log (idempotent)")
    p.add_argument("--config", required=True)
    p.add_argument("--access-log", required=True)
    p.set_defaults(func=cmd_store_import)


class _VersionAction(argparse.Action):
    """``vitalgate --version``: what ``vitalgate version`` prints, with its exit status."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit (as `version`)")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        parser.exit(cmd_version(namespace))


CONFIG_HELP = "the gateway config, gateway.yaml (it names slos.yaml)"


def _complete_help(parser: argparse.ArgumentParser) -> None:
    """Every subcommand group shows COMMAND (not its internal dest) in usage and errors, and
    every ``--config`` says what it takes, whichever module added the command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if action.metavar is None:
                action.metavar = "COMMAND"
            for child in dict.fromkeys(action.choices.values()):
                _complete_help(child)
        elif "--config" in action.option_strings and not action.help:
            action.help = CONFIG_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitalgate", description="Observability and SLO reliability gateway for clinical APIs."
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _gateway_commands(sub)
    _generator_commands(sub)
    _record_commands(sub)
    audit_cli.add_commands(sub, _with_config)
    _complete_help(parser)
    return parser


SIGPIPE_EXIT = 128 + 13
"""What a command whose reader went away exits with, as ``cat`` or ``grep`` would (``| head``)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_diagnostics()  # the process's own log records: JSON lines on stderr
    try:
        code = int(args.func(args))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader closed the pipe (``| head``): no traceback, and nothing more to write. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_EXIT
    return code
