"""Latency by route, from the embedded store: per route template of one facility, over a
recent window, the request count, the error ratio, p50/p95/p99 and the slowest requests'
trace ids.

Percentiles are estimated from the per-minute latency histograms the store keeps (the
request histogram's buckets) the way Prometheus' ``histogram_quantile`` does: the bucket
holding the q-th request is found from the cumulative counts, and the value is interpolated
linearly inside it, as if its requests were spread evenly from its lower bound (0 for the
first bucket) to its upper bound. So the true percentile always lies in the reported bucket;
the interpolated value inside it is an estimate. A percentile that falls in the last bucket
(above the highest bound) is reported as that bound, marked as a lower limit.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.conventions import ENTRY_ROUTE_PREFIX
from slo.store import EXEMPLARS_PER_HOUR, Store

WINDOWS_S = {"1h": 3600, "1d": 86400, "1w": 7 * 86400}
"""The windows a latency view can cover (the store keeps minutes longer than the longest)."""
QUANTILES = (0.5, 0.95, 0.99)
ERROR_STATUS = 500
"""A request counts as an error when its status is at least this (the gateway's and the
upstream's failures, as the availability SLI counts them by default)."""


class WindowError(ValueError):
    pass


@dataclass(frozen=True)
class Percentile:
    """An estimated percentile and the bucket ``(lower, upper]`` it certainly lies in; ``upper``
    is infinite when it lies above the highest bound (``seconds`` is then that bound)."""

    seconds: float
    lower: float
    upper: float

    @property
    def above_last_bound(self) -> bool:
        return math.isinf(self.upper)


@dataclass(frozen=True)
class SlowRequest:
    trace_id: str
    duration_s: float
    started_s: float
    method: str
    status: int
    sampled: bool
    """Whether the trace was sampled (exported as spans); otherwise only the access log has it."""


@dataclass(frozen=True)
class RouteLatency:
    service: str
    route: str
    requests: int
    errors: int
    percentiles: dict[str, Percentile | None]
    """``p50``, ``p95``, ``p99``."""
    slowest: tuple[SlowRequest, ...]

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class LatencyView:
    facility: str
    window: str
    start_s: float
    """The first minute counted (its start)."""
    end_s: float
    bounds_s: tuple[float, ...]
    """The buckets' upper bounds the percentiles were estimated from (+Inf implied)."""
    routes: tuple[RouteLatency, ...]
    """Slowest first: by p95, then p99, then p50 (descending), then by name."""


def window_seconds(window: str) -> int:
    found = WINDOWS_S.get(window)
    if found is None:
        raise WindowError(f"window: {window!r} is not one of {', '.join(WINDOWS_S)}")
    return found


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> Percentile | None:
    """The q-quantile of a histogram with upper ``bounds`` (counts has one more column: +Inf),
    as Prometheus' ``histogram_quantile`` estimates it; None without requests."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for i, n in enumerate(counts):
        if cumulative + n >= rank and n > 0:
            if i == len(bounds):  # above the highest bound: only that much is known
                top = bounds[-1] if bounds else 0.0
                return Percentile(top, top, math.inf)
            lower = bounds[i - 1] if i > 0 else 0.0
            upper = bounds[i]
            # (the same operations in the same order as Prometheus, so the same float)
            return Percentile(lower + (upper - lower) * ((rank - cumulative) / n), lower, upper)
        cumulative += n
    return None  # (unreachable: the last non-empty bucket reaches the total)


def _common_bounds(layouts: Sequence[tuple[float, ...]]) -> tuple[float, ...]:
    """Bounds every layout has: each layout's bucket lies inside exactly one of their buckets,
    so histograms recorded under different bounds (an SLO threshold added) add up exactly."""
    if not layouts:
        return ()
    common = set(layouts[0])
    for lay in layouts[1:]:
        common &= set(lay)
    return tuple(sorted(common))


def route_latency(
    store: Store, facility: str, window: str, now_s: float, slowest: int = EXEMPLARS_PER_HOUR
) -> LatencyView:
    """Latency by route of ``facility`` over the last ``window`` (minutes, the current one
    included), from the store's raw minutes and exemplars."""
    n_minutes = window_seconds(window) // 60
    current = int(now_s) - int(now_s) % 60
    first = current - 60 * (n_minutes - 1)
    hour_from, hour_to = first - first % 3600, current - current % 3600 + 3600
    series = {
        sid: key
        for sid, key in store.all_series().items()
        if key[0] == facility and not key[2].startswith(ENTRY_ROUTE_PREFIX)
    }
    rows = store.raw_minutes_of(sorted(series), hour_from, hour_to)
    all_layouts = store.layouts()
    used = sorted({lay for _, _, lay, _ in rows})
    bounds = _common_bounds([all_layouts[lay] for lay in used])
    column_maps = {
        lay: np.array([bisect_left(bounds, b) for b in (*all_layouts[lay], math.inf)]) for lay in used
    }
    hist: dict[tuple[str, str], np.ndarray] = {}
    errors: dict[tuple[str, str], int] = {}
    for hour, sid, lay, arr in rows:
        lo = max(0, (first - hour) // 60)
        hi = min(60, (current - hour) // 60 + 1)
        if lo >= hi or arr.shape[1] != len(column_maps[lay]):
            continue
        per_bucket = arr[lo:hi].sum(axis=0, dtype=np.int64)
        _facility, service, route, _method, status = series[sid]
        acc = hist.setdefault((service, route), np.zeros(len(bounds) + 1, dtype=np.int64))
        np.add.at(acc, column_maps[lay], per_bucket)
        if status >= ERROR_STATUS:
            errors[(service, route)] = errors.get((service, route), 0) + int(per_bucket.sum())
    slow: dict[tuple[str, str], list[SlowRequest]] = {}
    for sid, items in store.exemplars_of(sorted(series), hour_from, hour_to):
        _facility, service, route, method, status = series[sid]
        for duration_s, started_s, trace_id, sampled in items:
            if first <= started_s < current + 60:
                slow.setdefault((service, route), []).append(
                    SlowRequest(trace_id, duration_s, started_s, method, status, sampled)
                )
    routes = []
    for (service, route), counts in hist.items():
        total = int(counts.sum())
        if total == 0:
            continue
        cs = [int(c) for c in counts]
        found = sorted(slow.get((service, route), []), key=lambda r: (-r.duration_s, r.trace_id))
        routes.append(
            RouteLatency(
                service,
                route,
                total,
                errors.get((service, route), 0),
                {f"p{round(q * 100)}": histogram_quantile(q, bounds, cs) for q in QUANTILES},
                tuple(found[:slowest]),
            )
        )
    routes.sort(key=_slowest_first)
    return LatencyView(facility, window, float(first), float(current + 60), bounds, tuple(routes))


def _slowest_first(r: RouteLatency) -> tuple[float, float, float, str, str]:
    def s(name: str) -> float:
        p = r.percentiles[name]
        return -p.seconds if p is not None else 0.0

    return (s("p95"), s("p99"), s("p50"), r.service, r.route)
