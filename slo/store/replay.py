"""Per-SLO counts rebuilt from the raw history: an SLO defined (or redefined) after the
traffic was recorded, and a gateway that restarts in the middle of a day."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from core.conventions import ALL_FACILITIES
from slo.spec import LE_TOLERANCE_S, Slo
from slo.store.cells import U32
from slo.store.database import MINUTES_PER_DAY, SeriesKey, Store
from slo.store.writer import hour_rollup


def good_per_row(arr: U32, good_columns: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint64]:
    """Per row of ``arr``, the requests in the good columns (``Slo.good_columns``)."""
    out: npt.NDArray[np.uint64] = (
        arr.sum(axis=1, dtype=np.uint64)
        if good_columns.all()  # (no column copy: a replay reads the whole history)
        else arr[:, good_columns].sum(axis=1, dtype=np.uint64)
    )
    return out


def replay(store: Store, slos: Sequence[Slo]) -> list[str]:
    """Compute per-SLO counts from the raw history for SLOs that have none yet (an SLO
    defined, or redefined, after the traffic was recorded). Returns the keys replayed.

    Minutes come from the raw minute rows; days older than those only from the hourly
    roll-ups, so timeslice counts there are not known (left at zero).
    """
    missing = [s for s in slos if not store.has_slo_data(s.key)]
    if missing:
        rebuild(store, missing, 0)
    return [s.key for s in missing]


def catch_up(store: Store, slos: Sequence[Slo]) -> list[str]:
    """Bring every SLO's counts up to the raw history before recording starts.

    An SLO first replayed by ``slo status`` while a gateway without it kept recording
    has a gap since; a restart continues in the middle of a day. Both are rebuilt from
    the raw rows (the record of everything), from each SLO's last day on. Returns the
    keys rebuilt in full (no counts at all before).
    """
    fresh = replay(store, slos)
    known = [s for s in slos if s.key not in fresh]
    lasts = [day for s in known if (day := store.last_slo_day(s.key)) is not None]
    raw_last = store.last_raw_hour()
    if known and lasts and raw_last is not None and raw_last // 86400 >= min(lasts):
        rebuild(store, known, min(lasts))
    return fresh


def rebuild(store: Store, slos: Sequence[Slo], from_day: int) -> None:
    """Recompute the per-SLO rows of ``slos`` for every day from ``from_day`` on, from raw."""
    series = store.all_series()
    layouts = {i: np.array([*b, np.inf]) for i, b in store.layouts().items()}

    def good_fraction(slo: Slo, key: SeriesKey, layout: int, arr: U32) -> npt.NDArray[np.uint64]:
        return good_per_row(arr, slo.good_columns(key[4], layouts[layout]))

    days: dict[tuple[str, str, int], U32] = {}
    hour_only: dict[tuple[str, str, int], U32] = {}
    rounded: dict[str, dict[float, int]] = {}
    # Per (SLO, layout): the bound its threshold is counted at, None when exact. Once per
    # layout, not per row: a replay reads every raw row of the history.
    inexact: dict[tuple[str, int], float | None] = {}

    def note_bound(slo: Slo, layout: int, day: int) -> None:
        key = (slo.key, layout)
        if key not in inexact:
            bound = slo.bucket_bound(layouts[layout])
            exact = slo.threshold_s is None or abs(bound - slo.threshold_s) <= LE_TOLERANCE_S
            inexact[key] = None if exact else bound
        bound_s = inexact[key]
        if bound_s is not None:
            by_bound = rounded.setdefault(slo.key, {})
            by_bound[bound_s] = max(day, by_bound.get(bound_s, day))

    first_minute_day: int | None = None
    for hour, sid, layout, arr in store.raw_hours_between(from_day * 86400, 2**62):
        key = series[sid]
        day = hour // 86400
        first_minute_day = day if first_minute_day is None else min(first_minute_day, day)
        off = (hour % 86400) // 60
        total = arr.sum(axis=1, dtype=np.uint64)
        for slo in slos:
            if not slo.matches(key[1], key[2], key[3]):
                continue
            if slo.kind == "latency":
                note_bound(slo, layout, day)
            good = good_fraction(slo, key, layout, arr)
            for fac in (key[0], ALL_FACILITIES):
                st = days.setdefault((slo.key, fac, day), np.zeros((2, MINUTES_PER_DAY), dtype=np.uint32))
                st[0, off : off + 60] += total.astype(np.uint32)
                st[1, off : off + 60] += good.astype(np.uint32)
    for day, sid, layout, arr in store.raw_days_between(from_day, 2**31):
        if first_minute_day is not None and day >= first_minute_day:
            continue
        key = series[sid]
        total = arr.sum(axis=1, dtype=np.uint64)
        for slo in slos:
            if slo.matches(key[1], key[2], key[3]):
                if slo.kind == "latency":
                    note_bound(slo, layout, day)
                good = good_fraction(slo, key, layout, arr)
                for fac in (key[0], ALL_FACILITIES):
                    st = hour_only.setdefault((slo.key, fac, day), np.zeros((4, 24), dtype=np.uint32))
                    st[0] += total.astype(np.uint32)
                    st[1] += good.astype(np.uint32)
    targets = {s.key: s.timeslice_target for s in slos}
    store.put_slo_defs(slos)
    store.write((), ((k, f, d, a, hour_rollup(a, targets[k])) for (k, f, d), a in days.items()))
    store.write_hours((k, f, d, a) for (k, f, d), a in hour_only.items())
    store.note_bucket_bounds(rounded)
