"""Counts from Prometheus over its HTTP API (``/api/v1/query``), for deployments
that outgrow one gateway: Prometheus scrapes every replica and sums them."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from slo import promql
from slo.conventions import ALL_FACILITIES, FACILITY
from slo.spec import Slo
from slo.status import Counts, RowSpec
from slo.windows import STATUS_WINDOWS_S


class PrometheusError(Exception):
    pass


class PrometheusBackend:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.queries = 0

    def query(self, expr: str, at_s: float) -> dict[str, float]:
        """Instant query; {facility label (or '*' for an unlabelled result): value}."""
        body = self._post("/api/v1/query", {"query": expr, "time": f"{at_s:.3f}"})
        out: dict[str, float] = {}
        for sample in body["data"]["result"]:
            fac = sample["metric"].get(FACILITY, ALL_FACILITIES)
            out[fac] = float(sample["value"][1])
        return out

    def _post(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        data = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method="POST")  # noqa: S310
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        self.queries += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:  # noqa: S310  a configured http(s) URL
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise PrometheusError(
                f"Prometheus at {self.url} rejected a query ({exc.code}): {detail}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus query failed: {body.get('error')}")
        result: dict[str, Any] = body
        return result

    def query_range(
        self, expr: str, start_s: float, end_s: float, step_s: float
    ) -> list[tuple[float, float]]:
        """Range query summed over the result's series: [(timestamp, value)]."""
        params = {"query": expr, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}
        body = self._post("/api/v1/query_range", params)
        sums: dict[float, float] = {}
        for series in body["data"]["result"]:
            for ts, value in series["values"]:
                sums[float(ts)] = sums.get(float(ts), 0.0) + float(value)
        return sorted(sums.items())

    def _pair(
        self, slo: Slo, range_s: float, extra: dict[str, str] | None, star: bool, now_s: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        grouping = "sum" if star else "sum by (facility)"

        def inc(series: str) -> str:
            return promql.exact_increase(series, range_s)

        t = promql.counted(slo, extra, grouping, False, inc)
        g = promql.counted(slo, extra, grouping, True, inc)
        return self.query(t, now_s), self.query(g, now_s)

    def _slice_pair(
        self, slo: Slo, range_s: float, extra: dict[str, str] | None, star: bool, now_s: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        grouping = "sum" if star else "sum by (facility)"
        data, ok = promql.slices(slo, range_s, extra, grouping)
        return self.query(data, now_s), self.query(ok, now_s)

    def counts(self, rows: Sequence[RowSpec], now_s: float) -> Counts:
        n = len(rows)
        wt, wg, rt, rg = (np.zeros(n) for _ in range(4))
        bt = np.zeros((n, len(STATUS_WINDOWS_S)))
        bg = np.zeros((n, len(STATUS_WINDOWS_S)))
        by_slo: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            by_slo[r.slo.name].append(i)
        for idxs in by_slo.values():
            slo = rows[idxs[0]].slo
            slices = slo.budgeting == "timeslices"
            for star in (False, True):
                mine = [i for i in idxs if (rows[i].facility == ALL_FACILITIES) == star]
                for j, w in enumerate(STATUS_WINDOWS_S.values()):
                    if slices:
                        t, g = self._slice_pair(slo, w, None, star, now_s)
                    else:
                        t, g = self._pair(slo, w, None, star, now_s)
                    for i in mine:
                        bt[i, j] = t.get(rows[i].facility, 0.0)
                        bg[i, j] = g.get(rows[i].facility, 0.0)
                # The SLO window: one query for a rolling window; per facility for calendar ones
                # (each starts at its own local midnight).
                groups: dict[int, list[int]] = defaultdict(list)
                for i in mine:
                    groups[rows[i].window_min if slo.calendar else -1].append(i)
                for members in groups.values():
                    r0 = rows[members[0]]
                    range_s = now_s - r0.window_start_s
                    extra = None if star or not slo.calendar or len(members) > 1 else {FACILITY: r0.facility}
                    t, g = self._pair(slo, range_s, extra, star, now_s)
                    for i in members:
                        rt[i] = round(t.get(rows[i].facility, 0.0), 6)
                        rg[i] = round(g.get(rows[i].facility, 0.0), 6)
                    if slices:
                        t, g = self._slice_pair(slo, range_s, extra, star, now_s)
                    for i in members:
                        wt[i] = t.get(rows[i].facility, 0.0) if slices else rt[i]
                        wg[i] = g.get(rows[i].facility, 0.0) if slices else rg[i]
        return Counts(wt, wg, bt, bg, rt, rg)
