"""`promtool test rules` files for the generated rules: per SLO, synthetic traffic in the
gateway's own label schema that must fire and must not fire.

Facilities in every test: ``burning`` (errors at 50x the budget, capped at a total
outage), ``healthy`` (no errors), ``trickle`` (every request fails, but fewer than
``min_events`` an hour: no page), ``idle`` (no traffic: no NaN-driven alert).
The expected alerts are worked out here from the same window table.
"""

from __future__ import annotations

from typing import Any

from alerts.yamlout import dump
from core import conventions as names
from slo import promql
from slo.spec import Slo
from slo.windows import fires

EVAL_MIN = 90
PER_MIN = 600


def _labels(slo: Slo, facility: str, status: int) -> dict[str, str]:
    return {
        names.FACILITY: facility,
        names.SERVICE: slo.service,
        names.ROUTE: slo.routes[0] if slo.routes else "/fhir/Patient/{id}",
        names.METHOD: slo.methods[0] if slo.methods else "GET",
        names.STATUS: str(status),
    }


def _series(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


def _counter(per_min: float) -> str:
    return f"0+{per_min:g}x{EVAL_MIN + 10}"


def bad_fraction(slo: Slo) -> float:
    return min(1.0, 50 * slo.error_budget)


def expected_severities(slo: Slo) -> list[str]:
    """What fires for ``burning`` at EVAL_MIN: every window then holds the same error ratio."""
    burn = bad_fraction(slo) / slo.error_budget
    out: list[str] = []
    for severity in ("page", "ticket"):
        if any(w.severity == severity and fires(burn, slo.burn_threshold(w)) for w in slo.alerting_windows):
            out.append(severity)
    return out


def _traffic(slo: Slo, facility: str, per_min: float, bad: float) -> list[dict[str, str]]:
    count = f"{promql.METRIC}_count"
    series = []
    if slo.kind == "latency":
        assert slo.threshold_s is not None
        lab = _labels(slo, facility, 200)
        series.append({"series": _series(count, lab), "values": _counter(per_min)})
        series.append(
            {
                "series": _series(f"{promql.METRIC}_bucket", {**lab, "le": promql.le_label(slo.threshold_s)}),
                "values": _counter(per_min * (1 - bad)),
            }
        )
        return series
    if bad < 1:
        series.append(
            {"series": _series(count, _labels(slo, facility, 200)), "values": _counter(per_min * (1 - bad))}
        )
    if bad > 0:
        series.append(
            {"series": _series(count, _labels(slo, facility, 500)), "values": _counter(per_min * bad)}
        )
    return series


def _input_series(slo: Slo) -> list[dict[str, str]]:
    """A burning, a healthy, a trickling and an idle facility, and the burning one's name."""
    bad = bad_fraction(slo)
    return (
        _traffic(slo, "burning", PER_MIN, bad)
        + _traffic(slo, "healthy", PER_MIN, 0.0)
        # Fewer failing requests an hour than min_events (half of it): must not page.
        + (_traffic(slo, "trickle", (slo.min_events - 1) / 60 / 2, 1.0) if slo.min_events >= 2 else [])
        + [
            {
                "series": _series(f"{promql.METRIC}_count", _labels(slo, "idle", 200)),
                "values": f"0x{EVAL_MIN + 10}",
            }
        ]
        + [
            {
                "series": _series(
                    names.FACILITY_INFO, {names.FACILITY: "burning", names.FACILITY_NAME: "Burning General"}
                ),
                "values": f"1x{EVAL_MIN + 10}",
            }
        ]
    )


def build_tests(slo: Slo, rules_file: str) -> dict[str, Any]:
    inputs = _input_series(slo)
    firing = [
        {
            "labels": _series(
                "ALERTS",
                {
                    "alertname": names.ALERT_BURN,
                    "alertstate": "firing",
                    names.FACILITY: "burning",
                    names.SERVICE: slo.service,
                    "severity": sev,
                    names.SLO_LABEL: slo.name,
                },
            ),
            "value": 1,
        }
        for sev in expected_severities(slo)
    ]
    return {
        "rule_files": [rules_file],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": f"{slo.name}: only the burning facility alerts",
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    {
                        "expr": _series(
                            "ALERTS",
                            {
                                "alertname": names.ALERT_BURN,
                                names.SLO_LABEL: slo.name,
                                "alertstate": "firing",
                            },
                        ),
                        "eval_time": f"{EVAL_MIN}m",
                        "exp_samples": firing,
                    },
                    {
                        "expr": _series(
                            names.error_ratio("1h"), {names.SLO_LABEL: slo.name, names.FACILITY: "healthy"}
                        ),
                        "eval_time": f"{EVAL_MIN}m",
                        "exp_samples": [
                            {
                                "labels": _series(
                                    names.error_ratio("1h"),
                                    {
                                        names.FACILITY: "healthy",
                                        names.SERVICE: slo.service,
                                        names.SLO_LABEL: slo.name,
                                    },
                                ),
                                "value": 0,
                            }
                        ],
                    },
                    {
                        "expr": _series(
                            names.error_ratio("1h"), {names.SLO_LABEL: slo.name, names.FACILITY: "idle"}
                        ),
                        "eval_time": f"{EVAL_MIN}m",
                        "exp_samples": [],
                    },
                ],
            }
        ],
    }


def render(doc: dict[str, Any], source: str) -> str:
    header = f"# Generated by `vitalgate alerts generate` from {source}: run with `promtool test rules`.\n"
    return header + dump(doc)
