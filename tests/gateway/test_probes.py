"""Synthetic probes: through the proxy path, marked as probes everywhere, counted by the SLOs
that count them, and the evidence of a quiet facility's outage in its report."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from tests import slos
from tests.support.cli import slo_status, vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import counter_value, fetch, fetch_text, read_log
from tests.support.waiting import wait_until

SLOS = [
    slos.availability("avail"),  # traffic and probes (the default)
    slos.availability("traffic-only", sources=["traffic"]),
    slos.availability("probe-only", sources=["probe"]),
]
PROBES = [{"upstream": "fhir", "interval": "1s", "timeout": "2s", "facilities": ["st-marys", "riverside"]}]


def _probe_results(gw: GatewayProcess, result: str, facility: str) -> float:
    return counter_value(
        fetch_text(gw.admin + "/metrics"), "vitalgate_probe_requests_total", result=result, facility=facility
    )


def test_probes_are_requests_through_the_gateway_marked_as_probes(
    tmp_path: Path, peers: BackgroundPeers
) -> None:
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        peers.sink_port,
        slos=SLOS,
        extra={"probes": PROBES, "telemetry": {"store": {"path": "store.db", "flush_interval": "300ms"}}},
    )
    gw = GatewayProcess(cfg)
    try:
        wait_until(
            lambda: all(_probe_results(gw, "success", f) >= 3 for f in ("st-marys", "riverside")),
            "3 successful probes per facility",
        )
        # A client that sends the probe header is not believed (nor is the header passed on).
        assert (
            fetch(gw.proxy + "/fhir/metadata", {"X-Facility-ID": "lakeside", "X-Vitalgate-Probe": "x"}) == 200
        )

        # The status page marks the SLOs that counted nothing in the last hour (traffic-only
        # at the probed facilities) and not those the probes feed.
        def status_rows() -> dict[str, str]:
            page = fetch_text(gw.admin + "/ui/facilities/st-marys")
            return {
                re.sub(r"<[^>]+>", "", m[1]): m[0]
                for m in re.finditer(r"<tr><td[^>]*>(.*?)</td>.*?</tr>", page, re.S)
            }

        wait_until(lambda: "no data 1h" not in status_rows()["avail"], "the probes' minutes in the store")
        rows = status_rows()
        assert "no data 1h" in rows["traffic-only"] and "no data 1h" not in rows["avail"]
        # A reload without probes stops them (so the counts below hold still).
        doc = yaml.safe_load(cfg.read_text())
        del doc["probes"]
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        assert vitalgate("reload", "--config", str(cfg), check=False).returncode == 0
        time.sleep(2.5)  # longer than a probe's interval: one in flight has been recorded
        metrics = fetch_text(gw.admin + "/metrics")
        time.sleep(1.5)  # (a probe still running would be counted by now: the counts must hold still)
        hist = "http_server_request_duration_seconds_count"
        sent = counter_value(metrics, hist, http_route="probe /fhir/metadata")
        assert (
            counter_value(fetch_text(gw.admin + "/metrics"), hist, http_route="probe /fhir/metadata") == sent
        )
    finally:
        assert gw.terminate() == 0
    probes = [s for s in peers.upstream.seen if s["path_qs"] == "/fhir/metadata"]
    assert all(not any(k.lower() == "x-vitalgate-probe" for k in s["headers"]) for s in probes)
    by_facility = {
        next((v for k, v in s["headers"].items() if k.lower() == "x-facility-id"), None) for s in probes
    }
    assert by_facility == {"st-marys", "riverside", "lakeside"}  # the facility carried as configured

    log = [r for r in read_log(tmp_path / "access.log") if r["event"] == "request"]
    probe_lines = [r for r in log if r["http.route"].startswith("probe ")]
    client_lines = [r for r in log if not r["http.route"].startswith("probe ")]
    assert {r["http.route"] for r in probe_lines} == {"probe /fhir/metadata"}
    assert {r["facility"] for r in probe_lines} == {"st-marys", "riverside"}
    assert [r["facility"] for r in client_lines] == ["lakeside"]
    # The histogram: probes are their own route; the client's request is traffic.
    hist = "http_server_request_duration_seconds_count"
    assert counter_value(metrics, hist, http_route="probe /fhir/metadata") == len(probe_lines)
    assert counter_value(metrics, hist, http_route="/fhir/metadata") == 1
    # Spans: named as any request, marked as a probe.
    server = [s for s in peers.sink.spans if s.kind == "SERVER"]
    marked = [s for s in server if s.attributes.get("vitalgate.probe") is True]
    assert len(marked) == len(probe_lines) and {s.name for s in marked} == {"GET /fhir/metadata"}
    assert len(server) == len(log)


def _report(tmp_path: Path, cfg: Path, facility: str) -> dict[str, Any]:
    tz = yaml.safe_load(cfg.read_text())["facilities"]["known"][facility]["timezone"]
    period = datetime.now(ZoneInfo(tz)).strftime("%Y-%m")
    out = tmp_path / f"{facility}.html"
    vitalgate("report", "--config", str(cfg), "--facility", facility, "--period", period, "--out", str(out))
    figures = json.loads(out.with_suffix(".figures.json").read_text())
    figures["html"] = out.read_text()
    return dict(figures)


def test_an_upstream_down_at_night_burns_the_slo_from_probe_minutes(
    tmp_path: Path, peers: BackgroundPeers
) -> None:
    """No client calls st-marys; the upstream goes down: the probes fail, the SLOs that count
    probes burn, the report shows the downtime from probe minutes, and an SLO that counts
    traffic only says it has no evidence instead of 100%."""
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        slos=SLOS,
        extra={"probes": PROBES, "telemetry": {"store": {"path": "store.db", "flush_interval": "300ms"}}},
    )
    gw = GatewayProcess(cfg)
    try:
        wait_until(lambda: _probe_results(gw, "success", "st-marys") >= 2, "probes succeed")
        peers.run(peers.upstream.stop())  # the upstream goes down; nobody is calling
        wait_until(lambda: _probe_results(gw, "failure", "st-marys") >= 12, "probes fail", timeout_s=40)
        metrics = fetch_text(gw.admin + "/metrics")
        assert counter_value(metrics, "vitalgate_probe_success", facility="st-marys", upstream="fhir") == 0
    finally:  # (a clean stop flushes the store: slo status below reads every probe)
        assert gw.terminate() == 0
    peers.run(peers.upstream.start())  # (so the peers stop cleanly)

    status = slo_status(cfg)
    both, traffic, probe = (status[(name, "st-marys")] for name in ("avail", "traffic-only", "probe-only"))
    assert both["total"] == probe["total"] > 0
    assert both["good"] == probe["good"] < both["total"]  # the failed probes are bad events
    assert both["budget_remaining"] < 0 and both["alert"] != "none"  # burning
    assert traffic["total"] == 0 and traffic["sli"] is None and traffic["no_data_1h"] is True
    assert both["no_data_1h"] is False
    assert status[("avail", "lakeside")]["no_data_1h"] is True  # nothing at all there

    fig = _report(tmp_path, cfg, "st-marys")
    by_slo = {s["slo"]: s for s in fig["slos"]}
    b, t = by_slo["avail"], by_slo["traffic-only"]
    assert b["traffic_minutes"] == 0 and b["probe_only_minutes"] >= 1
    assert b["down_minutes"] >= 1 and b["availability"] < 1  # downtime from probe minutes
    assert b["insufficient_data"] is False
    assert t["insufficient_data"] is True and t["availability"] is None and t["uptime"] is None
    assert t["probe_only_minutes"] == b["probe_only_minutes"]  # the evidence exists; this SLO ignores it
    assert "insufficient data" in fig["html"] and "100.000%" not in fig["html"].split("<h2>Methods")[0]
    # A facility nobody probes or calls: no evidence at all.
    lake = {s["slo"]: s for s in _report(tmp_path, cfg, "lakeside")["slos"]}
    assert all(
        s["insufficient_data"] and s["traffic_minutes"] == s["probe_only_minutes"] == 0 for s in lake.values()
    )


def test_probe_config_errors_name_the_field(tmp_path: Path, peers: BackgroundPeers) -> None:
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        extra={
            "probes": [
                {"upstream": "nowhere"},
                {"upstream": "scheduling"},  # no kind: fhir route and no path
                {"upstream": "fhir", "facilities": ["atlantis"], "request": {"method": "POST"}},
            ]
        },
    )
    out = vitalgate("check", "--config", str(cfg), check=False)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert any("probes[0].upstream: unknown upstream 'nowhere'" in line for line in lines), lines
    assert any("probes[1].upstream: upstream 'scheduling' has no kind: fhir route" in line for line in lines)
    assert any("probes[2].facilities[0]: unknown facility 'atlantis'" in line for line in lines)
    assert any("probes[2].request.method: Input should be" in line for line in lines)
    assert all(line.startswith(f"{cfg}:") for line in lines[:-1])
