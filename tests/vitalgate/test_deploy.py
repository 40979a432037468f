"""The deployment as code, offline: every manifest of ``deploy/kubernetes`` and every generated
Kubernetes resource against the Kubernetes schemas (``kubernetes-validate``, strict: an unknown
field is an error) and the prometheus-operator CRDs' schemas (``tests/k8s``, from the npm
registry); the generated CRDs carry exactly what ``rules.yaml`` and ``alertmanager.yml`` do."""

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.cli import vitalgate
from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
GOLDEN = ROOT / "tests" / "golden" / "alerts" / "gateway.yaml"
SCHEMAS = ROOT / "tests" / "k8s"
KUBERNETES = "1.30.0"
"""The oldest Kubernetes the manifests are written for (policy/v1, seccompProfile, sizeLimit)."""
OPERATOR_GROUP = "monitoring.coreos.com/"


def _operator_errors(resources: list[dict[str, Any]]) -> dict[str, str | None]:
    """{kind/name: schema error or None} from the prometheus-operator schemas."""
    if not (SCHEMAS / "node_modules" / "@kubernetes-models").is_dir():
        if os.environ.get("VITALGATE_REQUIRE_PROMETHEUS"):
            pytest.fail("tests/k8s/node_modules missing: make test installs the schemas (npm ci)")
        pytest.skip("prometheus-operator schemas not installed (make test installs them)")
    proc = subprocess.run(
        [require_binary("node"), str(SCHEMAS / "validate.mjs")],
        input=json.dumps(resources),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {f"{r['kind']}/{r['name']}": r["error"] for r in json.loads(proc.stdout)}


def _validate(resources: list[dict[str, Any]]) -> dict[str, str | None]:
    """Every resource against its schema: {kind/name: error or None}."""
    out: dict[str, str | None] = {}
    crds = [r for r in resources if r["apiVersion"].startswith(OPERATOR_GROUP)]
    for r in resources:
        if r in crds:
            continue
        key = f"{r['kind']}/{r['metadata']['name']}"
        try:
            kubernetes_validate.validate(r, KUBERNETES, strict=True)
            out[key] = None
        except kubernetes_validate.ValidationError as exc:
            out[key] = str(exc).splitlines()[0]
    if crds:
        out |= _operator_errors(crds)
    return out


def _generate(what: str, out: Path, fmt: str, *extra: str, check: bool = True) -> Any:
    """``vitalgate <what> generate`` of the golden config in a Kubernetes format."""
    return vitalgate(
        what, "generate", "--config", str(GOLDEN), "--out", str(out), "--format", fmt, *extra, check=check
    )


def _base() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


def test_every_base_manifest_is_valid_and_the_base_is_complete() -> None:
    docs = _base()
    assert _validate(docs) == {f"{d['kind']}/{d['metadata']['name']}": None for d in docs}
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert "--workers" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]
    # Every selector finds the pods, and the ServiceMonitor scrapes the port the Service names.
    labels = pod["metadata"]["labels"]
    for d in docs:
        selector = d.get("spec", {}).get("selector")
        if selector:
            wanted = selector.get("matchLabels", selector)
            assert wanted.items() <= labels.items(), d["kind"]
    service = next(d for d in docs if d["kind"] == "Service")
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items() | {"app.kubernetes.io/name": "vitalgate"}.items()
    )
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.slow
def test_the_config_the_base_ships_is_one_the_gateway_accepts(tmp_path: Path) -> None:
    configmap = next(d for d in _base() if d["kind"] == "ConfigMap")
    for name, text in configmap["data"].items():
        (tmp_path / name).write_text(text)
    res = vitalgate("check", "--config", str(tmp_path / "gateway.yaml"), check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_validators_reject_what_the_api_server_would() -> None:
    """The checks above can fail: an unknown field, a wrong type and a bad duration are caught."""
    docs = {d["kind"]: d for d in _base()}
    deployment = json.loads(json.dumps(docs["Deployment"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    service = json.loads(json.dumps(docs["Service"]))
    service["spec"]["ports"][0]["port"] = "eighty"
    monitor = json.loads(json.dumps(docs["ServiceMonitor"]))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    errors = _validate([deployment, service, monitor])
    assert "readOnlyRootFilesytem" in str(errors["Deployment/vitalgate"])
    assert errors["Service/vitalgate"] is not None
    assert "interval" in str(errors["ServiceMonitor/vitalgate"])


@pytest.mark.slow
def test_operator_resources_carry_exactly_the_generated_rules_and_routes(tmp_path: Path) -> None:
    out = tmp_path / "alerts"
    _generate(
        "alerts",
        out,
        "prometheus-operator",
        "--namespace",
        "clinical",
        "--label",
        "release=kube-prometheus-stack",
    )
    rule = yaml.safe_load((out / "prometheusrule.yaml").read_text())
    routes = yaml.safe_load((out / "alertmanagerconfig.yaml").read_text())
    assert _validate([rule, routes]) == {
        "PrometheusRule/vitalgate-slo": None,
        "AlertmanagerConfig/vitalgate-slo": None,
    }
    for r in (rule, routes):
        assert r["metadata"]["namespace"] == "clinical"
        assert r["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load((out / "rules.yaml").read_text())["groups"]
    # What the operator would load, promtool accepts.
    spec = tmp_path / "from-crd.yaml"
    spec.write_text(yaml.safe_dump(rule["spec"]))
    check = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    am = yaml.safe_load((out / "alertmanager.yml").read_text())
    route = routes["spec"]["route"]
    assert route["receiver"] == am["route"]["receiver"]
    assert route["groupBy"] == am["route"]["group_by"]
    assert [
        (
            r["receiver"],
            [f'{m["name"]}{m["matchType"]}"{m["value"]}"' for m in r["matchers"]],
            r.get("continue", False),
        )
        for r in route["routes"]
    ] == [(r["receiver"], r["matchers"], r.get("continue", False)) for r in am["route"]["routes"]]
    assert {r["name"] for r in routes["spec"]["receivers"]} == {r["name"] for r in am["receivers"]}
    # A PagerDuty key is a Secret's key in the CRD, never the key itself.
    crd_receivers = {r["name"]: r for r in routes["spec"]["receivers"]}
    keys = [(r["name"], pd["routing_key"]) for r in am["receivers"] for pd in r.get("pagerduty_configs", [])]
    assert keys
    for name, key in keys:
        assert key not in (out / "alertmanagerconfig.yaml").read_text()
        assert crd_receivers[name]["pagerdutyConfigs"][0]["routingKey"] == {
            "name": "vitalgate-alerting",
            "key": f"{name}-routing-key",
        }


@pytest.mark.slow
def test_dashboards_as_configmaps_for_the_grafana_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "dashboards"
    _generate("dashboards", out, "configmaps")
    maps = list(yaml.safe_load_all((out / "configmaps.yaml").read_text()))
    assert _validate(maps) == {f"ConfigMap/{m['metadata']['name']}": None for m in maps}
    files = sorted((out / "json").glob("*.json"))
    assert len(maps) == len(files) > 1
    by_key = {k: v for m in maps for k, v in m["data"].items()}
    for f in files:
        assert by_key[f.name] == f.read_text()
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["annotations"]["grafana_folder"]
    bad = _generate("dashboards", out, "configmaps", "--label", "not a label", check=False)
    assert bad.returncode == 2 and "--label 'not a label'" in bad.stderr
