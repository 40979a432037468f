"""Counts from the embedded store, as arrays for the engine.

For ``now`` the arrays are: minutes from three hours-aligned days before the
current hour up to the current minute (every burn-rate window fits), and
hours before that as far as the longest SLO window reaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from slo.engine import timeslices, window_sums
from slo.status import Counts, RowSpec
from slo.store import CHUNK_DAYS, MINUTES_PER_DAY, Store
from slo.windows import STATUS_WINDOWS_S

RECENT_HOURS = 72
Counts32 = npt.NDArray[np.uint32]


def _placement(
    index: dict[tuple[str, str], int], ids: list[tuple[str, str, int]], day0: int
) -> tuple[list[int], list[int], list[int]]:
    """For each stored row that belongs to a status row: (status row, day offset, stored row)."""
    rows, days, picks = [], [], []
    for j, (key, fac, day) in enumerate(ids):
        i = index.get((key, fac))
        if i is not None:
            rows.append(i)
            days.append(day - day0)
            picks.append(j)
    return rows, days, picks


def _channel(
    shape: tuple[int, int, int],
    place: tuple[list[int], list[int], list[int]],
    stored: np.ndarray | None,
    ch: int,
) -> Counts32:
    """One channel (total, good, ...) of every status row, its days side by side."""
    out = np.zeros(shape, dtype=np.uint32)
    rows, days, picks = place
    if picks and stored is not None:
        out[rows, days] = stored[picks, ch]
    return out.reshape(shape[0], shape[1] * shape[2])


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
        keys = sorted({r.slo.key for r in rows})
        md0, md1 = m_start // 86400, now_min // 86400
        hd0, hd1 = h_start // 86400, (m_start - 1) // 86400
        R = len(rows)
        index = {(r.slo.key, r.facility): i for i, r in enumerate(rows)}
        # Every row's days side by side, placed in bulk; one array per channel.
        m_ids, m_arr = self.store.slo_arrays("slo_minutes", keys, md0, md1)
        m_place = _placement(index, m_ids, md0)
        m_shape = (R, md1 - md0 + 1, MINUTES_PER_DAY)
        m_off = (m_start - md0 * 86400) // 60
        mt, mg = (_channel(m_shape, m_place, m_arr, ch)[:, m_off : m_off + n_min] for ch in (0, 1))
        c0, c1 = hd0 // CHUNK_DAYS, hd1 // CHUNK_DAYS
        h_off = (h_start - c0 * CHUNK_DAYS * 86400) // 3600
        h_ids, h_arr = self.store.slo_arrays("slo_hours", keys, c0, c1)
        h_place = _placement(index, h_ids, c0)
        h_shape = (R, c1 - c0 + 1, CHUNK_DAYS * 24)
        ht = np.stack([_channel(h_shape, h_place, h_arr, ch)[:, h_off : h_off + n_hour] for ch in range(4)])
        ht = ht.transpose(1, 0, 2)
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
