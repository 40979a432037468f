"""The Prometheus backend against a real Prometheus scraping two gateway replicas."""

import json
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests import slos
from tests.support.cli import slo_status, vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import assert_period_gauges, fetch, fetch_text
from tests.support.services import PrometheusProcess, VictoriaMetricsProcess, VmagentProcess, VmalertProcess
from tests.support.waiting import wait_until
from vitalgate.peers import free_port

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
def test_prometheus_totals_equal_requests_sent_to_both_replicas(
    tmp_path: Path, store: str, peers: BackgroundPeers
) -> None:
    """The same figures from Prometheus and from VictoriaMetrics (a long-term store speaking
    the Prometheus query API, fed by vmagent), scraping the same two replicas, as their
    embedded stores; from the rules' tiles (Prometheus' own, or vmalert's) as from the raw
    counters."""
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
    # The generated rules, their tiles shrunk from a minute to 5 s so that the test need not
    # wait minutes for them: what slo status and the report sum is tiles, whatever their step.
    rules = tmp_path / "rules"
    vitalgate(
        "alerts", "generate", "--config", str(replicas[0][0]), "--out", str(rules), "--time-scale", "12"
    )
    prom: PrometheusProcess | VictoriaMetricsProcess
    vmalert: VmalertProcess | None = None
    vmagent: VmagentProcess | None = None
    if store == "prometheus":
        prom = PrometheusProcess(tmp_path, targets, rule_files=[rules / "rules.yaml"])
    else:
        # Two replicas scraped by vmagent, which remote-writes into VictoriaMetrics.
        prom = VictoriaMetricsProcess(tmp_path, [])
        vmagent = VmagentProcess(tmp_path, targets, prom.url)
        vmalert = VmalertProcess(
            tmp_path, [rules / "rules.yaml"], prom.url, f"127.0.0.1:{free_port()}", lookback_s=10
        )
    try:
        # A tile counts what happened in its own step: the rules run before the traffic starts.
        rules_api = prom.url if vmalert is None else vmalert.url
        verify = ("alerts", "verify", "--config", str(replicas[0][0]), "--time-scale", "12")
        wait_until(
            lambda: vitalgate(*verify, "--prometheus-url", rules_api, check=False).returncode == 0,
            "every rule group evaluated",
            timeout_s=30,
        )
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
        def scraped() -> float:
            res = prom.query("sum(http_server_request_duration_seconds_count)")
            return float(res[0]["value"][1]) if res else 0.0

        wait_until(lambda: scraped() == 240, "every request scraped from both replicas", timeout_s=30)
        time.sleep(2)  # a few more scrapes with no new traffic (what the tiles' windows then hold)
        assert_period_gauges(fetch_text(replicas[0][1].admin + "/metrics"))

        # Every SLO's tiles have counted every request, and every good one.
        def tiled() -> dict[tuple[str, str, str], float]:
            out = {}
            for tile in ("slo:requests:tile1m", "slo:good_requests:tile1m"):
                for r in prom.query(f"sum by (slo, facility) (sum_over_time({tile}[10m]))"):
                    out[(tile, r["metric"]["slo"], r["metric"]["facility"])] = float(r["value"][1])
            return out

        every = {("slo:requests:tile1m", s["name"], f): float(n) for s in SLOS for f, n in sent.items()}
        for f, n in sent.items():
            every[("slo:good_requests:tile1m", "avail", f)] = every[
                ("slo:good_requests:tile1m", "monthly", f)
            ] = float(n - bad[f])
            every[("slo:good_requests:tile1m", "fast", f)] = float(n - slow[f])
        try:
            wait_until(lambda: tiled() == every, "the rules' tiles counting every request", timeout_s=30)
        except AssertionError:
            assert tiled() == every  # which tiles miss what
            raise
        via_prom = slo_status(replicas[0][0], "--backend", "prometheus", "--prometheus-url", prom.url)
        via_raw = slo_status(
            replicas[0][0], "--backend", "prometheus", "--prometheus-url", prom.url, "--source", "raw"
        )
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
        # A gateway whose status API and pages read the same Prometheus: every replica can
        # serve the fleet's figures, not only its own store's.
        viewer_dir = tmp_path / "viewer"
        viewer_dir.mkdir()
        viewer_cfg = gateway_config(
            viewer_dir,
            peers.upstream.port,
            slos=SLOS,
            extra={"admin": {"status_source": {"prometheus_url": prom.url}}},
        )
        viewer = GatewayProcess(viewer_cfg)
        try:
            with urllib.request.urlopen(viewer.admin + "/api/v1/slo", timeout=60) as r:
                served = {(row["slo"], row["facility"]): row for row in json.loads(r.read())["slos"]}
            assert fetch(viewer.admin + "/ui/facilities/lakeside", timeout_s=60) == 200
            with urllib.request.urlopen(
                viewer.admin + f"/api/v1/reports/lakeside/{month}.html", timeout=120
            ) as r:
                served_report = r.read().decode()
        finally:
            assert viewer.terminate() == 0
        report_raw = report(
            replicas[0][0],
            month,
            tmp_path / "raw.html",
            "--backend",
            "prometheus",
            "--prometheus-url",
            prom.url,
            "--source",
            "raw",
        )
    finally:
        for _cfg, gw in replicas:
            assert gw.terminate() == 0
        for agent in (vmalert, vmagent):
            if agent is not None:
                agent.stop()
        prom.stop()
    stores = [slo_status(cfg) for cfg, _ in replicas]
    report_stores = [report(cfg, month, tmp_path / f"store-{i}.html") for i, (cfg, _) in enumerate(replicas)]
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
    # The rules' tiles (the default, where they cover the window) and the raw counters agree.
    figures = ("total", "good", "sli", "budget_remaining", "burn_rates", "alert")
    assert {k: {f: row[f] for f in figures} for k, row in via_prom.items()} == {
        k: {f: row[f] for f in figures} for k, row in via_raw.items()
    }
    # Per minute the two may differ (a tile goes to the clock minute most of its own minute
    # covers, a raw increase to the minute its scrapes fall in); the period's figures do not.
    period = ("slo", "total", "good", "availability")
    assert [{k: r[k] for k in period} for r in report_prom["slos"]] == [
        {k: r[k] for k in period} for r in report_raw["slos"]
    ]
    assert {k: {f: row[f] for f in figures} for k, row in served.items()} == {
        k: {f: row[f] for f in figures} for k, row in via_prom.items()
    }
    for slo_report in report_prom["slos"]:
        # (a latency SLO's good requests are those "within" its threshold)
        word = "good" if slo_report["kind"] == "availability" else "within"
        assert f"{slo_report['total']:,} requests, {slo_report['good']:,} {word}" in served_report
    # An uptime report from Prometheus counts what both replicas' stores counted, minute by minute.
    for i, slo_report in enumerate(report_prom["slos"]):
        assert slo_report["total"] == sum(r["slos"][i]["total"] for r in report_stores) == sent["lakeside"]
        assert slo_report["good"] == sum(r["slos"][i]["good"] for r in report_stores)
        assert slo_report["total"] > 0
    # Burn rates come from the same counters over the short windows.
    row = via_prom[("avail", "st-marys")]
    assert row["burn_rates"]["5m"] is not None
