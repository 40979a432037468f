"""Latency by route from the store: percentiles estimated as Prometheus estimates them (judged
by promtool's own evaluation of histogram_quantile), histograms under different bucket
layouts added exactly, and the exemplars kept bounded."""

import math
import random
import subprocess
from pathlib import Path

import yaml

from slo.latency import histogram_quantile, route_latency
from slo.store import EXEMPLARS_PER_HOUR, Store, StoreWriter
from tests.support.services import require_binary

OTEL = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def test_histogram_quantile_matches_prometheus(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rng = random.Random(26)
    cases: list[list[int]] = [
        [7] + [0] * len(OTEL),  # everything in the first bucket
        [0] * len(OTEL) + [4],  # everything above the last bound
        [0, 0, 3, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 2],  # empty buckets between, some above
    ]
    cases += [[rng.choice([0, 0, 1, 3, 40]) for _ in range(len(OTEL) + 1)] for _ in range(6)]
    series, tests = [], []
    for c, counts in enumerate(cases):
        cumulative = 0
        for bound, n in zip([*map(str, OTEL), "+Inf"], counts, strict=True):
            cumulative += n
            series.append({"series": f'h_bucket{{case="{c}",le="{bound}"}}', "values": str(cumulative)})
        for q in (0.5, 0.95, 0.99):
            mine = histogram_quantile(q, OTEL, counts)
            assert mine is not None
            tests.append(
                {
                    "expr": f'histogram_quantile({q}, h_bucket{{case="{c}"}})',
                    "eval_time": "0m",
                    "exp_samples": [{"labels": f'{{case="{c}"}}', "value": mine.seconds}],
                }
            )
            assert mine.lower <= mine.seconds <= mine.upper
    spec = {
        "rule_files": [],
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    path = tmp_path / "quantiles.yml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert histogram_quantile(0.5, OTEL, [0] * (len(OTEL) + 1)) is None


def _minute(writer: StoreWriter, minute: int, route: str, status: int, counts: list[int]) -> None:
    writer.apply({(("st-marys", "fhir", route, "GET", status), minute): counts})


def test_layouts_added_exactly_and_exemplars_bounded(tmp_path: Path) -> None:
    now = 1_800_000_000 - 1_800_000_000 % 3600 + 1800
    store = Store(tmp_path / "store.db")
    # Recorded first with a 0.3 s bound (an SLO threshold), the next hour without it. (The store
    # keeps one layout per series and hour: bounds change at a restart.)
    with_slo = StoreWriter(store, [], (*OTEL[:7], 0.3, *OTEL[7:]))
    plain = StoreWriter(store, [], OTEL)
    counts_with = [0] * 16
    counts_with[7] = 4  # (0.25, 0.3]
    counts_with[8] = 2  # (0.3, 0.5]
    _minute(with_slo, now - 3000, "/fhir/Patient/{id}", 200, counts_with)  # the hour before
    counts_plain = [0] * 15
    counts_plain[0] = 10
    _minute(plain, now - 60, "/fhir/Patient/{id}", 200, counts_plain)
    _minute(plain, now - 60, "/fhir/Patient/{id}", 503, [0] * 14 + [1])
    _minute(plain, now - 7200, "/fhir/Patient/{id}", 200, counts_plain)  # outside the last hour
    many = [(0.1 + i / 100, float(now - 120 + i), f"{i:032x}", i % 2 == 0) for i in range(12)]
    key = ("st-marys", "fhir", "/fhir/Patient/{id}", "GET", 200)
    plain.apply({(key, now - 120): [0] * 15}, exemplars={(key, now - 120): many[:7]})
    plain.apply({(key, now - 120): [0] * 15}, exemplars={(key, now - 120): many[7:]})
    view = route_latency(store, "st-marys", "1h", now)
    (row,) = view.routes
    assert view.bounds_s == OTEL  # the bounds both layouts have
    assert (row.requests, row.errors) == (17, 1)
    p50, p99 = row.percentiles["p50"], row.percentiles["p99"]
    assert p50 is not None and (p50.lower, p50.upper) == (0.0, 0.005)  # 10 of 17 in the first bucket
    assert p99 is not None and p99.above_last_bound and p99.seconds == 10.0
    assert len(row.slowest) == EXEMPLARS_PER_HOUR  # the store kept the slowest five of twelve
    assert [s.trace_id for s in row.slowest] == [f"{i:032x}" for i in (11, 10, 9, 8, 7)]
    assert [s.sampled for s in row.slowest] == [False, True, False, True, False]
    day = route_latency(store, "st-marys", "1d", now)
    assert day.routes[0].requests == 27
    # Retention: exemplars go with the raw minutes.
    store.compact_and_purge(now + 40 * 86400, minute_days=35)
    assert route_latency(store, "st-marys", "1w", now).routes == ()
    assert store.db.execute("SELECT count(*) FROM exemplars").fetchone()[0] == 0
    assert math.isinf(p99.upper)
    store.close()
