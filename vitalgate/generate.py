"""Writing generated artefacts (rules, Alertmanager config) from a loaded config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts import alertmanager, rules, selfwatch, unittests
from alerts import operator as prometheus_operator
from alerts.yamlout import dump, dump_all
from dashboards.build import DashboardOptions, GeneratedDashboard, build_all, facility_folder
from dashboards.provisioning import dashboard_configmaps, write_dashboards
from gateway.config import Config
from vitalgate.config import ProductConfig


def routing(config: Config[ProductConfig]) -> alertmanager.Routing:
    a = config.gateway.alerting
    return alertmanager.Routing(
        receivers=tuple(
            alertmanager.Receiver(name, r.webhook_url, r.pagerduty_routing_key)
            for name, r in a.receivers.items()
        ),
        default_receiver=a.default_receiver,
        facility_receivers={f: tuple(r) for f, r in a.facility_receivers.items()},
        watchdog_receiver=a.watchdog_receiver,
        group_wait_s=a.group_wait,
        group_interval_s=a.group_interval,
        repeat_interval_s=a.repeat_interval,
    )


def unrouted_warning(config: Config[ProductConfig]) -> str | None:
    """Said where alerts are generated or checked when pages would reach nobody."""
    return alertmanager.unrouted_warning(routing(config))


def rule_document(config: Config[ProductConfig], time_scale: float = 1.0) -> dict[str, Any]:
    """The rules.yaml document the config generates (what ``alerts verify`` expects loaded)."""
    a = config.gateway.alerting
    opts = rules.RuleOptions(
        runbook_url=a.runbook_url,
        dashboard_url=a.dashboard_url,
        time_scale=time_scale,
        facility_ids=tuple(f.id for f in config.facilities()),
    )
    return rules.build_rules(config.slos, sorted(config.gateway.upstreams), opts)


@dataclass(frozen=True)
class Kubernetes:
    """Where generated Kubernetes resources go and how the operator or sidecar finds them."""

    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def write_alerts(
    config: Config[ProductConfig], out: Path, time_scale: float = 1.0, operator: Kubernetes | None = None
) -> tuple[list[Path], int]:
    """Write rules.yaml, alertmanager.yml and tests/<slo>.yaml, and with ``operator`` the same
    rules and routes as a PrometheusRule and an AlertmanagerConfig; returns the files and the
    rule count."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tests").mkdir(exist_ok=True)
    source = config.path.name
    doc = rule_document(config, time_scale)
    written = [out / "rules.yaml", out / "alertmanager.yml"]
    (out / "rules.yaml").write_text(rules.render(doc, source))
    (out / "alertmanager.yml").write_text(
        alertmanager.render(
            alertmanager.build_alertmanager(routing(config), time_scale), source, unrouted_warning(config)
        )
    )
    if operator is not None:
        resources = {
            "prometheusrule.yaml": prometheus_operator.prometheus_rule(
                doc, namespace=operator.namespace, labels=operator.labels
            ),
            "alertmanagerconfig.yaml": prometheus_operator.alertmanager_config(
                routing(config), namespace=operator.namespace, labels=operator.labels, time_scale=time_scale
            ),
        }
        for name, resource in resources.items():
            warning = unrouted_warning(config) if name == "alertmanagerconfig.yaml" else None
            header = rules.HEADER.format(source=source) + alertmanager.warning_comment(warning)
            (out / name).write_text(header + dump(resource))
            written.append(out / name)
    if time_scale == 1.0:  # unit tests assume real windows
        for slo in config.slos:
            path = out / "tests" / f"{slo.name}.yaml"
            path.write_text(unittests.render(unittests.build_tests(slo, "../rules.yaml"), source))
            written.append(path)
        path = out / "tests" / "vitalgate-self.yaml"
        path.write_text(selfwatch.render_tests(selfwatch.build_self_tests("../rules.yaml"), source))
        written.append(path)
    return written, rules.rule_count(doc)


def dashboard_options(config: Config[ProductConfig]) -> DashboardOptions:
    d = config.gateway.dashboards
    return DashboardOptions(
        datasource_uid=d.datasource_uid,
        trace_datasource_uid=d.trace_datasource_uid,
        datasource_name=d.datasource_name,
        datasource_url=d.datasource_url,
    )


def dashboards(config: Config[ProductConfig]) -> list[GeneratedDashboard]:
    return build_all(config.slos, config.facilities(), dashboard_options(config))


def folder_teams(config: Config[ProductConfig]) -> dict[str, str]:
    """Folder uid -> team, for the facilities that have one."""
    by_id = {f.id: f for f in config.facilities()}
    return {
        facility_folder(by_id[fid])[1]: team for fid, team in config.gateway.dashboards.folder_teams.items()
    }


def write_all_dashboards(
    config: Config[ProductConfig], out: Path, configmaps: Kubernetes | None = None
) -> list[Path]:
    written = write_dashboards(dashboards(config), out, dashboard_options(config))
    if configmaps is not None:
        path = out / "configmaps.yaml"
        maps = dashboard_configmaps(dashboards(config), configmaps.namespace, configmaps.labels)
        path.write_text(
            f"# Generated by `vitalgate dashboards generate` from {config.path.name}: the dashboards as\n"
            "# ConfigMaps for Grafana's dashboard sidecar. Do not edit.\n" + dump_all(maps)
        )
        written.append(path)
    return written
