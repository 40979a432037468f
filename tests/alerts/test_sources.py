"""``sources:`` in the generated rules, judged by promtool: an SLO counts client traffic, the
gateway's probes (route ``probe {template}``), or both."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests import slos
from tests.support.cli import vitalgate
from tests.support.gateway import gateway_config
from tests.support.services import require_binary

METRIC = "http_server_request_duration_seconds_count"


def _series(route: str, status: int) -> str:
    return (
        f'{METRIC}{{facility="st-marys", service="fhir", instance="a", http_request_method="GET",'
        f' http_route="{route}", http_response_status_code="{status}"}}'
    )


@pytest.mark.slow
def test_each_slo_counts_its_sources(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    cfg = gateway_config(
        tmp_path,
        1,
        slos=[
            slos.availability("both"),
            slos.availability("traffic", sources=["traffic"]),
            slos.availability("probes", sources=["probe"]),
            {
                **slos.availability("probed-reads", sources=["probe"]),
                "filter": {"routes": ["/fhir/metadata"]},
            },
        ],
    )
    out = tmp_path / "out"
    vitalgate("alerts", "generate", "--config", str(cfg), "--out", str(out), timeout=60)
    # 15 s scrapes for 10 minutes: clients 4 good requests a scrape; probes 1 failing a scrape.
    inputs = [
        {"series": _series("/fhir/Patient/{id}", 200), "values": "0+4x40"},
        {"series": _series("probe /fhir/metadata", 502), "values": "0+1x40"},
        {"series": _series("probe /fhir/Patient/{id}", 200), "values": "0+1x40"},
    ]
    # Over the last 5 minutes (20 scrapes): 80 client requests, 20 failed and 20 good probes.
    expected = {"both": (120, 20 / 120), "traffic": (80, 0.0), "probes": (40, 0.5), "probed-reads": (20, 1.0)}
    checks = []
    for slo, (total, error) in expected.items():
        sel = f'facility="st-marys", service="fhir", slo="{slo}"'
        for name, value in (
            (f"slo:requests:increase5m{{{sel}}}", total),
            (f"slo:sli_error:ratio_rate5m{{{sel}}}", error),
        ):
            checks.append(
                {"expr": name, "eval_time": "10m", "exp_samples": [{"labels": name, "value": value}]}
            )
    test_file = out / "sources.yaml"
    groups = [g["name"] for g in yaml.safe_load((out / "rules.yaml").read_text())["groups"]]
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": "1m",
                "group_eval_order": groups,
                "tests": [{"interval": "15s", "input_series": inputs, "promql_expr_test": checks}],
            },
            sort_keys=False,
        )
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
