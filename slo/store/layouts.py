"""Bucket layouts: the latency-bucket bounds a raw row was counted with.

A row of raw counts has one column per bound and a last one for +Inf. The bounds change when
an SLO's latency threshold does (the gateway makes every threshold a bound), so two writers of
one (hour, series) row may count with different layouts: a gateway restarted with a new
threshold inside the hour. Such a row is kept in the union of both layouts, where every column
of either has a column with the same upper bound, so both sets of counts fold in exactly and
nothing recorded is lost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from slo.spec import LE_TOLERANCE_S
from slo.store.cells import U32


def merged_bounds(*layouts: Sequence[float]) -> tuple[float, ...]:
    """Every bound of these layouts, ascending, bounds closer than LE_TOLERANCE_S once (the
    same threshold spelt as two floats)."""
    out: list[float] = []
    for bound in sorted({float(b) for layout in layouts for b in layout}):
        if not out or bound - out[-1] > LE_TOLERANCE_S:
            out.append(bound)
    return tuple(out)


def column_map(from_bounds: Sequence[float], to_bounds: Sequence[float]) -> npt.NDArray[np.intp]:
    """For each column of ``from_bounds`` (and +Inf), the column of ``to_bounds`` with the
    smallest upper bound at or above it: the same bound when ``to_bounds`` has it, as a
    merged layout always does."""
    upper_to = np.array([*to_bounds, np.inf])
    upper_from = np.array([*from_bounds, np.inf])
    cols: npt.NDArray[np.intp] = np.searchsorted(upper_to, upper_from - LE_TOLERANCE_S, side="left")
    return cols


def fold_columns(cells: U32, from_bounds: Sequence[float], to_bounds: Sequence[float]) -> U32:
    """``cells`` (rows x columns of ``from_bounds``) re-counted in the columns of ``to_bounds``:
    every count kept, each in the column of its own bound."""
    out = np.zeros((cells.shape[0], len(to_bounds) + 1), dtype=np.uint32)
    for j, col in enumerate(column_map(from_bounds, to_bounds)):
        out[:, col] += cells[:, j]  # (one by one: two columns may land in one)
    return out
