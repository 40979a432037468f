"""SLIs, error budgets, burn rates and alert states: pure numpy, no I/O.

Rows are (SLO, facility) pairs; every function works on all rows at once.
Counts arrive either as per-window sums (``evaluate``) or as time series
(``window_sums``): a minute array for the recent past and an hour array before
it, so a 90-day calendar window costs 2,160 numbers a row, not 129,600.

Conventions (as in Sloth, Pyrra and the SRE Workbook):
- ratios are 0..1; ``budget_remaining`` is 1 untouched, 0 spent, negative overspent;
- burn rate = error ratio / error budget (``Slo.error_budget``, 1 - objective): 1 spends
  exactly the budget over the period;
- a window with fewer events than ``min_events`` has no burn rate (NaN): no data is
  neither 100% nor 0%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from slo.windows import SRE_WORKBOOK_WINDOWS, STATUS_WINDOWS_S, BurnWindow, fires

F64 = npt.NDArray[np.float64]
ALERT_NONE, ALERT_TICKET, ALERT_PAGE = 0, 1, 2
ALERT_NAMES = ("none", "ticket", "page")


@dataclass(frozen=True)
class Evaluation:
    """Per-row results; NaN means no data."""

    total: F64
    good: F64
    sli: F64
    budget_allowed: F64
    budget_consumed: F64
    budget_remaining: F64
    burn_rates: dict[str, F64]
    window_burn_rate: F64
    alert: npt.NDArray[np.int8]
    exhaustion_hours: F64


def window_sums(
    minute_counts: npt.NDArray[np.floating | np.integer],
    hour_counts: npt.NDArray[np.floating | np.integer],
    windows_min: npt.NDArray[np.int64],
) -> F64:
    """Sums over the last ``windows_min[r, w]`` minutes of each row.

    ``minute_counts[r, m]``: the most recent minutes, oldest first, the first one at
    an hour boundary. ``hour_counts[r, h]``: the hours before that, oldest first.
    Windows reaching past the minute array continue in whole hours (a window
    start inside an hour is rounded to the nearest hour boundary).
    """
    rows, n_min = minute_counts.shape
    n_hour = hour_counts.shape[1]
    cm = np.zeros((rows, n_min + 1))
    np.cumsum(minute_counts[:, ::-1], axis=1, out=cm[:, 1:])  # cm[:, k]: sum of the last k minutes
    ch = np.zeros((rows, n_hour + 1))
    np.cumsum(hour_counts[:, ::-1], axis=1, out=ch[:, 1:])  # ch[:, k]: sum of the last k hours
    w = np.asarray(windows_min, dtype=np.int64)
    in_minutes = np.minimum(w, n_min)
    extra_hours = np.clip(np.rint((w - n_min) / 60.0).astype(np.int64), 0, n_hour)
    r = np.arange(rows)[:, None]
    out: F64 = cm[r, in_minutes] + ch[r, extra_hours]
    return out


def burn_rate(total: F64, good: F64, error_budget: F64, min_events: F64) -> F64:
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = ((total - good) / total) / error_budget
    out: F64 = np.where(total >= np.maximum(min_events, 1), rate, np.nan)
    return out


def evaluate(
    window_total: F64,
    window_good: F64,
    burn_total: F64,
    burn_good: F64,
    error_budget: F64,
    period_s: F64,
    min_events: F64,
    windows: Sequence[BurnWindow] = SRE_WORKBOOK_WINDOWS,
) -> Evaluation:
    """Everything for all rows at once.

    ``window_*[r]``: counts over each row's SLO window. ``burn_*[r, i]``: counts over
    ``STATUS_WINDOWS_S`` in order. ``error_budget`` each row's ``Slo.error_budget``,
    ``period_s`` the SLO period.
    """
    names = list(STATUS_WINDOWS_S)
    total = window_total.astype(np.float64)
    good = window_good.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sli = np.where(total > 0, good / total, np.nan)
    allowed = error_budget * total
    consumed = total - good
    with np.errstate(divide="ignore", invalid="ignore"):
        remaining = np.where(allowed > 0, 1.0 - consumed / allowed, np.where(total > 0, np.nan, 1.0))
    rates = {
        n: burn_rate(burn_total[:, i], burn_good[:, i], error_budget, min_events) for i, n in enumerate(names)
    }
    window_rate = burn_rate(total, good, error_budget, min_events)

    alert = alert_states(rates, error_budget, period_s, windows)

    # Hours until the budget is gone at the last hour's burn (the 1h rate, else the window's).
    current = np.where(np.isnan(rates["1h"]), window_rate, rates["1h"])
    period_h = period_s / 3600.0
    with np.errstate(divide="ignore", invalid="ignore"):
        hours = np.where(current > 0, np.maximum(remaining, 0.0) * period_h / current, np.nan)
    hours = np.where(remaining <= 0, 0.0, hours)
    return Evaluation(
        total=total,
        good=good,
        sli=sli,
        budget_allowed=allowed,
        budget_consumed=consumed,
        budget_remaining=remaining,
        burn_rates=rates,
        window_burn_rate=window_rate,
        alert=alert,
        exhaustion_hours=hours,
    )


def alert_states(
    rates: dict[str, F64], error_budget: F64, period_s: F64, windows: Sequence[BurnWindow]
) -> npt.NDArray[np.int8]:
    """Page, ticket or none per row, from burn rates over STATUS_WINDOWS_S and a window table:
    each window's threshold and firing test are the ones the alert rules use."""
    alert = np.zeros(error_budget.shape, dtype=np.int8)
    for bw in windows:
        threshold = bw.threshold(period_s, error_budget)
        both = fires(rates[bw.long], threshold) & fires(rates[bw.short], threshold)
        level = ALERT_PAGE if bw.severity == "page" else ALERT_TICKET
        alert = np.where(both & (alert < level), np.int8(level), alert)
    return alert


def good_minutes(total: F64, good: F64, target: F64 | float) -> npt.NDArray[np.bool_]:
    """The timeslice rule: a minute is good when its good ratio meets ``target`` (less a hair
    for floating-point error); a minute with no requests is no data, never good."""
    has: npt.NDArray[np.bool_] = total > 0
    with np.errstate(invalid="ignore"):
        out: npt.NDArray[np.bool_] = has & (good >= target * total - 1e-9)
    return out


def timeslices(
    total: npt.NDArray[np.floating | np.integer],
    good: npt.NDArray[np.floating | np.integer],
    target: F64,
) -> tuple[F64, F64]:
    """Per-minute slices: (minutes with data, good minutes). A minute is good when its
    good ratio meets ``target[r]``; a minute with no requests is no data, not good."""
    t = np.asarray(total, dtype=np.float64)
    g = np.asarray(good, dtype=np.float64)
    return (t > 0).astype(np.float64), good_minutes(t, g, target[:, None]).astype(np.float64)
