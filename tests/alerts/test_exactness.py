"""The generated rules count exactly what the scrapes saw, judged by promtool's real PromQL
engine: counter resets inside and at the edge of a tile, series born late, two replicas of a
facility, a short gap in the scrapes; a long gap (Prometheus down past its lookback), which
must not count a counter's whole life as new; and a calendar month that starts mid-test.

The expected figures come from the samples themselves (``exact``), not from PromQL.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.cli import vitalgate
from tests.support.services import require_binary

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "alerts"
STEP_S = 15
END_MIN = 60
METRIC = "http_server_request_duration_seconds"
Samples = dict[int, float]
"""Seconds since the start -> the counter's value (a missing second: no scrape)."""


def _counter(
    rate_per_step: float, born_s: int = 0, resets: tuple[int, ...] = (), gaps: tuple[range, ...] = ()
) -> Samples:
    out: Samples = {}
    value = 0.0
    for t in range(0, END_MIN * 60 + 1, STEP_S):
        if t < born_s:
            continue
        if t in resets:
            value = 0.0  # a restarted gateway: its new process counts from zero
        value += rate_per_step
        if not any(t in g for g in gaps):
            out[t] = value
    return out


def exact(samples: Samples, end_s: int, window_s: int) -> float:
    """What the scrapes saw in (end - window, end]: each increase between consecutive scrapes
    (a drop is a reset: the new value is what the new process counted), a series born inside
    the window counted from zero."""
    times = sorted(samples)
    total = 0.0
    for i, t in enumerate(times):
        if not end_s - window_s < t <= end_s:
            continue
        if i == 0:
            total += samples[t]
            continue
        prev = samples[times[i - 1]]
        total += samples[t] - prev if samples[t] >= prev else samples[t]
    return total


def _values(samples: Samples) -> str:
    return " ".join(f"{samples[t]:g}" if t in samples else "_" for t in range(0, END_MIN * 60 + 1, STEP_S))


def _series(facility: str, instance: str, status: int) -> str:
    return (
        f'{METRIC}_count{{facility="{facility}", service="fhir", instance="{instance}", '
        f'http_request_method="GET", http_route="/fhir/Patient/{{id}}", http_response_status_code="{status}"}}'
    )


SERIES: dict[str, Samples] = {
    # Two replicas; one restarts mid-tile (15 s scrapes, 1 m tiles), the other at a tile edge.
    _series("restarts", "a", 200): _counter(7, resets=(1_845,)),
    _series("restarts", "a", 500): _counter(1, born_s=2_400),
    _series("restarts", "b", 200): _counter(5, born_s=600, resets=(2_700,)),
    _series("restarts", "b", 429): _counter(2, born_s=1_200),
    # Four scrapes missed (a minute): inside Prometheus' 5-minute lookback.
    _series("gap", "a", 200): _counter(3, gaps=(range(1_800, 1_860),)),
    _series("gap", "a", 503): _counter(1, born_s=3_000),
    _series("steady", "a", 200): _counter(11),
}
LONG_GAP = _series("long-gap", "a", 200)
SERIES[LONG_GAP] = _counter(4, gaps=(range(1_200, 1_800),))  # ten minutes unscraped
BAD = {500, 503, 429}  # the golden fhir-availability SLO: 5xx and 429 are bad

# The golden scheduling-monthly SLO counts the facility's calendar month: the gateway's period
# gauge turns from November to December at 30 minutes (stale markers end the old label set, as
# when the gateway stops exporting it); only December's requests count.
MONTH_STARTS_S = 1_800
CALENDAR_SERIES: dict[str, Samples] = {
    _series("newmonth", "a", 200).replace('service="fhir"', 'service="scheduling"'): _counter(6),
    _series("newmonth", "a", 500).replace('service="fhir"', 'service="scheduling"'): _counter(
        1, born_s=2_100
    ),
}


def _period_gauge() -> list[dict[str, str]]:
    steps = range(0, END_MIN * 60 + 1, STEP_S)
    gauge = 'vitalgate_facility_period_start_seconds{{facility="newmonth", month="{}", quarter="2026-Q4"}}'
    november = " ".join("-2592000" if t < MONTH_STARTS_S else "stale" for t in steps)
    december = " ".join("_" if t < MONTH_STARTS_S else str(MONTH_STARTS_S) for t in steps)
    return [
        {"series": gauge.format("2026-11"), "values": november},
        {"series": gauge.format("2026-12"), "values": december},
    ]


