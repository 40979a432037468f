"""A quiet facility's upstream goes down: on a real Prometheus evaluating the generated rules,
the probes make its SLO burn and page, VitalgateProbesFailingWithoutTraffic fires, and
SLOMetricsAbsent (the gateway's metrics are there) does not.

Windows are shortened 60x by the generator's test-only --time-scale (1h becomes 1 minute)."""

from __future__ import annotations

import time
from pathlib import Path

from tests import slos
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.services import PrometheusProcess, firing
from tests.support.waiting import wait_until


def test_probes_page_for_a_quiet_facility_whose_upstream_is_down(
    tmp_path: Path, peers: BackgroundPeers
) -> None:
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        slos=slos.FHIR_AVAILABILITY,
        extra={
            "probes": [{"upstream": "fhir", "interval": "1s", "timeout": "2s", "facilities": ["st-marys"]}]
        },
    )
    out = tmp_path / "generated"
    vitalgate("alerts", "generate", "--config", str(cfg), "--out", str(out), "--time-scale", "60")
    gw = GatewayProcess(cfg)
    prom = PrometheusProcess(tmp_path, [gw.admin.removeprefix("http://")], rule_files=[out / "rules.yaml"])
    try:
        wait_until(lambda: bool(prom.query("vitalgate_probe_success == 1")), "a probe succeeds", timeout_s=30)
        peers.run(peers.upstream.stop())  # down, and no client is calling
        wait_until(
            lambda: bool(firing(prom, "ErrorBudgetBurn", facility="st-marys", severity="page")),
            "the SLO pages from the probes alone",
            timeout_s=120,
        )
        wait_until(
            lambda: bool(firing(prom, "VitalgateProbesFailingWithoutTraffic", facility="st-marys")),
            "the probes' own alert",
            timeout_s=60,
        )
        time.sleep(10)  # past SLOMetricsAbsent's (scaled) for: it would have fired by now
        assert firing(prom, "SLOMetricsAbsent") == []
        assert firing(prom, "ErrorBudgetBurn", facility="riverside") == []  # nobody probes it
    finally:
        prom.stop()
        assert gw.terminate() == 0
        peers.run(peers.upstream.start())
