"""The request path's own metrics: the request histogram and active-requests gauge of one
process, the cardinality budget, and the protocols the rest of its counting goes through.

In one process (no ``--workers``) the two per-request metrics are kept here
(``LocalHistograms``, ``LocalGauges``: a bisect and two additions, no lock, as only the
event loop touches them and /metrics is served from the same loop) and exposed by
``gateway/metrics/requests.py`` with exactly the samples prometheus_client's own would give.
prometheus_client's observation path, interpreted Python with a lock per value, was the
largest single item of a request's cost. With workers, ``gateway/metrics/requests.py`` supplies
prometheus_client's multiprocess objects behind the same protocols: their values must live
in its files for the supervisor to sum. Nothing here imports prometheus_client.

A cardinality budget bounds the request histogram: once it holds ``max_label_sets`` label
sets, a new set keeps its facility, service, method and status but its route folds into
``other``, and the fold is counted.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Final, Protocol

from core.conventions import OTHER_ROUTE
from gateway.dataplane.outcome import Outcome, RequestKey

# OTel advisory boundaries for http.server.request.duration, in seconds.
OTEL_DURATION_BUCKETS_S: Final[tuple[float, ...]] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
EXEMPLAR_INTERVAL_S: Final = 1.0


def duration_buckets_s(thresholds_s: list[float]) -> tuple[float, ...]:
    """OTel's buckets plus every SLO latency threshold, so a latency SLI is exact."""
    return tuple(sorted({*OTEL_DURATION_BUCKETS_S, *(round(t, 6) for t in thresholds_s)}))


class Gauge(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class Gauges(Protocol):
    def child(self, facility: str, service: str) -> Gauge:
        """The active-requests gauge of one facility and service."""


class ProxyCounters(Protocol):
    """What the proxy counts besides requests (prometheus_client counters, thread-safe)."""

    def url_leak(self, facility: str, service: str, where: str) -> None: ...

    def uninspected(self, service: str, reason: str) -> None: ...


class LabelBudget:
    """The request histogram's label sets, bounded: the key a request is counted under."""

    def __init__(self, max_label_sets: int, on_fold: Callable[[], None]) -> None:
        self._max = max_label_sets
        self._on_fold = on_fold
        self._keys: dict[RequestKey, RequestKey] = {}

    def key(self, facility: str, service: str, route: str, method: str, status: int) -> RequestKey:
        key = (facility, service, route, method, status)
        found = self._keys.get(key)
        if found is not None:
            return found
        if len(self._keys) >= self._max:
            self._on_fold()  # once per request over budget: how much traffic lost its route
            folded = (facility, service, OTHER_ROUTE, method, status)
            if folded not in self._keys:
                self._keys[folded] = folded
            return folded
        self._keys[key] = key
        return key


class ExemplarClock:
    """At most one exemplar a second per label set: Prometheus keeps only the latest per
    bucket, and attaching one costs more than the observation itself."""

    def __init__(self) -> None:
        self._last: dict[RequestKey, float] = {}

    def due(self, outcome: Outcome) -> bool:
        if not outcome.context.sampled:
            return False
        now = outcome.started
        if now - self._last.get(outcome.key, -math.inf) < EXEMPLAR_INTERVAL_S:
            return False
        self._last[outcome.key] = now
        return True


class LocalHistogram:
    """One label set's histogram, as prometheus_client's child would count it (an observation
    goes to the first bucket whose bound is >= it), without its per-value locks."""

    __slots__ = ("bounds", "counts", "created", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ends with +Inf
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()
        self.exemplars: list[tuple[str, float, float] | None] = [None] * len(bounds)
        """Per bucket, the latest (trace id, value, time) attached."""

    def observe(self, amount: float, trace_id: str | None = None) -> None:
        i = bisect_left(self.bounds, amount)
        self.counts[i] += 1
        self.sum += amount
        if trace_id is not None:
            self.exemplars[i] = (trace_id, amount, time.time())


class LocalHistograms:
    """The request histogram of one process: a ``RequestSink``."""

    def __init__(self, buckets_s: tuple[float, ...]) -> None:
        self.bounds = (*buckets_s, math.inf)
        self.children: dict[RequestKey, LocalHistogram] = {}
        """Read by the exposition at scrape time, on the same event loop."""
        self._exemplars = ExemplarClock()

    def request(self, outcome: Outcome) -> None:
        child = self.children.get(outcome.key)
        if child is None:
            child = self.children[outcome.key] = LocalHistogram(self.bounds)
        if self._exemplars.due(outcome):
            child.observe(outcome.duration_s, outcome.context.trace_hex())
        else:
            child.observe(outcome.duration_s)


class LocalGauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class LocalGauges:
    """The active-requests gauges of one process."""

    def __init__(self) -> None:
        self.children: dict[tuple[str, str], LocalGauge] = {}

    def child(self, facility: str, service: str) -> Gauge:
        key = (facility, service)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = LocalGauge()
        return found
