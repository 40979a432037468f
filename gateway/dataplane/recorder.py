"""The recorder that feeds the embedded store.

Per request it adds one to a counter in a dict keyed by (series, minute,
latency bucket) and, when the request is among the ``EXEMPLARS_PER_HOUR`` slowest
of its series and minute so far, keeps its span context (the exemplars: one
comparison per request, the trace id formatted only in the writer thread): no
database write, no lock. Every
``flush_interval`` the dict is swapped out and handed to a writer thread through a
bounded queue; when
the queue is full the batch is dropped and its requests counted in
``vitalgate_telemetry_dropped_total{signal="store"}``. The writer thread owns
the SQLite connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from core.conventions import ENTRY_ROUTE_PREFIX
from gateway.dataplane.outcome import Outcome
from gateway.dataplane.tracing import SpanContext
from slo.spec import Slo
from slo.store import EXEMPLARS_PER_HOUR, Exemplar, SeriesKey, Store, StoreLock, StoreWriter, catch_up

_STOP: Final = object()
log = logging.getLogger("vitalgate.store")
MAINTENANCE_INTERVAL_S: Final = 3600.0


class _Minute:
    """One series' minute: requests per latency bucket and the slowest requests seen."""

    __slots__ = ("counts", "floor_s", "slowest")

    def __init__(self, cols: int) -> None:
        self.counts = [0] * cols
        self.floor_s = -1.0
        """A request slower than this is one of the slowest (-1 until enough are kept)."""
        self.slowest: list[tuple[float, float, SpanContext]] = []

    def keep(self, duration_s: float, started: float, context: SpanContext) -> None:
        kept = self.slowest
        kept.append((duration_s, started, context))
        if len(kept) > EXEMPLARS_PER_HOUR:
            kept.sort(key=_duration, reverse=True)
            del kept[EXEMPLARS_PER_HOUR:]
            self.floor_s = kept[-1][0]


def _duration(item: tuple[float, float, SpanContext]) -> float:
    return item[0]


Batch = dict[tuple[SeriesKey, int], _Minute]


def _split(
    batch: Batch,
) -> tuple[dict[tuple[SeriesKey, int], list[int]], dict[tuple[SeriesKey, int], list[Exemplar]]]:
    """A batch as the store writer takes it: counts, and the slowest requests of each minute."""
    counts = {k: m.counts for k, m in batch.items()}
    slowest = {
        k: [(d, at, ctx.trace_hex(), ctx.sampled) for d, at, ctx in m.slowest if ctx.trace_id != 0]
        for k, m in batch.items()
        if m.slowest
    }
    return counts, slowest


def _requests(batch: Batch) -> int:
    return sum(sum(m.counts) for m in batch.values())