def _facility_counts(end_s: int, window_s: int) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for series, samples in SERIES.items():
        facility = series.split('facility="')[1].split('"')[0]
        status = int(series.split('status_code="')[1].split('"')[0])
        n = exact(samples, end_s, window_s)
        total, bad = out.get(facility, (0.0, 0.0))
        out[facility] = (total + n, bad + (n if status in BAD else 0.0))
    return out


@pytest.mark.slow
def test_windows_count_exactly_what_the_scrapes_saw(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    out = tmp_path / "out"
    vitalgate("alerts", "generate", "--config", str(GOLDEN / "gateway.yaml"), "--out", str(out), timeout=60)
    inputs = [{"series": s, "values": _values(v)} for s, v in SERIES.items()]
    # The long gap's series was created at the start: the first tile after the gap is no birth.
    created = LONG_GAP.replace("_count{", "_created{")
    inputs.append({"series": created, "values": " ".join("0" for _ in range(0, END_MIN * 60 + 1, STEP_S))})
    inputs += [{"series": s, "values": _values(v)} for s, v in CALENDAR_SERIES.items()] + _period_gauge()
    end_s = END_MIN * 60
    checks = []
    # The month's tiles: those whose minute started in December, (30 min, 60 min].
    month_total = sum(exact(v, end_s, end_s - MONTH_STARTS_S) for v in CALENDAR_SERIES.values())
    month_bad = sum(exact(v, end_s, end_s - MONTH_STARTS_S) for k, v in CALENDAR_SERIES.items() if "500" in k)
    assert 0 < month_bad < month_total < sum(exact(v, end_s, end_s) for v in CALENDAR_SERIES.values())
    sel = 'facility="newmonth", service="scheduling", slo="scheduling-monthly"'
    for name, value in (
        (f"slo:requests:increase30d{{{sel}}}", month_total),
        (f"slo:sli_error:ratio_rate30d{{{sel}}}", month_bad / month_total),
    ):
        checks.append(
            {"expr": name, "eval_time": f"{END_MIN}m", "exp_samples": [{"labels": name, "value": value}]}
        )
    for window, window_s in (("5m", 300), ("30m", 1_800), ("1h", 3_600)):
        for facility, (seen, bad) in _facility_counts(end_s, window_s).items():
            total = seen
            if facility == "long-gap" and window_s > 1_800:
                # The jump across the gap is not seen as an increase of any tile: it is left
                # out rather than the counter's whole value being counted as new.
                samples = SERIES[LONG_GAP]
                total = seen - (samples[1_800] - samples[1_185])
                assert 0 < total < seen
            labels = {"facility": facility, "service": "fhir", "slo": "fhir-availability"}
            sel = ", ".join(f'{k}="{v}"' for k, v in labels.items())
            checks.append(
                {
                    "expr": f"slo:requests:increase{window}{{{sel}}}",
                    "eval_time": f"{END_MIN}m",
                    "exp_samples": [{"labels": f"slo:requests:increase{window}{{{sel}}}", "value": total}],
                }
            )
            checks.append(
                {
                    "expr": f"slo:sli_error:ratio_rate{window}{{{sel}}}",
                    "eval_time": f"{END_MIN}m",
                    "exp_samples": [
                        {"labels": f"slo:sli_error:ratio_rate{window}{{{sel}}}", "value": bad / total}
                    ],
                }
            )
    test_file = out / "exactness.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": "1m",
                # As written, each SLO's tiles before its -long group reads them (promtool's order
                # is otherwise random; Prometheus runs the groups on their own, the -long one
                # reading tiles at most a minute old).
                "group_eval_order": [
                    g["name"] for g in yaml.safe_load((out / "rules.yaml").read_text())["groups"]
                ],
                "tests": [{"interval": f"{STEP_S}s", "input_series": inputs, "promql_expr_test": checks}],
            },
            sort_keys=False,
        )
    )
    proc = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert len(checks) == 26


def test_the_exact_count_of_a_reset_is_what_each_process_counted() -> None:
    """The reference itself: 0, 7, 14 | reset | 7, 14 is 14 + 14 over the whole range."""
    samples = {0: 0.0, 15: 7.0, 30: 14.0, 45: 7.0, 60: 14.0}
    assert exact(samples, 60, 60) == 28.0
    assert exact(samples, 60, 30) == 14.0  # (30, 60]: 7 after the reset, then 7 more
    assert exact({600: 1.0, 615: 6.0}, 615, 60) == 6.0  # born inside: from zero
