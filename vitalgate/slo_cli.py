"""``vitalgate slo``, ``alerts`` and ``dashboards``: what the SLOs are and what is generated
from them."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core.configfile import ConfigError
from core.conventions import ALL_FACILITIES
from gateway.config import Config
from slo.embedded import EmbeddedBackend, note_threshold_buckets
from slo.openslo import openslo_to_slos_yaml
from slo.prometheus import SERIES_CHOICES, PrometheusBackend, PrometheusError
from slo.status import CountsBackend, compute_status, now_utc, sort_worst_first, to_json, to_table
from slo.store import replay
from vitalgate.commands import Subcommands, open_store, prometheus_url, with_config
from vitalgate.config import ProductConfig

if TYPE_CHECKING:
    from vitalgate.generate import Kubernetes


def cmd_slo_status(config: Config[ProductConfig], args: argparse.Namespace) -> int:
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
        url = prometheus_url(args)
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
        store = open_store(config, readonly=False)
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


def cmd_alerts_generate(config: Config[ProductConfig], args: argparse.Namespace) -> int:
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


def cmd_alerts_verify(config: Config[ProductConfig], args: argparse.Namespace) -> int:
    from alerts.verify import RulesUnavailable, loaded_groups, problems  # noqa: PLC0415
    from vitalgate.generate import rule_document  # noqa: PLC0415

    url = prometheus_url(args)
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


def cmd_dashboards_generate(config: Config[ProductConfig], args: argparse.Namespace) -> int:
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


def cmd_dashboards_publish(config: Config[ProductConfig], args: argparse.Namespace) -> int:
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


def add_commands(sub: Subcommands[argparse.ArgumentParser]) -> None:
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
        choices=SERIES_CHOICES,
        default="auto",
        help="prometheus backend: the rules' recorded tiles, the raw counters, or the tiles where they"
        " cover the window (auto, the default)",
    )
    p.add_argument("--format", choices=["table", "json"], default="table", help="table (the default) or JSON")
    p.add_argument("--facility", default=None, help="one facility id, or '*' for all together")
    p.add_argument("--slo", action="append", default=[], metavar="NAME", help="only this SLO (repeatable)")
    p.set_defaults(func=with_config(cmd_slo_status))
    p = slo.add_parser("import-openslo", help="print the slos.yaml equivalent of OpenSLO v1 SLOs")
    p.add_argument("file", help="an OpenSLO v1 YAML file (kind: SLO documents and the SLIs they name)")
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
    p.set_defaults(func=with_config(cmd_alerts_generate))
    p = alerts.add_parser("verify", help="whether Prometheus runs every generated rule group, without errors")
    p.add_argument("--config", required=True)
    p.add_argument(
        "--prometheus-url", default=None, help="Prometheus (or vmalert) base URL (or PROMETHEUS_URL)"
    )
    p.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(func=with_config(cmd_alerts_verify))

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
    p.set_defaults(func=with_config(cmd_dashboards_generate))
    p = dash.add_parser("publish", help="upsert the dashboards into Grafana (token from GRAFANA_TOKEN)")
    p.add_argument("--config", required=True)
    p.add_argument("--grafana-url", required=True, help="Grafana's base URL (https://grafana.example.org)")
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    p.set_defaults(func=with_config(cmd_dashboards_publish))
