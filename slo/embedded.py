"""Counts from the embedded store, as arrays for the engine.

For ``now`` the arrays are: minutes from three hours-aligned days before the
current hour up to the current minute (every burn-rate window fits), and
hours before that as far as the longest SLO window reaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from slo.engine import F64, timeslices, window_sums
from slo.status import Counts, RowSpec
from slo.store import MINUTES_PER_DAY, Store
from slo.windows import STATUS_WINDOWS_S

RECENT_HOURS = 72


def _concat(
    blobs: dict[tuple[str, str, int], np.ndarray],
    key: str,
    fac: str,
    day0: int,
    day1: int,
    shape: tuple[int, int],
) -> np.ndarray:
    parts = []
    for d in range(day0, day1 + 1):
        a = blobs.get((key, fac, d))
        parts.append(a if a is not None else np.zeros(shape, dtype=np.uint32))
    return np.concatenate(parts, axis=1)


class EmbeddedBackend:
    def __init__(self, store: Store) -> None:
        self.store = store

    def arrays(self, rows: Sequence[RowSpec], now_s: float) -> tuple[F64, F64, F64, F64, F64, F64, int, int]:
        """Per row: minute (total, good), hour (total, good) and hour slice arrays, plus
        the first minute's and first hour's start (seconds)."""
        now_min = int(now_s // 60 * 60)
        hour0 = now_min - now_min % 3600
        m_start = hour0 - RECENT_HOURS * 3600
        n_min = (now_min - m_start) // 60 + 1
        longest = max(r.window_min for r in rows)
        n_hour = max(0, math.ceil((longest - n_min) / 60)) + 1
        h_start = m_start - n_hour * 3600
        keys = sorted({r.slo.key for r in rows})
        md0, md1 = m_start // 86400, now_min // 86400
        hd0, hd1 = h_start // 86400, (m_start - 1) // 86400
        minutes = self.store.slo_minutes(keys, md0, md1)
        hours = self.store.slo_hours(keys, hd0, hd1)
        R = len(rows)
        mt = np.zeros((R, n_min))
        mg = np.zeros((R, n_min))
        ht = np.zeros((R, 4, n_hour))
        m_off = (m_start - md0 * 86400) // 60
        h_off = (h_start - hd0 * 86400) // 3600
        for i, r in enumerate(rows):
            m = _concat(minutes, r.slo.key, r.facility, md0, md1, (2, MINUTES_PER_DAY))
            mt[i] = m[0, m_off : m_off + n_min]
            mg[i] = m[1, m_off : m_off + n_min]
            if n_hour:
                h = _concat(hours, r.slo.key, r.facility, hd0, hd1, (4, 24))
                ht[i] = h[:, h_off : h_off + n_hour]
        self._exclude_maintenance(rows, mt, mg, ht, m_start, h_start)
        return mt, mg, ht[:, 0], ht[:, 1], ht[:, 2], ht[:, 3], m_start, h_start

    @staticmethod
    def _exclude_maintenance(
        rows: Sequence[RowSpec], mt: F64, mg: F64, ht: F64, m_start: int, h_start: int
    ) -> None:
        """Zero minutes (and whole hours) inside maintenance windows. For the ``*`` row,
        subtract the facility's own counts for those times."""
        index = {(r.slo.key, r.facility): i for i, r in enumerate(rows)}
        for i, r in enumerate(rows):
            if r.facility == "*":
                continue
            star = index.get((r.slo.key, "*"))
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
        burn_min = np.array([[w // 60 for w in STATUS_WINDOWS_S.values()]] * len(rows), dtype=np.int64)
        window_min = np.array([[r.window_min] for r in rows], dtype=np.int64)
        req_total = window_sums(mt, ht, window_min)[:, 0]
        req_good = window_sums(mg, hg, window_min)[:, 0]
        wt, wg = req_total.copy(), req_good.copy()
        bt = window_sums(mt, ht, burn_min)
        bg = window_sums(mg, hg, burn_min)
        slices = np.array([r.slo.budgeting == "timeslices" for r in rows])
        if slices.any():
            target = np.array([r.slo.timeslice_target for r in rows])
            st, sg = timeslices(mt, mg, target)
            s_wt = window_sums(st, hs, window_min)[:, 0]
            s_wg = window_sums(sg, hsg, window_min)[:, 0]
            s_bt = window_sums(st, hs, burn_min)
            s_bg = window_sums(sg, hsg, burn_min)
            wt = np.where(slices, s_wt, wt)
            wg = np.where(slices, s_wg, wg)
            bt = np.where(slices[:, None], s_bt, bt)
            bg = np.where(slices[:, None], s_bg, bg)
        return Counts(wt, wg, bt, bg, req_total, req_good)
