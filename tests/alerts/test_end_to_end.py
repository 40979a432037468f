"""Faults at one facility page for that facility only: two gateway replicas, a real
Prometheus evaluating the generated rules, a real Alertmanager routing to webhooks.

Windows are shortened 60x by the generator's test-only --time-scale (1h becomes 1 minute)."""

import threading
import time
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests import slos
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers, Webhook
from tests.support.readers import fetch
from tests.support.services import (
    AlertmanagerProcess,
    PrometheusProcess,
    VictoriaMetricsProcess,
    VmalertProcess,
)
from tests.support.waiting import wait_until
from vitalgate.peers import free_port

SLOS = slos.FHIR_AVAILABILITY


@pytest.mark.parametrize("evaluator", ["prometheus", "vmalert"])
def test_faults_at_one_facility_page_that_facility_only(
    tmp_path: Path, evaluator: str, peers: BackgroundPeers
) -> None:
    """With Prometheus evaluating the rules, or vmalert evaluating them against VictoriaMetrics:
    alerting does not depend on one Prometheus."""
    hook = Webhook()
    hook_port = free_port()

    async def start_hook() -> web.AppRunner:
        runner = web.AppRunner(hook.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", hook_port).start()
        return runner

    hook_runner = peers.run(start_hook())
    alerting = {
        "receivers": {
            "oncall": {"webhook_url": f"http://127.0.0.1:{hook_port}/oncall"},
            "riverside-it": {"webhook_url": f"http://127.0.0.1:{hook_port}/riverside-it"},
        },
        "default_receiver": "oncall",
        "facility_receivers": {"riverside": ["riverside-it"]},
    }
    replicas = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        cfg = gateway_config(d, peers.upstream.port, slos=SLOS, extra={"alerting": alerting})
        replicas.append(GatewayProcess(cfg))
    out = tmp_path / "generated"
    vitalgate(
        "alerts",
        "generate",
        "--config",
        str(tmp_path / "a" / "gateway.yaml"),
        "--out",
        str(out),
        "--time-scale",
        "60",
    )
    am = AlertmanagerProcess(tmp_path, out / "alertmanager.yml")
    targets = [g.admin.removeprefix("http://") for g in replicas]
    vmalert: VmalertProcess | None = None
    prom: PrometheusProcess | VictoriaMetricsProcess
    if evaluator == "prometheus":
        prom = PrometheusProcess(
            tmp_path, targets, rule_files=[out / "rules.yaml"], alertmanager=f"127.0.0.1:{am.port}"
        )
    else:
        prom = VictoriaMetricsProcess(tmp_path, targets)
        vmalert = VmalertProcess(tmp_path, [out / "rules.yaml"], prom.url, f"127.0.0.1:{am.port}")
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            gw = replicas[i % 2]
            facility = ["st-marys", "riverside", "lakeside"][i % 3]
            headers = {"X-Facility-ID": facility}
            if facility == "riverside" and i > 60:
                headers["X-Test-Fault"] = "500"  # riverside's upstream starts failing
            fetch(gw.proxy + "/fhir/Patient/1", headers)
            i += 1
            time.sleep(0.02)  # paced traffic

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        wait_until(
            lambda: any(
                lab.get("alertname") == "ErrorBudgetBurn" and lab.get("severity") == "page"
                for _, lab in hook.alerts()
            ),
            "an ErrorBudgetBurn page delivered to the webhook",
            timeout_s=90,
        )
        delivered = hook.alerts()
        alerts = 'ALERTS{alertname="ErrorBudgetBurn", alertstate="firing"}'
        # vmalert writes the ALERTS series back through remote write, seconds later.
        wait_until(lambda: bool(prom.query(alerts)), "the ALERTS series stored", timeout_s=30)
        firing = prom.query(alerts)
        am_alerts = am.alerts()
        groups = vmalert.groups() if vmalert is not None else []
    finally:
        stop.set()
        sender.join(10)
        if vmalert is not None:
            vmalert.stop()
        prom.stop()
        am.stop()
        for gw in replicas:
            gw.terminate()
        peers.run(hook_runner.cleanup())

    if evaluator == "vmalert":  # every generated group loaded, and every rule evaluating cleanly
        generated = yaml.safe_load((out / "rules.yaml").read_text())["groups"]
        assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in generated)
        errors = [(r["name"], r["lastError"]) for g in groups for r in g["rules"] if r.get("lastError")]
        assert errors == []
    burn = [(receiver, lab) for receiver, lab in delivered if lab["alertname"] == "ErrorBudgetBurn"]
    assert burn, f"no ErrorBudgetBurn delivered; got {delivered}"
    # The page reached riverside's own receiver, and nothing about any other facility was sent.
    assert ("riverside-it", "page") in {(r, lab["severity"]) for r, lab in burn}
    assert {lab["facility"] for _, lab in burn} == {"riverside"}
    assert {r for r, _ in burn} == {"riverside-it"}
    assert {a["metric"]["facility"] for a in firing} == {"riverside"}
    page = next(lab for _, lab in burn if lab["severity"] == "page")
    assert (page["slo"], page["service"]) == ("fhir-availability", "fhir")
    # A ticket for the same SLO and facility, if Prometheus raised one, is inhibited by the page.
    for a in am_alerts:
        if a["labels"].get("severity") == "ticket" and a["labels"].get("facility") == "riverside":
            assert a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"], a
    # The delivered annotation names the facility as configured, not by its id.
    riverside_page = next(a for a in am_alerts if a["labels"].get("severity") == "page")
    assert "Riverside is burning its error budget" in riverside_page["annotations"]["summary"]
