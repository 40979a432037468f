"""Backfill the embedded store from the gateway's own JSON access logs.

The access log is the durable record: importing rebuilds every minute the log
covers (recorded counts for those minutes are replaced, not added to), so
importing the same file twice changes nothing, and a minute the live recorder
already wrote is not counted twice. The slowest requests of each series and minute
(their trace ids) are merged into the store's exemplars, once per trace id.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from core import conventions as names
from slo.spec import Slo
from slo.store import EXEMPLARS_PER_HOUR, Exemplar, SeriesKey, Store, StoreWriter

BATCH_KEYS = 200_000
_HEX = frozenset("0123456789abcdef")


@dataclass
class ImportResult:
    lines: int = 0
    requests: int = 0
    skipped: int = 0
    minutes: int = 0
    first: str = ""
    last: str = ""


def _parse(line: str) -> tuple[SeriesKey, float, float, str, bool] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict) or rec.get(names.LOG_EVENT) != names.REQUEST_EVENT:
        return None
    try:
        ts = datetime.fromisoformat(str(rec[names.LOG_TIMESTAMP]).replace("Z", "+00:00")).timestamp()
        key: SeriesKey = (
            str(rec[names.LOG_FACILITY]),
            str(rec[names.LOG_SERVICE]),
            str(rec.get(names.LOG_ROUTE, "")),
            str(rec[names.LOG_METHOD]),
            int(rec[names.LOG_STATUS]),
        )
        trace_id = str(rec.get(names.LOG_TRACE_ID, ""))
        sampled = int(str(rec.get(names.LOG_TRACE_FLAGS, "00")), 16) & 1 == 1
        return key, ts, float(rec[names.LOG_DURATION_MS]) / 1000.0, trace_id, sampled
    except (KeyError, ValueError, TypeError):
        return None


def import_access_log(
    store: Store, slos: Sequence[Slo], bounds_s: Sequence[float], lines: Iterable[str]
) -> ImportResult:
    writer = StoreWriter(store, slos, bounds_s)
    bounds = list(bounds_s)
    cols = len(bounds) + 1
    result = ImportResult()
    batch: dict[tuple[SeriesKey, int], list[int]] = {}
    slowest: dict[tuple[SeriesKey, int], list[Exemplar]] = {}
    replaced: set[int] = set()
    minutes: set[int] = set()
    first = last = None

    def flush() -> None:
        new = {m for (_, m) in batch} - replaced
        writer.apply(batch, replace_minutes=new, exemplars=slowest)
        replaced.update(new)
        batch.clear()
        slowest.clear()

    for line in lines:
        if not line.strip():
            continue
        result.lines += 1
        parsed = _parse(line)
        if parsed is None:
            result.skipped += 1
            continue
        key, ts, duration_s, trace_id, sampled = parsed
        minute = int(ts) - int(ts) % 60
        counts = batch.get((key, minute))
        if counts is None:
            counts = batch[(key, minute)] = [0] * cols
        counts[bisect_left(bounds, duration_s)] += 1
        if len(trace_id) == 32 and set(trace_id) <= _HEX and trace_id != "0" * 32:
            kept = slowest.setdefault((key, minute), [])
            kept.append((duration_s, ts, trace_id, sampled))
            if len(kept) > 4 * EXEMPLARS_PER_HOUR:  # (trimmed now and then, not every line)
                kept.sort(reverse=True)
                del kept[EXEMPLARS_PER_HOUR:]
        result.requests += 1
        minutes.add(minute)
        first = ts if first is None or ts < first else first
        last = ts if last is None or ts > last else last
        if len(batch) >= BATCH_KEYS:
            flush()
    if batch:
        flush()
    result.minutes = len(minutes)
    if first is not None and last is not None:
        result.first = datetime.fromtimestamp(first).astimezone().isoformat(timespec="seconds")
        result.last = datetime.fromtimestamp(last).astimezone().isoformat(timespec="seconds")
    return result


def import_file(store: Store, slos: Sequence[Slo], bounds_s: Sequence[float], path: Path) -> ImportResult:
    with path.open(encoding="utf-8", errors="replace") as f:
        return import_access_log(store, slos, bounds_s, f)
