"""The embedded store's own health: failed operations, and when it last held every request
counted (the store's flush-stale self-alert reads these)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from core import conventions as names


class StoreMetrics:
    """Failed store operations; declared in every process, so that 0 is visible."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._errors = Counter(
            names.STORE_ERRORS,
            "Embedded-store operations that failed (operation: write, retried until it succeeds; "
            "compaction, retention not applied).",
            ("operation",),
            registry=registry,
        )

    def error(self, operation: str) -> None:
        """A store write or compaction failed (thread-safe: the store's writer thread calls it)."""
        self._errors.labels(operation).inc()


class StoreHealth:
    """The embedded store's flush gauges, in a process that writes the store only (a gauge
    that exists reads 0 until set, which would read as a store never flushed)."""

    def __init__(self, registry: CollectorRegistry, flush_interval_s: float) -> None:
        self._last_flush = Gauge(
            names.STORE_LAST_FLUSH,
            "When the embedded store last held every request counted before then (a batch"
            " written, or nothing waiting); with --workers, the oldest live worker's.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._flush_duration = Gauge(
            names.STORE_FLUSH_DURATION,
            "How long the embedded store's last batch took to write.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        flush_interval = Gauge(
            names.STORE_FLUSH_INTERVAL,
            "telemetry.store.flush_interval: the store's flush stale alert fires past 3 of them.",
            registry=registry,
            multiprocess_mode="max",
        )
        flush_interval.set(flush_interval_s)
        self._last_flush.set(time.time())  # (opened now: nothing counted is waiting yet)

    def flushed(self, last_flush_s: float, duration_s: float) -> None:
        self._last_flush.set(last_flush_s)
        self._flush_duration.set(duration_s)
