"""Generated dashboards: golden bytes, valid PromQL, and only series that exist."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.build import queries
from tests.support.cli import vitalgate
from tests.support.services import require_binary

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CONFIG = GOLDEN / "alerts" / "gateway.yaml"  # the same config as the alert golden files

GATEWAY_SERIES = {
    "http_server_request_duration_seconds_count",
    "http_server_request_duration_seconds_bucket",
    "http_server_request_duration_seconds_sum",
    "http_server_active_requests",
    "vitalgate_telemetry_dropped_total",
    "vitalgate_cardinality_overflow_total",
    "vitalgate_facility_info",
    "vitalgate_facility_sla_ratio",
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dash") / "out"
    vitalgate("dashboards", "generate", "--config", str(CONFIG), "--out", str(out), timeout=120)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _models(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "json").glob("*.json"))}


def test_output_matches_golden_files(generated: Path) -> None:
    if os.environ.get("VITALGATE_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN / "dashboards", ignore_errors=True)
        shutil.copytree(generated, GOLDEN / "dashboards")
    assert _files(generated) == _files(GOLDEN / "dashboards")


def test_dashboards_and_folders(generated: Path) -> None:
    models = _models(generated)
    assert sorted(models) == [
        "vg-facility-lakeside",
        "vg-facility-riverside",
        "vg-facility-st-marys",
        "vg-fleet",
        "vg-latency",
        "vg-slo-fhir-availability",
        "vg-slo-fhir-read-latency",
        "vg-slo-portal-best-effort",
        "vg-slo-scheduling-monthly",
    ]
    for uid, m in models.items():
        assert m["uid"] == uid and len(uid) <= 40
        assert m["schemaVersion"] and m["panels"]
        ids = [p["id"] for p in m["panels"]]
        assert len(ids) == len(set(ids))
    facility = models["vg-facility-riverside"]
    variables = {v["name"]: v for v in facility["templating"]["list"]}
    assert set(variables) == {"datasource", "facility"}
    assert variables["facility"]["current"]["value"] == "riverside"
    slo = {v["name"]: v for v in models["vg-slo-fhir-availability"]["templating"]["list"]}
    assert slo["facility"]["multi"] is True
    assert any(t.get("exemplar") for p in models["vg-latency"]["panels"] for t in p.get("targets", []))


def _grafana_reads(provisioning: Path, kind: str) -> list[dict[str, Any]]:
    """What Grafana reads from ``<provisioning>/<kind>/``: every .yaml or .yml file directly
    in it (not in subfolders), as its provisioning documentation and config reader say."""
    folder = provisioning / kind
    return [
        yaml.safe_load(p.read_text())
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix in (".yaml", ".yml")
    ]


def test_provisioning_is_laid_out_where_grafana_looks(generated: Path) -> None:
    """Copied onto /etc/grafana/provisioning as it is, the provider finds every dashboard, in
    a folder per facility, and the datasource is read."""
    prov = generated / "provisioning"
    assert sorted(p.name for p in prov.iterdir()) == ["dashboards", "datasources"]
    (provider_doc,) = _grafana_reads(prov, "dashboards")
    (provider,) = provider_doc["providers"]
    assert provider["type"] == "file" and provider["options"]["foldersFromFilesStructure"] is True
    path = provider["options"]["path"]
    assert path.startswith("/etc/grafana/provisioning/")
    loaded = prov / Path(path).relative_to("/etc/grafana/provisioning")
    found = {p.stem: p.parent.name for p in loaded.rglob("*.json")}
    assert set(found) == set(_models(generated))
    for uid, folder in found.items():
        assert json.loads((loaded / folder / f"{uid}.json").read_text()) == _models(generated)[uid]
    assert sorted(set(found.values())) == ["Lakeside Clinic", "Riverside", "St Mary's", "vitalgate fleet"]
    (datasource_doc,) = _grafana_reads(prov, "datasources")
    assert datasource_doc["apiVersion"] == 1
    assert datasource_doc["datasources"][0]["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "tempo"}
    ]
    for yaml_file in prov.rglob("*.yaml"):
        assert "/etc/grafana/provisioning/" in yaml_file.read_text().splitlines()[1]


def substitute(expr: str) -> str:
    """Grafana variables as Grafana would fill them for one facility and every route."""
    return expr.replace("$__rate_interval", "1m").replace("$facility", "riverside").replace("$route", ".*")


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        rest = text[m.end() :].lstrip()
        if word in PROMQL_WORDS or rest.startswith("(") or re.fullmatch(r"\d.*", word):
            continue
        names.add(word)
    return names


def test_queries_name_only_exported_or_recorded_series(generated: Path) -> None:
    rules_out = generated.parent / "rules"
    vitalgate("alerts", "generate", "--config", str(CONFIG), "--out", str(rules_out))
    recorded = {
        r["record"]
        for g in yaml.safe_load((rules_out / "rules.yaml").read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }
    known = GATEWAY_SERIES | recorded | {"ALERTS"}
    seen = set()
    for uid, model in _models(generated).items():
        for title, expr in queries(model):
            names = metric_names(expr)
            assert names, (uid, title, expr)
            assert names <= known, (uid, title, names - known)
            seen |= names
    assert {"slo:period_error_budget_remaining:ratio", "http_server_request_duration_seconds_bucket"} <= seen


def test_queries_are_valid_promql(generated: Path, tmp_path: Path) -> None:
    """promtool judges every panel query, wrapped as a recording rule."""
    promtool = require_binary("promtool")
    rules = []
    for uid, model in _models(generated).items():
        for i, (_title, expr) in enumerate(queries(model)):
            rules.append({"record": f"dashboard:{uid.replace('-', '_')}:q{i}", "expr": substitute(expr)})
    assert len(rules) > 40
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def _alert_thresholds(rules_file: Path) -> set[tuple[str, str, str, float]]:
    """(slo, severity, long window, burn rate) of every burn-rate alert condition."""
    out = set()
    for group in yaml.safe_load(rules_file.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule or "severity" not in rule["labels"]:
                continue
            # Each condition: ((<long ratio>{slo} / budget) >= f) and on (facility) ((<short>
            # ...: the long window's is the one not after "on (facility) ".
            for long, slo, factor in re.findall(
                r'(?<!\(facility\) )\(\(slo:sli_error:ratio_rate(\w+)\{slo="([^"]+)"\} / [0-9.e-]+\) >= ([0-9.e+-]+)\)',
                rule["expr"],
            ):
                out.add((slo, rule["labels"]["severity"], long, float(factor)))
    return out


def _drawn_thresholds(models: dict[str, dict[str, Any]]) -> set[tuple[str, str, str, float]]:
    """(slo, severity, window, burn rate) of every threshold line on a burn-rate panel."""
    severity = {"red": "page", "orange": "ticket"}
    out = set()
    for uid, model in models.items():
        for panel in model["panels"]:
            if "Burn rate" not in panel.get("title", ""):
                continue
            for override in panel["fieldConfig"]["overrides"]:
                series = override["matcher"]["options"].strip("^$")
                name, _, long = series.rpartition(" ")
                slo = uid.removeprefix("vg-slo-") if name == ".*" else name
                for prop in override["properties"]:
                    for step in prop["value"]["steps"][1:]:
                        out.add((slo, severity[step["color"]], long, float(step["value"])))
    return out


def test_dashboards_draw_the_thresholds_the_alerts_fire_at(generated: Path, tmp_path: Path) -> None:
    """The golden config mixes a 30d 99.9%, a 28d 99%, a calendar month without pages, and a
    7d 90% SLO with its own windows (whose page is capped): every burn-rate line on every
    dashboard is a threshold an alert compares against, and every alert's threshold is drawn
    (on the facility dashboards and on its SLO's)."""
    vitalgate("alerts", "generate", "--config", str(CONFIG), "--out", str(tmp_path / "alerts"), timeout=120)
    alerts = _alert_thresholds(tmp_path / "alerts" / "rules.yaml")
    models = _models(generated)
    assert ("portal-best-effort", "page", "1h", 8.4) in alerts  # 5% of 7d in 1h, under the cap of 10
    assert not any(s == "scheduling-monthly" and sev == "page" for s, sev, _, _ in alerts)
    facility = _drawn_thresholds({k: v for k, v in models.items() if k.startswith("vg-facility-")})
    per_slo = _drawn_thresholds({k: v for k, v in models.items() if k.startswith("vg-slo-")})
    assert facility == per_slo == alerts


LONG_IDS = {
    "county-general-hospital-north-campus": "County General North",
    "county-general-hospital-north-annex": "County General Annex",
    "a" * 63: "Sixty-three",
}


@pytest.mark.slow
def test_long_facility_ids_get_unique_uids_that_every_link_names(tmp_path: Path) -> None:
    """Ids of up to 63 characters: every dashboard and folder uid fits Grafana's 40 and is
    unique (two ids sharing 35 characters included), and the links a real Prometheus renders
    (the alert's dashboard_url) and the fleet table's link column name exactly those uids."""
    config = yaml.safe_load(CONFIG.read_text())
    config["facilities"]["known"].update({fid: {"name": name} for fid, name in LONG_IDS.items()})
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(CONFIG.with_name("slos.yaml"), tmp_path / "slos.yaml")
    out = tmp_path / "dash"
    vitalgate("dashboards", "generate", "--config", str(tmp_path / "gateway.yaml"), "--out", str(out))
    vitalgate("alerts", "generate", "--config", str(tmp_path / "gateway.yaml"), "--out", str(tmp_path / "al"))
    models = _models(out)
    facility_uid = {
        m["title"].removeprefix("vitalgate: "): uid for uid, m in models.items() if "facility-" in uid
    }
    folders = {p.parent.name: p for p in (out / "provisioning" / "dashboards").rglob("*.json")}
    uids = [m["uid"] for m in models.values()]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)
    assert all(name in folders for name in LONG_IDS.values())
    by_id = {fid: facility_uid[name] for fid, name in LONG_IDS.items()}
    assert len(set(by_id.values())) == len(LONG_IDS)

    rules = yaml.safe_load((tmp_path / "al" / "rules.yaml").read_text())
    template = next(
        r["annotations"]["dashboard_url"] for g in rules["groups"] for r in g["rules"] if "alert" in r
    )
    fleet = models["vg-fleet"]
    table = next(p for p in fleet["panels"] if p.get("type") == "table")
    budget_expr = next(t["expr"] for t in table["targets"] if t["refId"] == "A")
    link = next(o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "facility")
    assert link["properties"][0]["value"][0]["url"] == "/d/${__data.fields.dashboard_uid}"
    organize = next(t for t in table["transformations"] if t["id"] == "organize")
    assert organize["options"]["excludeByName"]["dashboard_uid"] is True

    ids = [*LONG_IDS, "st-marys"]
    by_id["st-marys"] = "vg-facility-st-marys"
    probe_rules = {
        "groups": [
            {
                "name": "links",
                "rules": [
                    {
                        "alert": f"Link{i}",
                        "expr": f'label_replace(vector(1), "facility", "{fid}", "", "")',
                        "annotations": {"dashboard_url": template},
                    }
                    for i, fid in enumerate(ids)
                ],
            }
        ]
    }
    (tmp_path / "links.yaml").write_text(yaml.safe_dump(probe_rules))
    budget = "slo:period_error_budget_remaining:ratio"
    test = {
        "rule_files": ["links.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'{budget}{{facility="{fid}", slo="s", service="fhir"}}', "values": "1x5"}
                    for fid in ids
                ],
                "alert_rule_test": [
                    {
                        "alertname": f"Link{i}",
                        "eval_time": "1m",
                        "exp_alerts": [
                            {
                                "exp_labels": {"facility": fid},
                                "exp_annotations": {
                                    "dashboard_url": f"https://grafana.example.org/d/{by_id[fid]}"
                                },
                            }
                        ],
                    }
                    for i, fid in enumerate(ids)
                ],
                "promql_expr_test": [
                    {
                        "expr": budget_expr,
                        "eval_time": "1m",
                        "exp_samples": [
                            {
                                "labels": f'{budget}{{facility="{fid}", slo="s", service="fhir", '
                                f'dashboard_uid="{by_id[fid]}"}}',
                                "value": 1,
                            }
                            for fid in ids
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "links_test.yaml").write_text(yaml.safe_dump(test))
    done = subprocess.run(
        [require_binary("promtool"), "test", "rules", "links_test.yaml"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_provisioned_datasource_is_the_one_the_config_names(tmp_path: Path) -> None:
    """Name and URL of the provisioned datasource come from ``dashboards:`` (a Grafana with a
    "Prometheus" of its own, a Prometheus on another host); a URL that is not one is refused
    at its place in the file."""
    shutil.copy(CONFIG.parent / "slos.yaml", tmp_path / "slos.yaml")
    doc = yaml.safe_load(CONFIG.read_text())
    doc["dashboards"] = {
        **doc.get("dashboards", {}),
        "datasource_name": "vitalgate-prometheus",
        "datasource_url": "http://prometheus.monitoring:9090",
    }
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    vitalgate("dashboards", "generate", "--config", str(cfg), "--out", str(tmp_path / "out"), timeout=120)
    (datasource_doc,) = _grafana_reads(tmp_path / "out" / "provisioning", "datasources")
    (source,) = datasource_doc["datasources"]
    assert (source["name"], source["url"]) == ("vitalgate-prometheus", "http://prometheus.monitoring:9090")

    doc["dashboards"]["datasource_url"] = "prometheus:9090"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    run = vitalgate("check", "--config", str(cfg), check=False)
    assert run.returncode == 1
    line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1) if "datasource_url" in text)
    assert re.search(rf"gateway\.yaml:{line}:\d+: dashboards\.datasource_url: ", run.stdout + run.stderr)
