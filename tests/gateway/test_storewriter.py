"""The store's per-request counter (compiled, in the data plane) and its writer thread (beside
it, gateway/storewriter.py): what one counts, the other writes to a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.conventions import ENTRY_ROUTE_PREFIX
from gateway.dataplane.outcome import Outcome
from gateway.dataplane.recorder import Recorder
from gateway.dataplane.settings import RecorderSettings
from gateway.dataplane.spans import NonRecordingSpan, SpanContext
from gateway.storewriter import StoreWriterSettings, StoreWriterThread
from slo.store import Store

BOUNDS_S = (0.1, 0.5)
HOUR_S = 1_800_000_000 - 1_800_000_000 % 3600
KEY = ("st-marys", "fhir", "Patient/{id}", "GET", 200)


def _outcome(started: float, duration_s: float, trace_id: int) -> Outcome:
    span = NonRecordingSpan(SpanContext(trace_id, 1, True, 1))
    return Outcome(started, duration_s, *KEY[:3], "GET", 200, None, 1.0, KEY, span)


def test_counted_requests_and_the_slowest_are_written(tmp_path: Path) -> None:
    recorder = Recorder(RecorderSettings(BOUNDS_S, exemplars=2))
    dropped: list[int] = []
    writer = StoreWriterThread(
        recorder, StoreWriterSettings(tmp_path / "s.db", (), BOUNDS_S, flush_interval_s=3600), dropped.append
    )

    async def run() -> None:
        writer.start()
        # Minute 0: one per bucket column, the slowest two kept; minute 1: one fast request.
        for i, duration_s in enumerate((0.05, 0.3, 2.0, 0.7)):
            recorder.request(_outcome(HOUR_S + i, duration_s, trace_id=i + 1))
        recorder.request(_outcome(HOUR_S + 61, 0.01, trace_id=9))
        recorder.entries("st-marys", "fhir", "POST", "Bundle", None, HOUR_S + 5, 3)
        writer.flush()
        await asyncio.get_running_loop().run_in_executor(None, writer.close)

    asyncio.run(run())
    assert (writer.handed_over, writer.flushes, writer.depth, dropped) == (1, 1, 0, [])
    store = Store(tmp_path / "s.db")
    try:
        sid = store.series_id(KEY)
        found = store.raw_hour(HOUR_S, sid)
        assert found is not None
        minutes = found[1]
        assert minutes[0].tolist() == [1, 1, 2] and minutes[1].tolist() == [1, 0, 0]
        # An entry without a readable status counts as the server's protocol error (502).
        entry = store.series_id(("st-marys", "fhir", ENTRY_ROUTE_PREFIX + "Bundle", "POST", 502))
        entries = store.raw_hour(HOUR_S, entry)
        assert entries is not None and int(entries[1].sum()) == 3
        [(series, slowest)] = store.exemplars_of([sid], HOUR_S, HOUR_S + 3600)
        assert series == sid
        # The counter kept the two slowest of minute 0 (0.05 s and 0.3 s left out) and minute 1's.
        kept = [(0.01, f"{9:032x}"), (0.7, f"{4:032x}"), (2.0, f"{3:032x}")]
        assert sorted((e[0], e[2]) for e in slowest) == kept
    finally:
        store.close()


def test_a_batch_the_full_queue_cannot_take_is_counted_as_dropped(tmp_path: Path) -> None:
    """No writer thread running: the first batch waits in the queue (one place), the second's
    requests are dropped and counted, and nothing is counted twice."""
    recorder = Recorder(RecorderSettings(BOUNDS_S, exemplars=5))
    dropped: list[int] = []
    settings = StoreWriterSettings(tmp_path / "s.db", (), BOUNDS_S, max_pending_batches=1)
    writer = StoreWriterThread(recorder, settings, dropped.append)
    writer.flush()  # nothing counted: nothing handed over
    assert (writer.handed_over, dropped) == (0, [])
    recorder.request(_outcome(HOUR_S, 0.05, trace_id=1))
    writer.flush()
    for i in range(3):
        recorder.request(_outcome(HOUR_S + i, 0.05, trace_id=2 + i))
    writer.flush()
    assert (writer.handed_over, writer.depth, dropped) == (1, 1, [3])
