"""The store's writer: folds minute counts into raw history and per-SLO arrays."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.conventions import ALL_FACILITIES
from slo.engine import good_minutes
from slo.spec import Slo
from slo.store.cells import U32
from slo.store.database import MINUTES_PER_DAY, Exemplar, SeriesKey, Store
from slo.store.layouts import column_map, fold_columns, merged_bounds


def hour_rollup(day_counts: U32, target: float) -> U32:
    """[total, good, minutes with data, good minutes] per hour, from [2, 1440] minute counts."""
    total = day_counts[0].reshape(24, 60).astype(np.float64)
    good = day_counts[1].reshape(24, 60).astype(np.float64)
    has = total > 0
    ok = good_minutes(total, good, target)
    return np.stack([total.sum(1), good.sum(1), has.sum(1), ok.sum(1)]).astype(np.uint32)


@dataclass
class _RawHour:
    """One (hour, series) row of raw counts in memory: its layout, its minutes x buckets, and
    the column each of the writer's buckets is counted in (None: the writer's own layout)."""

    layout: int
    cells: U32
    columns: npt.NDArray[np.intp] | None = None

    def add(self, minute: int, row: U32) -> None:
        if self.columns is None:
            self.cells[minute] += row
        else:
            self.cells[minute, self.columns] += row


class StoreWriter:
    """Folds minute counts into the store: raw history and per-SLO arrays.

    Keeps the current hours' and days' arrays in memory (loaded from the store on
    first touch, so a restart continues where it left off) and writes every
    changed row whole, in one transaction per ``apply``. Confined to one thread.

    ``shared``: other processes (gateway workers) write the same store, so every
    ``apply`` re-reads the rows it changes inside its write transaction and adds
    to them: the counts of all writers add up exactly.
    """

    def __init__(
        self, store: Store, slos: Sequence[Slo], bounds_s: Sequence[float], shared: bool = False
    ) -> None:
        self.store = store
        self.shared = shared
        self.slos = list(slos)
        self.bounds_s = tuple(bounds_s)
        self.layout = store.layout_id(self.bounds_s)
        self.n_cols = len(self.bounds_s) + 1  # the last column is +Inf
        store.put_slo_defs(self.slos)
        # Upper bound of each bucket column, for latency SLIs.
        self._upper = np.array([*self.bounds_s, np.inf])
        self._raw: dict[tuple[int, int], _RawHour] = {}
        self._days: dict[tuple[str, str, int], U32] = {}
        self._matching: dict[SeriesKey, list[tuple[Slo, npt.NDArray[np.bool_]]]] = {}
        self._lock = threading.Lock()

    def _slos_for(self, key: SeriesKey) -> list[tuple[Slo, npt.NDArray[np.bool_]]]:
        """The SLOs that count this series, each with its good bucket columns (Slo's rule)."""
        found = self._matching.get(key)
        if found is None:
            _facility, service, route, method, status = key
            found = [
                (s, s.good_columns(status, self._upper))
                for s in self.slos
                if s.matches(service, route, method)
            ]
            self._matching[key] = found
        return found

    def _raw_state(self, hour: int, sid: int) -> _RawHour:
        st = self._raw.get((hour, sid))
        if st is None:
            st = self._raw[(hour, sid)] = self._load_raw(hour, sid)
        return st

    def _load_raw(self, hour: int, sid: int) -> _RawHour:
        """The stored row, to add to. One recorded with other bucket bounds (a gateway restarted
        with a changed threshold within the hour) continues in the merged layout of both:
        what it holds is kept, counted at its own bounds."""
        loaded = self.store.raw_hour(hour, sid)
        if loaded is None:
            return _RawHour(self.layout, np.zeros((60, self.n_cols), dtype=np.uint32))
        layout, cells = loaded
        if layout == self.layout:
            return _RawHour(layout, cells)
        stored = self.store.layouts()[layout]
        bounds = merged_bounds(stored, self.bounds_s)
        merged = self.store.layout_id(bounds)
        columns = None if merged == self.layout else column_map(self.bounds_s, bounds)
        return _RawHour(merged, fold_columns(cells, stored, bounds), columns)

    def _day_state(self, key: str, facility: str, day: int) -> U32:
        st = self._days.get((key, facility, day))
        if st is None:
            loaded = self.store.slo_day(key, facility, day)
            st = loaded.copy() if loaded is not None else np.zeros((2, MINUTES_PER_DAY), dtype=np.uint32)
            self._days[(key, facility, day)] = st
        return st

    def apply(
        self,
        batch: Mapping[tuple[SeriesKey, int], Sequence[int]],
        replace_minutes: Iterable[int] = (),
        exemplars: Mapping[tuple[SeriesKey, int], Sequence[Exemplar]] | None = None,
    ) -> None:
        """Add ``{(series key, minute start s): counts per bucket column}``.

        ``replace_minutes``: minutes whose recorded counts are discarded first
        (an import rebuilds the minutes its log covers). ``exemplars``: the slowest requests
        of some of those series and minutes, merged into each hour's slowest.
        """
        with self._lock:
            try:
                self._apply(batch, replace_minutes, exemplars or {})
            except BaseException:
                # The transaction rolled back, but the in-memory hours and days had the batch
                # added: forget them, so they are read again as stored and a retry of this
                # batch counts it once.
                self._raw.clear()
                self._days.clear()
                self.store.forget_cached_chunks()
                raise

    def _apply(
        self,
        batch: Mapping[tuple[SeriesKey, int], Sequence[int]],
        replace_minutes: Iterable[int],
        exemplars: Mapping[tuple[SeriesKey, int], Sequence[Exemplar]],
    ) -> None:
        with self.store.transaction():
            if self.shared:
                # Another writer may have changed any row since: start from what is stored.
                self._raw.clear()
                self._days.clear()
                self.store.forget_cached_chunks()
            dirty_raw: set[tuple[int, int]] = set()
            dirty_days: set[tuple[str, str, int]] = set()
            replaced = sorted(set(replace_minutes))
            if replaced:
                self._clear_minutes(replaced, dirty_raw, dirty_days)
            for (key, minute), counts in batch.items():
                sid = self.store.series_id(key)
                hour = minute - minute % 3600
                row = np.asarray(counts, dtype=np.uint32)
                self._raw_state(hour, sid).add((minute - hour) // 60, row)
                dirty_raw.add((hour, sid))
                total = int(row.sum())
                day = minute // 86400
                m = (minute % 86400) // 60
                for slo, good_cols in self._slos_for(key):
                    good = int(row[good_cols].sum())
                    for fac in (key[0], ALL_FACILITIES):
                        st = self._day_state(slo.key, fac, day)
                        st[0, m] += total
                        st[1, m] += good
                        dirty_days.add((slo.key, fac, day))
            targets = {s.key: s.timeslice_target for s in self.slos}
            self.store.write(
                ((h, s, self._raw[(h, s)].layout, self._raw[(h, s)].cells) for h, s in dirty_raw),
                (
                    (
                        k,
                        f,
                        d,
                        self._days[(k, f, d)],
                        hour_rollup(self._days[(k, f, d)], targets.get(k, 0.95)),
                    )
                    for k, f, d in dirty_days
                ),
            )
            if exemplars:
                slow: dict[tuple[int, int], list[Exemplar]] = {}
                for (key, minute), found in exemplars.items():
                    slow.setdefault((minute - minute % 3600, self.store.series_id(key)), []).extend(found)
                self.store.merge_exemplars(slow)
            self._evict(max((m for (_, m) in batch), default=0))

    def _clear_minutes(
        self,
        minutes: list[int],
        dirty_raw: set[tuple[int, int]],
        dirty_days: set[tuple[str, str, int]],
    ) -> None:
        hours = sorted({m - m % 3600 for m in minutes})
        for hour in hours:
            for h, sid, _layout, _a in self.store.raw_hours_between(hour, hour + 3600):
                self._raw_state(h, sid)
            for (h, sid), raw in self._raw.items():
                if h == hour:
                    for m in minutes:
                        if hour <= m < hour + 3600:
                            raw.cells[(m - hour) // 60] = 0
                    dirty_raw.add((h, sid))
        days = sorted({m // 86400 for m in minutes})
        keys = [s.key for s in self.slos]
        for day in days:
            for k, f, d in self.store.slo_minutes(keys, day, day):
                self._day_state(k, f, d)
            for (k, f, d), st in self._days.items():
                if d == day:
                    for m in minutes:
                        if m // 86400 == day:
                            st[:, (m % 86400) // 60] = 0
                    dirty_days.add((k, f, d))

    def _evict(self, latest_minute: int) -> None:
        """Forget arrays of hours and days that can no longer change."""
        hour_floor = latest_minute - latest_minute % 3600 - 3600
        for raw_key in [k for k in self._raw if k[0] < hour_floor]:
            del self._raw[raw_key]
        day_floor = latest_minute // 86400 - 1
        for day_key in [k for k in self._days if k[2] < day_floor]:
            del self._days[day_key]
