"""Counts from Prometheus over its HTTP API (``/api/v1/query``), for deployments
that outgrow one gateway: Prometheus scrapes every replica and sums them."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from core import conventions as names
from core.conventions import ALL_FACILITIES, FACILITY
from slo import promql
from slo.spec import Slo
from slo.status import Counts, RowSpec
from slo.windows import STATUS_WINDOWS_S

SERIES_CHOICES = ("auto", "recorded", "raw")
"""Which series a Prometheus backend reads its counts from (``--source``): the recorded tiles
of the generated rules (``recorded``), the raw counters (``raw``), or the tiles where they
cover the window (``auto``)."""


class PrometheusError(Exception):
    pass


class PrometheusBackend:
    def __init__(self, url: str, timeout_s: float = 30.0, source: str = "auto") -> None:
        if source not in SERIES_CHOICES:
            raise ValueError(f"source must be one of {', '.join(SERIES_CHOICES)}, not {source!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.source = source
        self.queries = 0
        self._lock = threading.Lock()
        self.notes: list[str] = []
        """What the reader chose and why, for the command to print."""

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
        with self._lock:  # reports query from several threads
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

    def _has_series(self, selector: str, years: int = 7) -> bool:
        """Whether any series matched ``selector`` in the last ``years`` (``/api/v1/series``;
        VictoriaMetrics takes a start of 0 for none, and then looks at the last day only)."""
        now = time.time()
        params = {"match[]": selector, "start": f"{now - years * 365 * 86400:.3f}", "end": f"{now:.3f}"}
        return bool(self._post("/api/v1/series", params)["data"])

    def query_range(
        self, expr: str, start_s: float, end_s: float, step_s: float
    ) -> list[tuple[float, float]]:
        """Range query summed over the result's series: [(timestamp, value)]."""
        sums: dict[float, float] = {}
        for stamps, values in self.query_range_arrays(expr, start_s, end_s, step_s):
            for ts, value in zip(stamps.tolist(), values.tolist(), strict=True):
                sums[ts] = sums.get(ts, 0.0) + value
        return sorted(sums.items())

    def query_range_arrays(
        self, expr: str, start_s: float, end_s: float, step_s: float
    ) -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
        """Range query: per result series, its timestamps and values as arrays (a year of
        minutes is half a million points: parsed by numpy, not point by point)."""
        params = {"query": expr, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}
        body = self._post("/api/v1/query_range", params)
        out = []
        for series in body["data"]["result"]:
            points = np.array(series["values"], dtype=object).reshape(-1, 2)
            out.append((points[:, 0].astype(np.float64), points[:, 1].astype(str).astype(np.float64)))
        return out

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

    def recorded(self, slo: Slo, since_s: float, now_s: float) -> bool:
        """Whether to read the SLO's recorded tiles over ``since_s``..``now_s`` rather than the
        raw counters. ``raw`` and ``recorded`` decide; ``auto`` takes the tiles when there are
        some in the window and they cover it: they reach back to its start, or the raw counters
        have no sample in it from before the first tile's minute (a tile counts only what
        happened inside its own minute, so what was counted before the rules ran is in no tile).
        A gap in the tiles (Prometheus down) is a gap in the raw samples too, and loses nothing
        the raw counters would show."""
        if self.source == "raw":
            return False
        tiles = f'{names.TILE_REQUESTS}{{{names.SLO_LABEL}="{slo.name}"}}'
        if not self._has_series(tiles):
            if self.source == "recorded":
                raise PrometheusError(
                    f"{slo.name}: no recorded series {names.TILE_REQUESTS} at {self.url}: load the rules "
                    "`vitalgate alerts generate` writes, or read the raw counters (--source raw)"
                )
            self.notes.append(f"{slo.name}: read from the raw counters (no recorded tiles: rules not loaded)")
            return False
        if self.source == "recorded":
            return True

        def since_start(at_s: float) -> bool:
            """A tile in (since, at]: true from the first tile on, whatever the gaps after it."""
            r = max(1, math.ceil(at_s - since_s))
            return bool(self.query(f"count(last_over_time({tiles}[{r}s]))", at_s))

        if self.query(f"count(last_over_time({tiles}[{promql.LOOKBACK_S}s]))", since_s + promql.LOOKBACK_S):
            return True  # the common case, cheaply: tiles from the window's start
        if not since_start(now_s):
            self.notes.append(f"{slo.name}: read from the raw counters (no recorded tiles in the window)")
            return False
        # The first tile in the window: bisect to 10 s (about 15 instant queries over the
        # recorded series), then its exact timestamp.
        lo, hi = since_s, now_s
        while hi - lo > 10:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if since_start(mid) else (mid, hi)
        first = self.query(f"min(min_over_time(timestamp({tiles})[{math.ceil(hi - lo) + 1}s:1s]))", hi)
        first_s = next(iter(first.values()), hi)
        before = first_s - promql.TILE_S - since_s
        if before < 1 or not self.query(
            f"count(last_over_time({promql.total_series(slo)}[{math.floor(before)}s]))",
            first_s - promql.TILE_S,
        ):
            return True
        self.notes.append(
            f"{slo.name}: read from the raw counters: the recorded tiles start at "
            f"{datetime.fromtimestamp(first_s, UTC):%Y-%m-%d %H:%M:%S} UTC, after the window does"
            " (`promtool tsdb create-blocks-from rules` backfills them)"
        )
        return False

    def counts(self, rows: Sequence[RowSpec], now_s: float) -> Counts:
        n = len(rows)
        w = len(STATUS_WINDOWS_S)
        c = Counts(
            window_total=np.zeros(n),
            window_good=np.zeros(n),
            burn_total=np.zeros((n, w)),
            burn_good=np.zeros((n, w)),
            request_total=np.zeros(n),
            request_good=np.zeros(n),
        )
        by_slo: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            by_slo[r.slo.name].append(i)
        for idxs in by_slo.values():
            slo = rows[idxs[0]].slo
            since = min([now_s - max(STATUS_WINDOWS_S.values())] + [rows[i].window_start_s for i in idxs])
            if self.recorded(slo, since, now_s):
                _RecordedCounts(self, slo, now_s).fill(rows, idxs, c)
            else:
                self._raw_counts(slo, rows, idxs, now_s, c)
        return c

    def _raw_counts(
        self, slo: Slo, rows: Sequence[RowSpec], idxs: list[int], now_s: float, c: Counts
    ) -> None:
        slices = slo.budgeting == "timeslices"
        for star in (False, True):
            mine = [i for i in idxs if (rows[i].facility == ALL_FACILITIES) == star]
            for j, w in enumerate(STATUS_WINDOWS_S.values()):
                if slices:
                    t, g = self._slice_pair(slo, w, None, star, now_s)
                else:
                    t, g = self._pair(slo, w, None, star, now_s)
                for i in mine:
                    c.burn_total[i, j] = t.get(rows[i].facility, 0.0)
                    c.burn_good[i, j] = g.get(rows[i].facility, 0.0)
            for members, range_s, extra in _window_groups(rows, mine, slo, star, now_s):
                t, g = self._pair(slo, range_s, extra, star, now_s)
                for i in members:
                    c.request_total[i] = round(t.get(rows[i].facility, 0.0), 6)
                    c.request_good[i] = round(g.get(rows[i].facility, 0.0), 6)
                if slices:
                    t, g = self._slice_pair(slo, range_s, extra, star, now_s)
                for i in members:
                    c.window_total[i] = t.get(rows[i].facility, 0.0) if slices else c.request_total[i]
                    c.window_good[i] = g.get(rows[i].facility, 0.0) if slices else c.request_good[i]


