"""Every panel's query, answered by a real Prometheus fed by the gateway, returns data."""

import json
import threading
import time
from pathlib import Path

from dashboards.build import queries
from tests import slos
from tests.dashboards.test_generate import substitute
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import fetch
from tests.support.services import PrometheusProcess

SLOS = slos.DASHBOARDS


def test_every_panel_query_returns_data(tmp_path: Path, peers: BackgroundPeers) -> None:
    cfg = gateway_config(tmp_path, peers.upstream.port, slos=SLOS)
    gw = GatewayProcess(cfg)
    out = tmp_path / "generated"
    for cmd, extra in (("alerts", ["--time-scale", "60"]), ("dashboards", [])):
        vitalgate(cmd, "generate", "--config", str(cfg), "--out", str(out / cmd), *extra)
    prom = PrometheusProcess(
        tmp_path, [gw.admin.removeprefix("http://")], rule_files=[out / "alerts" / "rules.yaml"]
    )
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            facility = ["st-marys", "riverside", "lakeside"][i % 3]
            headers = {"X-Facility-ID": facility}
            if facility == "riverside" and i % 2:
                headers["X-Test-Fault"] = "500"  # riverside burns budget: its alerts fire
            if i % 7 == 0:
                headers |= {"X-Test-Fault": "slow", "X-Test-Sleep": "0.15"}
            path = ["/fhir/Patient/1", "/fhir/Observation", "/scheduling/appointments/3"][i % 4 % 3]
            fetch(gw.proxy + path, headers)
            i += 1
            time.sleep(0.01)  # paced traffic: about a hundred requests a second

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        models = {
            p.stem: json.loads(p.read_text()) for p in sorted((out / "dashboards" / "json").glob("*.json"))
        }
        all_queries = [
            (uid, title, substitute(expr)) for uid, m in models.items() for title, expr in queries(m)
        ]
        empty: list[tuple[str, str, str]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            empty = [(uid, title, expr) for uid, title, expr in all_queries if not prom.query(expr)]
            if not empty:
                break
            time.sleep(2)  # (between rounds: each one runs every panel's query)
    finally:
        stop.set()
        sender.join(10)
        prom.stop()
        gw.terminate()
    assert len(all_queries) > 40
    assert empty == []
