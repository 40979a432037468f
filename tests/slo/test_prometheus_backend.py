"""The Prometheus backend against a real Prometheus scraping two gateway replicas."""

import json
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import slos
from tests.helpers import (
    BackgroundPeers,
    GatewayProcess,
    PrometheusProcess,
    VictoriaMetricsProcess,
    fetch,
    gateway_config,
    slo_status,
    vitalgate,
)

SLOS = slos.PROMETHEUS


def report(config: Path, period: str, out: Path, *extra: str) -> dict[str, Any]:
    """The figures of a report for lakeside (America/Denver)."""
    vitalgate(
        "report",
        "--config",
        str(config),
        "--facility",
        "lakeside",
        "--period",
        period,
        "--out",
        str(out),
        *extra,
        timeout=300,
    )
    figures: dict[str, Any] = json.loads(out.with_suffix(".figures.json").read_text())
    return figures


@pytest.mark.parametrize("store", ["prometheus", "victoria-metrics"])
def test_prometheus_totals_equal_requests_sent_to_both_replicas(tmp_path: Path, store: str) -> None:
    """The same figures from Prometheus and from VictoriaMetrics (a long-term store speaking
    the Prometheus query API), scraping the same two replicas, as their embedded stores."""
    with BackgroundPeers() as peers:
        replicas = []
        for name in ("a", "b"):
            d = tmp_path / name
            d.mkdir()
            cfg = gateway_config(
                d,
                peers.upstream.port,
                slos=SLOS,
                extra={"telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}}},
            )
            replicas.append((cfg, GatewayProcess(cfg)))
        targets = [g.admin.removeprefix("http://") for _, g in replicas]
        prom: PrometheusProcess | VictoriaMetricsProcess = (
            PrometheusProcess(tmp_path, targets)
            if store == "prometheus"
            else VictoriaMetricsProcess(tmp_path, targets)
        )
        try:
            sent: Counter[str] = Counter()
            bad: Counter[str] = Counter()
            slow: Counter[str] = Counter()
            for i in range(240):
                _cfg, gw = replicas[i % 2]
                facility = ["st-marys", "riverside", "lakeside"][i % 3]
                headers = {"X-Facility-ID": facility}
                if i % 13 == 0:
                    headers["X-Test-Fault"] = "500"
                    bad[facility] += 1
                elif i % 19 == 0:
                    headers |= {"X-Test-Fault": "slow", "X-Test-Sleep": "0.3"}
                    slow[facility] += 1
                fetch(gw.proxy + f"/fhir/Patient/{i}", headers)
                sent[facility] += 1
            # Wait until Prometheus has scraped everything from both replicas.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                res = prom.query("sum(http_server_request_duration_seconds_count)")
                if res and float(res[0]["value"][1]) == 240:
                    break
                time.sleep(0.5)
            time.sleep(2)  # a few more scrapes with no new traffic
            via_prom = slo_status(replicas[0][0], "--backend", "prometheus", "--prometheus-url", prom.url)
            month = datetime.now(ZoneInfo("America/Denver")).strftime("%Y-%m")  # lakeside's own month
            report_prom = report(
                replicas[0][0],
                month,
                tmp_path / "prom.html",
                "--backend",
                "prometheus",
                "--prometheus-url",
                prom.url,
            )
        finally:
            for _cfg, gw in replicas:
                assert gw.terminate() == 0
            prom.stop()
        stores = [slo_status(cfg) for cfg, _ in replicas]
        report_stores = [
            report(cfg, month, tmp_path / f"store-{i}.html") for i, (cfg, _) in enumerate(replicas)
        ]
    for fac in sent:
        for slo in ("avail", "monthly"):
            assert via_prom[(slo, fac)]["total"] == sent[fac], (slo, fac)
            assert via_prom[(slo, fac)]["good"] == sent[fac] - bad[fac]
        assert via_prom[("fast", fac)]["good"] == sent[fac] - slow[fac]
        for slo in ("avail", "fast", "monthly"):
            embedded_total = sum(s[(slo, fac)]["total"] for s in stores)
            embedded_good = sum(s[(slo, fac)]["good"] for s in stores)
            assert (via_prom[(slo, fac)]["total"], via_prom[(slo, fac)]["good"]) == (
                embedded_total,
                embedded_good,
            )
    assert via_prom[("avail", "*")]["total"] == 240
    # An uptime report from Prometheus counts what both replicas' stores counted, minute by minute.
    for i, slo_report in enumerate(report_prom["slos"]):
        assert slo_report["total"] == sum(r["slos"][i]["total"] for r in report_stores) == sent["lakeside"]
        assert slo_report["good"] == sum(r["slos"][i]["good"] for r in report_stores)
        assert slo_report["total"] > 0
    # Burn rates come from the same counters over the short windows.
    row = via_prom[("avail", "st-marys")]
    assert row["burn_rates"]["5m"] is not None