def _window_groups(
    rows: Sequence[RowSpec], mine: list[int], slo: Slo, star: bool, now_s: float
) -> list[tuple[list[int], float, dict[str, str] | None]]:
    """The SLO window's queries: one for a rolling window; per start for calendar ones (each
    facility's month starts at its own local midnight), naming the facility when it is alone."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i in mine:
        groups[rows[i].window_min if slo.calendar else -1].append(i)
    out = []
    for members in groups.values():
        r0 = rows[members[0]]
        extra = None if star or not slo.calendar or len(members) > 1 else {FACILITY: r0.facility}
        out.append((members, now_s - r0.window_start_s, extra))
    return out


class _RecordedCounts:
    """Counts from the rules' one-minute tiles: a ``sum_over_time`` per window over one series
    per facility, whatever the raw cardinality. All facilities together (``*``) is the sum of
    the facilities' counts, except a timeslice SLO's minutes, judged on the summed tiles."""

    def __init__(self, backend: PrometheusBackend, slo: Slo, now_s: float) -> None:
        self.b, self.slo, self.now_s = backend, slo, now_s

    def _sum(self, tile: str, range_s: float, extra: dict[str, str] | None) -> dict[str, float]:
        per = self.b.query(
            promql.summed_tiles(tile, self.slo, range_s, f"sum by ({FACILITY})", extra), self.now_s
        )
        per[ALL_FACILITIES] = sum(per.values())
        return per

    def _requests(
        self, range_s: float, extra: dict[str, str] | None
    ) -> tuple[dict[str, float], dict[str, float]]:
        return self._sum(names.TILE_REQUESTS, range_s, extra), self._sum(names.TILE_GOOD, range_s, extra)

    def _minutes(
        self, range_s: float, extra: dict[str, str] | None, star: bool
    ) -> tuple[dict[str, float], dict[str, float]]:
        if star:
            data, ok = promql.tile_slices(self.slo, range_s)
            return self.b.query(data, self.now_s), self.b.query(ok, self.now_s)
        return self._sum(names.TILE_MINUTES, range_s, extra), self._sum(
            names.TILE_GOOD_MINUTES, range_s, extra
        )

    def fill(self, rows: Sequence[RowSpec], idxs: list[int], c: Counts) -> None:
        slices = self.slo.budgeting == "timeslices"
        for j, w in enumerate(STATUS_WINDOWS_S.values()):
            if not slices:
                t, g = self._requests(w, None)
            for star in (False, True):
                if slices:
                    t, g = self._minutes(w, None, star)
                for i in idxs:
                    if (rows[i].facility == ALL_FACILITIES) == star:
                        c.burn_total[i, j] = t.get(rows[i].facility, 0.0)
                        c.burn_good[i, j] = g.get(rows[i].facility, 0.0)
        for star in (False, True):
            mine = [i for i in idxs if (rows[i].facility == ALL_FACILITIES) == star]
            for members, range_s, extra in _window_groups(rows, mine, self.slo, star, self.now_s):
                t, g = self._requests(range_s, extra)
                for i in members:
                    c.request_total[i] = round(t.get(rows[i].facility, 0.0), 6)
                    c.request_good[i] = round(g.get(rows[i].facility, 0.0), 6)
                if slices:
                    t, g = self._minutes(range_s, extra, star)
                for i in members:
                    c.window_total[i] = t.get(rows[i].facility, 0.0) if slices else c.request_total[i]
                    c.window_good[i] = g.get(rows[i].facility, 0.0) if slices else c.request_good[i]
