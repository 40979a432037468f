"""Counts from the embedded store, as arrays for the engine.

For ``now`` the arrays are: minutes from three hours-aligned days before the
current hour up to the current minute (every burn-rate window fits), and
hours before that as far as the longest SLO window reaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt

from core.conventions import ALL_FACILITIES
from slo.engine import timeslices, window_sums
from slo.spec import Slo
from slo.status import Counts, RowSpec, StatusRow, bucket_bound_entry
from slo.store import Store
from slo.windows import STATUS_WINDOWS_S

RECENT_HOURS = 72
Counts32 = npt.NDArray[np.uint32]


class EmbeddedBackend:
    def __init__(self, store: Store) -> None:
        self.store = store

    def arrays(
        self, rows: Sequence[RowSpec], now_s: float
    ) -> tuple[Counts32, Counts32, Counts32, Counts32, Counts32, Counts32, int, int]:
        """Per row: minute (total, good), hour (total, good) and hour slice arrays, plus
        the first minute's and first hour's start (seconds)."""
        now_min = int(now_s // 60 * 60)
        hour0 = now_min - now_min % 3600
        m_start = hour0 - RECENT_HOURS * 3600
        n_min = (now_min - m_start) // 60 + 1
        longest = max(r.window_min for r in rows)
        n_hour = max(0, math.ceil((longest - n_min) / 60)) + 1
        h_start = m_start - n_hour * 3600
        R = len(rows)
        index = {(r.slo.key, r.facility): i for i, r in enumerate(rows)}
        minutes = self.store.slo_minute_counts(index, R, m_start, n_min)
        mt, mg = minutes[:, 0].copy(), minutes[:, 1].copy()
        ht = self.store.slo_hour_counts(index, R, h_start, n_hour).copy()
        self._exclude_maintenance(rows, mt, mg, ht, m_start, h_start)
        return mt, mg, ht[:, 0], ht[:, 1], ht[:, 2], ht[:, 3], m_start, h_start

    @staticmethod
    def _exclude_maintenance(
        rows: Sequence[RowSpec], mt: Counts32, mg: Counts32, ht: Counts32, m_start: int, h_start: int
    ) -> None:
        """Zero minutes (and whole hours) inside maintenance windows. For the ``*`` row,
        subtract the facility's own counts for those times."""
        index = {(r.slo.key, r.facility): i for i, r in enumerate(rows)}
        for i, r in enumerate(rows):
            if r.facility == ALL_FACILITIES:
                continue
            star = index.get((r.slo.key, ALL_FACILITIES))
            for mw in r.maintenance:
                a = max(0, int((mw.start.timestamp() - m_start) // 60))
                b = max(0, math.ceil((mw.end.timestamp() - m_start) / 60))
                ha = max(0, math.ceil((mw.start.timestamp() - h_start) / 3600))
                hb = max(0, int((mw.end.timestamp() - h_start) // 3600))
                hb = min(hb, ht.shape[2])
                if star is not None:
                    mt[star, a:b] -= mt[i, a:b]
                    mg[star, a:b] -= mg[i, a:b]
                    if hb > ha:
                        ht[star, :, ha:hb] -= ht[i, :, ha:hb]
                mt[i, a:b] = 0
                mg[i, a:b] = 0
                if hb > ha:
                    ht[i, :, ha:hb] = 0

    def counts(self, rows: Sequence[RowSpec], now_s: float) -> Counts:
        mt, mg, ht, hg, hs, hsg, _, _ = self.arrays(rows, now_s)
        # Column 0: the SLO window; then the burn-rate windows. One cumulative sum per array.
        windows = np.array(
            [[r.window_min, *(w // 60 for w in STATUS_WINDOWS_S.values())] for r in rows], dtype=np.int64
        )
        req_total = window_sums(mt, ht, windows)
        req_good = window_sums(mg, hg, windows)
        total, good = req_total, req_good
        slices = np.array([r.slo.budgeting == "timeslices" for r in rows])
        if slices.any():
            target = np.array([r.slo.timeslice_target for r in rows])
            sl = np.flatnonzero(slices)
            st, sg = timeslices(mt[sl], mg[sl], target[sl])
            total, good = req_total.copy(), req_good.copy()
            total[sl] = window_sums(st, hs[sl], windows[sl])
            good[sl] = window_sums(sg, hsg[sl], windows[sl])
        return Counts(total[:, 0], good[:, 0], total[:, 1:], good[:, 1:], req_total[:, 0], req_good[:, 0])


def note_threshold_buckets(store: Store, slos: Sequence[Slo], rows: Sequence[StatusRow]) -> None:
    """Fill each latency row's ``threshold_buckets``: the bucket bounds other than its threshold
    that replayed history inside its window was counted at."""
    by_name = {s.name: s for s in slos}
    for r in rows:
        slo = by_name.get(r.slo)
        if slo is None or slo.threshold_s is None:
            continue
        from_day = int(datetime.fromisoformat(r.window_start).timestamp() // 86400)
        r.threshold_buckets = [
            bucket_bound_entry(slo.threshold_s, bound) for bound in store.bucket_bounds(slo.key, from_day)
        ]
