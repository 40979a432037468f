"""Writing generated artefacts (rules, Alertmanager config) from a loaded config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alerts import alertmanager, rules, unittests
from dashboards.build import DashboardOptions, GeneratedDashboard, build_all, facility_folder
from dashboards.provisioning import write_dashboards
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
        group_wait_s=a.group_wait,
        group_interval_s=a.group_interval,
        repeat_interval_s=a.repeat_interval,
    )


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


def write_alerts(config: Config[ProductConfig], out: Path, time_scale: float = 1.0) -> tuple[list[Path], int]:
    """Write rules.yaml, alertmanager.yml and tests/<slo>.yaml; returns the files and the rule count."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tests").mkdir(exist_ok=True)
    source = config.path.name
    doc = rule_document(config, time_scale)
    written = [out / "rules.yaml", out / "alertmanager.yml"]
    (out / "rules.yaml").write_text(rules.render(doc, source))
    (out / "alertmanager.yml").write_text(
        alertmanager.render(alertmanager.build_alertmanager(routing(config), time_scale), source)
    )
    if time_scale == 1.0:  # unit tests assume real windows
        for slo in config.slos:
            path = out / "tests" / f"{slo.name}.yaml"
            path.write_text(unittests.render(unittests.build_tests(slo, "../rules.yaml"), source))
            written.append(path)
    return written, rules.rule_count(doc)


def dashboard_options(config: Config[ProductConfig]) -> DashboardOptions:
    d = config.gateway.dashboards
    return DashboardOptions(datasource_uid=d.datasource_uid, trace_datasource_uid=d.trace_datasource_uid)


def dashboards(config: Config[ProductConfig]) -> list[GeneratedDashboard]:
    return build_all(config.slos, config.facilities(), dashboard_options(config))


def folder_teams(config: Config[ProductConfig]) -> dict[str, str]:
    """Folder uid -> team, for the facilities that have one."""
    by_id = {f.id: f for f in config.facilities()}
    return {
        facility_folder(by_id[fid])[1]: team for fid, team in config.gateway.dashboards.folder_teams.items()
    }


def write_all_dashboards(config: Config[ProductConfig], out: Path) -> list[Path]:
    return write_dashboards(dashboards(config), out, dashboard_options(config))
