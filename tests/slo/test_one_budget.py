"""One SLO, one error budget: the alert rules, their promtool tests, `slo status` and the uptime
report, each made by the `vitalgate` command from the same SLO, all work with the budget
``Slo.error_budget`` gives (99.5%: 0.005, not 1 - 0.995 = 0.0050000000000000044)."""

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from alerts.unittests import PER_MIN
from slo.spec import load_slos
from tests.support.cli import slo_status, vitalgate

pytestmark = pytest.mark.slow  # four `vitalgate` commands

MINUTES, PER_MINUTE, BAD = 120, 10, 6  # 1,200 requests, 6 failed: exactly the budget of 99.5%


def _line(t: float, status: int) -> str:
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return json.dumps(
        {
            "timestamp": stamp,
            "event": "request",
            "trace_id": "0" * 32,
            "span_id": "0" * 16,
            "trace_flags": "01",
            "facility": "chicago",
            "service": "fhir",
            "http.route": "/fhir/Patient/{id}",
            "http.request.method": "GET",
            "http.response.status_code": status,
            "duration_ms": 12.5,
            "upstream_duration_ms": 11.0,
        }
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The SLO, and what the command made from it: rules, promtool tests, status, report."""
    d = tmp_path_factory.mktemp("budget")
    cfg = {
        "version": 1,
        "listen": "127.0.0.1:18080",
        "admin": {"listen": "127.0.0.1:19464"},
        "upstreams": {"fhir": {"url": "http://127.0.0.1:18081"}},
        "routes": [{"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir"}],
        "facilities": {
            "from": [{"header": "X-Facility-ID"}],
            "known": {"chicago": {"name": "Chicago General", "timezone": "UTC"}},
        },
        "telemetry": {"store": {"path": "store.db"}},
        "slos": "slos.yaml",
    }
    (d / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    slo_doc = {"name": "avail", "service": "fhir", "objective": 99.5, "sli": {"availability": {}}}
    (d / "slos.yaml").write_text(yaml.safe_dump({"version": 1, "slos": [slo_doc]}))
    # The last MINUTES whole minutes, all in one month (the report's period).
    now = time.time()
    start = now - now % 60 - MINUTES * 60
    month_start = datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0).timestamp()
    if start < month_start:
        start = month_start - 60 - MINUTES * 60  # (a month just begun: the end of the last one)
    with (d / "access.log").open("w") as f:
        for i in range(MINUTES * PER_MINUTE):
            t = start + 60 * (i // PER_MINUTE) + (i % PER_MINUTE)
            f.write(_line(t, 500 if i < BAD else 200) + "\n")
    vitalgate("store", "import", "--config", str(d / "gateway.yaml"), "--access-log", str(d / "access.log"))
    vitalgate("alerts", "generate", "--config", str(d / "gateway.yaml"), "--out", str(d / "alerts"))
    period = datetime.fromtimestamp(start, UTC).strftime("%Y-%m")
    report = d / "report.html"
    vitalgate(
        "report",
        "--config",
        str(d / "gateway.yaml"),
        "--facility",
        "chicago",
        "--period",
        period,
        "--out",
        str(report),
    )
    return {
        "slo": load_slos(d / "slos.yaml")[0],
        "rules": yaml.safe_load((d / "alerts" / "rules.yaml").read_text()),
        "tests": yaml.safe_load((d / "alerts" / "tests" / "avail.yaml").read_text()),
        "status": slo_status(d / "gateway.yaml")[("avail", "chicago")],
        "report": json.loads(report.with_suffix(".figures.json").read_text()),
    }


def test_the_slo_gives_the_budget_as_written(made: dict[str, Any]) -> None:
    assert made["slo"].error_budget == 0.005
    assert 1 - made["slo"].objective != 0.005  # why it is rounded, once, in Slo


def test_the_alert_rules_divide_by_that_budget(made: dict[str, Any]) -> None:
    rules = [
        r for g in made["rules"]["groups"] for r in g["rules"] if r.get("labels", {}).get("slo") == "avail"
    ]
    recorded = {r["record"]: r["expr"] for r in rules if "record" in r}
    assert float(recorded["slo:error_budget:ratio"]) == made["slo"].error_budget
    divisors = set()
    for expr in [*recorded.values(), *(r["expr"] for r in rules if "alert" in r)]:
        divisors |= {float(x) for x in re.findall(r"/ ([0-9.e-]+)\)?", expr)}
    assert divisors == {made["slo"].error_budget}


def test_the_promtool_tests_burn_that_budget(made: dict[str, Any]) -> None:
    """The burning facility fails at 50x the budget (a quarter of its requests at 99.5%)."""
    per_min: dict[str, float] = {}
    for s in made["tests"]["tests"][0]["input_series"]:
        if 'facility="burning"' in s["series"] and "_count" in s["series"]:
            status = re.search(r'http_response_status_code="(\d+)"', s["series"])
            assert status is not None
            per_min[status.group(1)] = float(s["values"].split("+")[1].split("x")[0])
    assert per_min["500"] + per_min["200"] == PER_MIN
    assert per_min["500"] / PER_MIN == pytest.approx(50 * made["slo"].error_budget, rel=1e-12)


def test_status_and_report_spend_that_budget(made: dict[str, Any]) -> None:
    """6 failures of 1,200 requests are exactly the budget: all of it used, none left."""
    row, budget = made["status"], made["slo"].error_budget
    assert (row["total"], row["good"]) == (MINUTES * PER_MINUTE, MINUTES * PER_MINUTE - BAD)
    assert row["budget_allowed"] == pytest.approx(budget * row["total"], abs=1e-9)
    assert row["budget_remaining"] == pytest.approx(0.0, abs=1e-9)
    (report,) = made["report"]["slos"]
    assert (report["total"], report["good"]) == (row["total"], row["good"])
    assert report["budget_used"] == pytest.approx((1 - report["good"] / report["total"]) / budget, abs=1e-9)
    assert report["budget_used"] == 1.0
