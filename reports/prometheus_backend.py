"""A report's counts from Prometheus (``--backend prometheus``), with the same PromQL as
``slo status``: the rules' one-minute tiles where they cover the period (one series per
facility), else per-minute increases of the raw counters without extrapolation; fetched with
range queries in chunks Prometheus accepts (at most 11,000 points a query). Latency
percentiles read the raw histogram: the tiles keep counts, not buckets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from core import conventions as names
from reports.data import F64, Period
from slo import promql
from slo.prometheus import PrometheusBackend
from slo.spec import Slo

MAX_POINTS = 10_000
CONCURRENCY = 4
"""Range queries in flight at once (Prometheus runs 20 by default, --query.max-concurrency)."""


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else x


class PrometheusReportBackend:
    """A report's counts read from Prometheus, through the SLO package's reader."""

    def __init__(self, backend: PrometheusBackend) -> None:
        self.backend = backend
        self._chosen: dict[tuple[str, int], bool] = {}
        """Per SLO and period start: whether the recorded tiles are read (one decision a period)."""

    def _per_minute(self, expr: str, start_s: int, end_s: int, late_s: int = 0) -> F64:
        """The value at t + ``late_s`` is minute i's, the one that ends at t = start + 60 (i + 1).
        The chunks are fetched a few at a time: a year is 53 of them, and the server answers
        concurrent queries on its own cores."""
        n = (end_s - start_s) // 60
        out = np.zeros(n)
        chunks = []
        first = start_s + 60
        while first <= end_s:
            last = min(end_s, first + 60 * (MAX_POINTS - 1))
            chunks.append((first + late_s, last + late_s))
            first = last + 60
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            answers = pool.map(lambda c: self.backend.query_range_arrays(expr, c[0], c[1], 60), chunks)
            for series in answers:
                for stamps, values in series:
                    i = np.rint((stamps - late_s - start_s) / 60).astype(np.int64) - 1
                    inside = (i >= 0) & (i < n)
                    np.add.at(out, i[inside], values[inside])
        return out

    def _recorded(self, slo: Slo, start_s: int, end_s: int) -> bool:
        key = (slo.name, start_s)
        if key not in self._chosen:
            self._chosen[key] = self.backend.recorded(slo, start_s, end_s)
        return self._chosen[key]

    def minutes(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]:
        sel = {names.FACILITY: facility}
        if self._recorded(slo, start_s, end_s):
            # A step takes the tiles evaluated in the minute before it, so each tile counts once.
            # Stepping at half past, a tile goes to the clock minute most of its own minute
            # (which ends at its group's evaluation time, anywhere in the clock minute) covers.
            total = promql.summed_tiles(names.TILE_REQUESTS, slo, 60, "sum", sel)
            good = promql.summed_tiles(names.TILE_GOOD, slo, 60, "sum", sel)
            late = 30
        else:
            total = promql.counted(slo, sel, "sum", False, lambda s: promql.exact_increase(s, 60))
            good = promql.counted(slo, sel, "sum", True, lambda s: promql.exact_increase(s, 60))
            late = 0
        return self._per_minute(total, start_s, end_s, late), self._per_minute(good, start_s, end_s, late)

    def coverage(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]:
        """From the raw counters (the tiles sum traffic and probes together)."""
        sel = {names.FACILITY: facility}
        out = []
        for source in ("traffic", "probe"):
            variant = replace(slo, sources=(source,))
            expr = promql.counted(variant, sel, "sum", False, lambda s: promql.exact_increase(s, 60))
            out.append(self._per_minute(expr, start_s, end_s))
        return out[0], out[1]

    def totals(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[float, float]:
        sel = {names.FACILITY: facility}
        rng = end_s - start_s
        at = end_s
        if self._recorded(slo, start_s, end_s):
            t_expr = promql.summed_tiles(names.TILE_REQUESTS, slo, rng, "sum", sel)
            g_expr = promql.summed_tiles(names.TILE_GOOD, slo, rng, "sum", sel)
            at = end_s + 30  # the tiles' minutes as minutes() places them
        else:
            t_expr = promql.counted(slo, sel, "sum", False, lambda s: promql.exact_increase(s, rng))
            g_expr = promql.counted(slo, sel, "sum", True, lambda s: promql.exact_increase(s, rng))
        t, g = self.backend.query(t_expr, at), self.backend.query(g_expr, at)
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
