"""The embedded store's writer: what the per-request counter holds, written to SQLite.

Every ``flush_interval`` the counter's dict (``gateway/dataplane/recorder.py``) is taken on
the event loop and handed to a writer thread through a bounded queue; when the queue is
full the batch is dropped and its requests counted in
``vitalgate_telemetry_dropped_total{signal="store"}``. The writer thread owns the SQLite
connection. It lives outside the compiled request path: it runs once per flush, not per
request, and SQLite and numpy have no place in the data plane (tests/test_layout.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.dataplane.recorder import Batch, Recorder
from slo.spec import Slo
from slo.store import Exemplar, SeriesKey, Store, StoreLock, StoreWriter, catch_up

_STOP: Final = object()
log = logging.getLogger("vitalgate.store")
MAINTENANCE_INTERVAL_S: Final = 3600.0


@dataclass(frozen=True)
class StoreWriterSettings:
    path: Path
    slos: tuple[Slo, ...]
    bounds_s: tuple[float, ...]
    """The counter's latency bucket bounds: the columns of every batch."""
    flush_interval_s: float = 10.0
    minute_days: int = 35
    hour_days: int = 400
    max_pending_batches: int = 30
    shared: bool = False
    """One of several worker processes writing the same store: additive writes, no catch-up
    (the supervisor did it)."""
    maintenance: bool = True
    """This process compacts and purges."""


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


class StoreWriterThread:
    """Takes the counter's batches every flush interval and writes them from a thread of its
    own; its counts (``handed_over``, ``flushes``, ``last_flush_s``) are the store's health."""

    def __init__(
        self,
        counter: Recorder,
        settings: StoreWriterSettings,
        on_drop: Callable[[int], None],
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._counter = counter
        self.settings = settings
        self._on_drop = on_drop
        self._on_error = on_error or (lambda _operation: None)
        self.flush_interval_s = settings.flush_interval_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=settings.max_pending_batches)
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
        batch = self._counter.take()
        if not batch:
            if self.handed_over == self.flushes:  # nothing waits: the store is up to date
                self.last_flush_s = time.time()
            return
        try:
            self._queue.put_nowait(batch)
            self.handed_over += 1
        except queue.Full:
            self._on_drop(_requests(batch))

    def _open(self) -> tuple[Store, StoreWriter, StoreLock | None]:
        """The store opened, caught up (one process) and compacted (the maintaining one)."""
        s = self.settings
        lock: StoreLock | None = None
        try:
            if not s.shared:
                lock = StoreLock(s.path)  # (workers: their supervisor holds it)
            store = Store(s.path)
            if not s.shared:
                catch_up(store, s.slos)  # new SLOs replayed; gaps since each SLO's last row rebuilt
            writer = StoreWriter(store, s.slos, s.bounds_s, shared=s.shared)
            if s.maintenance:
                store.compact_and_purge(time.time(), s.minute_days, s.hour_days)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store, writer, lock

    def _run(self) -> None:
        try:
            store, writer, lock = self._open()
        except Exception as exc:  # start() raises it on the event loop, naming the setting
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._write_until_stopped(store, writer)
        finally:
            store.close()
            if lock is not None:
                lock.release()

    def _write_until_stopped(self, store: Store, writer: StoreWriter) -> None:
        next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL_S
        # Batches not yet written, oldest first: a failed write (a full disk) is retried each
        # flush interval, whole, until it succeeds; only past max_pending_batches is the oldest
        # given up, and its requests counted as dropped.
        pending: collections.deque[Batch] = collections.deque()
        failing = False
        while True:
            try:
                item = self._queue.get(timeout=self.flush_interval_s if pending else None)
            except queue.Empty:
                item = None
            stopping = item is _STOP
            if isinstance(item, dict):
                pending.append(item)
            failing = self._write_pending(writer, pending, failing, stopping)
            if stopping:
                return
            if self.settings.maintenance and time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL_S
                self._maintain(store)

    def _write_pending(
        self, writer: StoreWriter, pending: collections.deque[Batch], failing: bool, stopping: bool
    ) -> bool:
        """Write the waiting batches in order until one fails; whether writes are failing."""
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
                if len(pending) > self.settings.max_pending_batches or stopping:
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
        return failing

    def _maintain(self, store: Store) -> None:
        s = self.settings
        try:
            store.compact_and_purge(time.time(), s.minute_days, s.hour_days)
        except Exception as exc:  # retention stopping must be seen: logged, counted
            self._on_error("compaction")
            log.warning("store compaction failed: %s", exc)

    def close(self) -> None:
        """Flush what is counted and wait for the writer (called at shutdown, off the loop)."""
        if self._task is not None:
            self._task.cancel()
        self.flush()
        if self._writer_thread is not None and self._writer_thread.is_alive():
            self._queue.put(_STOP)
            self._writer_thread.join(60)
