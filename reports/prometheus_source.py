"""Report counts from Prometheus (``--backend prometheus``), with the same PromQL as
``slo status``: the rules' one-minute tiles where they cover the period (one series per
facility), else per-minute increases of the raw counters without extrapolation; fetched with
range queries in chunks Prometheus accepts (at most 11,000 points a query). Latency
percentiles read the raw histogram: the tiles keep counts, not buckets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from reports.data import F64, Period
from slo import conventions as names
from slo import promql
from slo.prometheus import PrometheusBackend
from slo.spec import Slo

MAX_POINTS = 10_000


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else x


class PrometheusSource:
    def __init__(self, backend: PrometheusBackend) -> None:
        self.backend = backend
        self._chosen: dict[tuple[str, int], bool] = {}
        """Per SLO and period start: whether the recorded tiles are read (one decision a period)."""

    def _per_minute(self, expr: str, start_s: int, end_s: int) -> F64:
        n = (end_s - start_s) // 60
        out = np.zeros(n)
        # The value at t is the increase over (t - 60 s, t]: minute i ends at start + 60 (i + 1).
        first = start_s + 60
        while first <= end_s:
            last = min(end_s, first + 60 * (MAX_POINTS - 1))
            for ts, value in self.backend.query_range(expr, first, last, 60):
                i = round((ts - start_s) / 60) - 1
                if 0 <= i < n:
                    out[i] += value
            first = last + 60
        return out

    def _recorded(self, slo: Slo, start_s: int, end_s: int) -> bool:
        key = (slo.name, start_s)
        if key not in self._chosen:
            self._chosen[key] = self.backend.recorded(slo, start_s, end_s)
        return self._chosen[key]

    def minutes(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]:
        sel = {names.FACILITY: facility}
        if self._recorded(slo, start_s, end_s):
            # A step takes the tiles evaluated in the minute before it: each tile counts once,
            # in the minute its rule evaluation ended.
            total = promql.summed_tiles(names.TILE_REQUESTS, slo, 60, "sum", sel)
            good = promql.summed_tiles(names.TILE_GOOD, slo, 60, "sum", sel)
        else:
            total = promql.counted(slo, sel, "sum", False, lambda s: promql.exact_increase(s, 60))
            good = promql.counted(slo, sel, "sum", True, lambda s: promql.exact_increase(s, 60))
        return self._per_minute(total, start_s, end_s), self._per_minute(good, start_s, end_s)

    def totals(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[float, float]:
        sel = {names.FACILITY: facility}
        rng = end_s - start_s
        if self._recorded(slo, start_s, end_s):
            t_expr = promql.summed_tiles(names.TILE_REQUESTS, slo, rng, "sum", sel)
            g_expr = promql.summed_tiles(names.TILE_GOOD, slo, rng, "sum", sel)
        else:
            t_expr = promql.counted(slo, sel, "sum", False, lambda s: promql.exact_increase(s, rng))
            g_expr = promql.counted(slo, sel, "sum", True, lambda s: promql.exact_increase(s, rng))
        t, g = self.backend.query(t_expr, end_s), self.backend.query(g_expr, end_s)
        return sum(t.values()), sum(g.values())

    def latency_weeks(
        self, slos: Sequence[Slo], facility: str, period: Period, tz: ZoneInfo
    ) -> dict[str, list[tuple[str, float | None, float | None, float | None]]]:
        out: dict[str, list[tuple[str, float | None, float | None, float | None]]] = {}
        monday = period.first - timedelta(days=period.first.weekday())
        for service in sorted({s.service for s in slos}):
            rows: list[tuple[str, float | None, float | None, float | None]] = []
            week = monday
            while week < period.after:
                start = int(datetime(week.year, week.month, week.day, tzinfo=tz).timestamp())
                end = start + 7 * 86400
                sel = f'{promql.METRIC}_bucket{{{names.FACILITY}="{facility}", {names.SERVICE}="{service}"}}'
                inc = f"sum by (le) ({promql.exact_increase(sel, end - start)})"
                qs = [self.backend.query(f"histogram_quantile({q}, {inc})", end) for q in (0.5, 0.95, 0.99)]
                p50, p95, p99 = (_finite(next(iter(v.values()), None)) for v in qs)
                rows.append((week.isoformat(), p50, p95, p99))
                week += timedelta(days=7)
            out[service] = rows
        return out