class Recorder:
    def __init__(
        self,
        path: Path,
        slos: Sequence[Slo],
        bounds_s: Sequence[float],
        on_drop: Callable[[int], None],
        flush_interval_s: float = 10.0,
        minute_days: int = 35,
        hour_days: int = 400,
        max_pending_batches: int = 30,
        shared: bool = False,
        maintenance: bool = True,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """``shared``: one of several worker processes writing the same store (additive writes,
        no catch-up, which the supervisor did); ``maintenance``: this process compacts and purges."""
        self._shared = shared
        self._maintenance = maintenance
        self._path = path
        self._slos = list(slos)
        self._bounds = list(bounds_s)
        self._cols = len(self._bounds) + 1
        self._on_drop = on_drop
        self._on_error = on_error or (lambda _operation: None)
        self._max_pending = max_pending_batches
        self.flush_interval_s = flush_interval_s
        self._minute_days = minute_days
        self._hour_days = hour_days
        self._acc: Batch = {}
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending_batches)
        self._writer_thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.flushes = 0
        """Batches written, in the order they were handed over."""
        self.handed_over = 0
        """Batches given to the writer thread: once ``flushes`` reaches it, all are written."""
        self.last_flush_s = time.time()
        """When the store last held everything counted before then (a batch written, or a
        flush with nothing to write and nothing waiting): its age is how far the store lags."""
        self.last_flush_duration_s = 0.0

    def entries(
        self, facility: str, service: str, method: str, route: str, status: int | None, start_s: float, n: int
    ) -> None:
        """Count ``n`` batch entries with one outcome, as their own series (``entry {route}``),
        for SLOs that count batch entries (``bundle_entries``); an entry sink."""
        # An entry without a readable status is the server's protocol error: bad, as 502.
        key = (facility, service, ENTRY_ROUTE_PREFIX + route, method, status if status is not None else 502)
        k = (key, int(start_s) - int(start_s) % 60)
        minute = self._acc.get(k)
        if minute is None:
            minute = self._acc[k] = _Minute(self._cols)
        minute.counts[0] += n

    def request(self, outcome: Outcome) -> None:
        """Count one request under its (budgeted) label set: a request sink."""
        start_s = int(outcome.started)
        k = (outcome.key, start_s - start_s % 60)
        minute = self._acc.get(k)
        if minute is None:
            minute = self._acc[k] = _Minute(self._cols)
        duration_s = outcome.duration_s
        minute.counts[bisect_left(self._bounds, duration_s)] += 1
        if duration_s > minute.floor_s:
            minute.keep(duration_s, outcome.started, outcome.context)

    def start(self) -> None:
        """Open the store (in the writer thread) and start flushing; raises if it cannot open."""
        self._writer_thread = threading.Thread(target=self._run, name="vitalgate-store", daemon=True)
        self._writer_thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self.flush()

    @property
    def depth(self) -> int:
        """Batches handed to the writer and not yet written (retried ones included)."""
        return self.handed_over - self.flushes

    def flush(self) -> None:
        batch, self._acc = self._acc, {}
        if not batch:
            if self.handed_over == self.flushes:  # nothing waits: the store is up to date
                self.last_flush_s = time.time()
            return
        try:
            self._queue.put_nowait(batch)
            self.handed_over += 1
        except queue.Full:
            self._on_drop(_requests(batch))

    def _run(self) -> None:
        lock: StoreLock | None = None
        try:
            if not self._shared:
                lock = StoreLock(self._path)  # (workers: their supervisor holds it)
            store = Store(self._path)
            if not self._shared:
                catch_up(store, self._slos)  # new SLOs replayed; gaps since each SLO's last row rebuilt
            writer = StoreWriter(store, self._slos, self._bounds, shared=self._shared)
            if self._maintenance:
                store.compact_and_purge(time.time(), self._minute_days, self._hour_days)
        except Exception as exc:
            if lock is not None:
                lock.release()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL_S
        # Batches not yet written, oldest first: a failed write (a full disk) is retried each
        # flush interval, whole, until it succeeds; only past max_pending_batches is the oldest
        # given up, and its requests counted as dropped.
        pending: collections.deque[Batch] = collections.deque()
        failing = False
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.flush_interval_s if pending else None)
                except queue.Empty:
                    item = None
                stopping = item is _STOP
                if isinstance(item, dict):
                    pending.append(item)
                while pending:
                    w0 = time.monotonic()
                    try:
                        counts, slowest = _split(pending[0])
                        writer.apply(counts, exemplars=slowest)
                    except Exception as exc:  # a full disk must not stop the gateway
                        self._on_error("write")
                        if not failing:
                            failing = True
                            # (logging, not print: a full disk may hold stderr too, and
                            # a raise here would end this thread and every later write)
                            log.warning("store write failed, retrying: %s", exc)
                        if len(pending) > self._max_pending or stopping:
                            lost = pending.popleft()
                            self._on_drop(_requests(lost))
                            continue
                        break
                    pending.popleft()
                    self.flushes += 1
                    self.last_flush_duration_s = time.monotonic() - w0
                    self.last_flush_s = time.time()
                    if failing:
                        failing = False
                        log.warning("store writes succeed again")
                if stopping:
                    return
                if self._maintenance and time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL_S
                    try:
                        store.compact_and_purge(time.time(), self._minute_days, self._hour_days)
                    except Exception as exc:  # retention stopping must be seen: logged, counted
                        self._on_error("compaction")
                        log.warning("store compaction failed: %s", exc)
        finally:
            store.close()
            if lock is not None:
                lock.release()

    def close(self) -> None:
        """Flush what is in memory and wait for the writer (called at shutdown, off the loop)."""
        if self._task is not None:
            self._task.cancel()
        self.flush()
        if self._writer_thread is not None and self._writer_thread.is_alive():
            self._queue.put(_STOP)
            self._writer_thread.join(60)
