"""The per-request counter that feeds the embedded store.

Per request it adds one to a counter in a dict keyed by (series, minute, latency bucket)
and, when the request is among the slowest ``RecorderSettings.exemplars`` of its series and
minute so far, keeps its span context (the exemplars: one comparison per request, the trace
id formatted only in the writer thread): no database write, no lock. ``take`` swaps the dict
out; the store's writer thread (``gateway/storewriter.py``, outside the compiled request path:
it runs SQLite and numpy, once per flush, not per request) does the rest.
"""

from __future__ import annotations

from bisect import bisect_left

from core.conventions import ENTRY_ROUTE_PREFIX
from gateway.dataplane.outcome import Outcome, RequestKey
from gateway.dataplane.settings import RecorderSettings
from gateway.dataplane.spans import SpanContext

Slowest = tuple[float, float, SpanContext]
"""A kept request: its duration (s), its start (s since the epoch) and its span context."""


class Minute:
    """One series' minute: requests per latency bucket and the slowest requests seen."""

    __slots__ = ("counts", "floor_s", "slowest")

    def __init__(self, cols: int) -> None:
        self.counts = [0] * cols
        self.floor_s = -1.0
        """A request slower than this is one of the slowest (-1 until enough are kept)."""
        self.slowest: list[Slowest] = []

    def keep(self, duration_s: float, started: float, context: SpanContext, limit: int) -> None:
        kept = self.slowest
        kept.append((duration_s, started, context))
        if len(kept) > limit:
            kept.sort(key=_duration, reverse=True)
            del kept[limit:]
            self.floor_s = kept[-1][0]


def _duration(item: Slowest) -> float:
    return item[0]


Batch = dict[tuple[RequestKey, int], Minute]
"""What the counter holds between two flushes: (series key, minute start s) -> its minute."""


class Recorder:
    """Counts each request under its (budgeted) label set and minute: a request sink and an
    entry sink. Runs on the event loop only."""

    def __init__(self, settings: RecorderSettings) -> None:
        self._bounds = list(settings.bounds_s)
        self._cols = len(self._bounds) + 1
        self._exemplars = settings.exemplars
        self._acc: Batch = {}

    def entries(
        self, facility: str, service: str, method: str, route: str, status: int | None, start_s: float, n: int
    ) -> None:
        """Count ``n`` batch entries with one outcome, as their own series (``entry {route}``),
        for SLOs that count batch entries (``bundle_entries``)."""
        # An entry without a readable status is the server's protocol error: bad, as 502.
        key = (facility, service, ENTRY_ROUTE_PREFIX + route, method, status if status is not None else 502)
        k = (key, int(start_s) - int(start_s) % 60)
        minute = self._acc.get(k)
        if minute is None:
            minute = self._acc[k] = Minute(self._cols)
        minute.counts[0] += n

    def request(self, outcome: Outcome) -> None:
        start_s = int(outcome.started)
        k = (outcome.key, start_s - start_s % 60)
        minute = self._acc.get(k)
        if minute is None:
            minute = self._acc[k] = Minute(self._cols)
        duration_s = outcome.duration_s
        minute.counts[bisect_left(self._bounds, duration_s)] += 1
        if duration_s > minute.floor_s:
            minute.keep(duration_s, outcome.started, outcome.context, self._exemplars)

    def take(self) -> Batch:
        """Everything counted since the last call; counting starts again from nothing."""
        batch, self._acc = self._acc, {}
        return batch
