"""Burn-rate alert windows: the multiwindow, multi-burn-rate table as data.

Source: Google SRE Workbook, chapter 5 "Alerting on SLOs", table 5-8
(https://sre.google/workbook/alerting-on-slos/). Each row is stated as the
fraction of a 30-day budget it lets burn before firing; the burn-rate factor
for any other SLO period follows as ``budget_fraction x period / long_window``
(the formula Sloth uses), so a 30-day SLO gets the book's 14.4, 6, 3 and 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, overload

import numpy as np
import numpy.typing as npt

Num = TypeVar("Num", float, npt.NDArray[np.float64])

BURN_TOLERANCE = 1e-9
"""Relative: a burn rate this close below a threshold is floating-point error, and fires."""

# The windows every status reports a burn rate over, in seconds.
STATUS_WINDOWS_S: dict[str, int] = {
    "5m": 300,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "6h": 21600,
    "1d": 86400,
    "3d": 259200,
}

NOMINAL_PERIOD_S = {"month": 30 * 86400, "quarter": 90 * 86400}
"""Calendar windows burn against a nominal period, as alert rules must use constants."""


@dataclass(frozen=True)
class BurnWindow:
    severity: str
    long: str
    short: str
    budget_fraction: float
    why: str

    @property
    def long_s(self) -> int:
        return STATUS_WINDOWS_S[self.long]

    @property
    def short_s(self) -> int:
        return STATUS_WINDOWS_S[self.short]

    def factor(self, period_s: float) -> float:
        """The burn rate at which this window fires, for an SLO over ``period_s``."""
        return self.budget_fraction * period_s / self.long_s

    def threshold(self, period_s: Num, error_budget: Num) -> Num:
        """The burn rate that fires, capped at a total outage's (1 / budget): a 90% SLO can
        burn at most 10x, so the Workbook's 14.4x page would never fire; here a total
        outage always does. Rounded to 6 decimals, as the alert rules write it: the one
        number the rules compare against, the dashboards draw and ``slo status`` uses (for
        one SLO, or for arrays of periods and error budgets: ``Slo.error_budget``)."""
        capped = np.round(np.minimum(self.budget_fraction * period_s / self.long_s, 1.0 / error_budget), 6)
        return capped if isinstance(capped, np.ndarray) else float(capped)  # type: ignore[return-value]


@overload
def fires(burn_rate: float, threshold: float) -> bool: ...


@overload
def fires(
    burn_rate: npt.NDArray[np.float64], threshold: npt.NDArray[np.float64] | float
) -> npt.NDArray[np.bool_]: ...


def fires(
    burn_rate: float | npt.NDArray[np.float64], threshold: float | npt.NDArray[np.float64]
) -> bool | npt.NDArray[np.bool_]:
    """Whether a burn rate reaches a window's threshold (NaN, no data, never does)."""
    with np.errstate(invalid="ignore"):
        out = burn_rate >= threshold * (1 - BURN_TOLERANCE)
    return out if isinstance(out, np.ndarray) else bool(out)


SRE_WORKBOOK_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("page", "1h", "5m", 0.02, "2% of the budget in an hour: an outage, wake someone"),
    BurnWindow("page", "6h", "30m", 0.05, "5% in six hours: a serious slow burn, still urgent"),
    BurnWindow("ticket", "1d", "2h", 0.10, "10% in a day: fix this week"),
    BurnWindow("ticket", "3d", "6h", 0.10, "10% in three days: a chronic leak"),
)


def period_s(window_s: float | None, calendar: str | None) -> float:
    if window_s is not None:
        return window_s
    assert calendar is not None
    return NOMINAL_PERIOD_S[calendar]
