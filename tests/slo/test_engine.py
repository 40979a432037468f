"""Budget math against the SRE Workbook's figures, through the same functions `slo status` uses."""

from pathlib import Path

import numpy as np
import pytest

from slo.engine import ALERT_NAMES, ALERT_PAGE, ALERT_TICKET, Evaluation, alert_states, evaluate, window_sums
from slo.spec import load_slos
from slo.windows import SRE_WORKBOOK_WINDOWS, STATUS_WINDOWS_S, BurnWindow

OBJ = 0.999
BUDGET = 0.001  # the error budget of OBJ, as the engine takes it (Slo.error_budget)
PERIOD_30D = 30 * 86400
N_MIN = 72 * 60  # three days of minutes, hour-aligned
N_HOUR = 30 * 24


def _series(bad_minutes: int, per_minute: float = 1000.0, error_ratio: float = 1.0) -> tuple[np.ndarray, ...]:
    """30 days of steady traffic; the last ``bad_minutes`` minutes fail at ``error_ratio``."""
    mt = np.full((1, N_MIN), per_minute)
    ht = np.full((1, N_HOUR), per_minute * 60)
    mg, hg = mt.copy(), ht.copy()
    mg[0, N_MIN - bad_minutes :] = per_minute * (1 - error_ratio)
    return mt, mg, ht, hg


def _evaluate(
    mt: np.ndarray, mg: np.ndarray, ht: np.ndarray, hg: np.ndarray, error_budget: float = BUDGET
) -> Evaluation:
    burn_w = np.array([[w // 60 for w in STATUS_WINDOWS_S.values()]], dtype=np.int64)
    window = np.array([[PERIOD_30D // 60]], dtype=np.int64)
    return evaluate(
        window_sums(mt, ht, window)[:, 0],
        window_sums(mg, hg, window)[:, 0],
        window_sums(mt, ht, burn_w),
        window_sums(mg, hg, burn_w),
        np.array([error_budget]),
        np.array([float(PERIOD_30D)]),
        np.array([10.0]),
    )


def test_window_sums_use_minutes_then_hours() -> None:
    mt = np.arange(N_MIN, dtype=float)[None, :]
    ht = np.ones((1, 10)) * 1000
    got = window_sums(mt, ht, np.array([[1, 5, N_MIN, N_MIN + 120]]))
    last = N_MIN - 1
    assert got[0].tolist() == [last, sum(range(last - 4, last + 1)), mt.sum(), mt.sum() + 2000]


def test_workbook_factors_for_30_days() -> None:
    assert [round(w.factor(PERIOD_30D), 4) for w in SRE_WORKBOOK_WINDOWS] == [14.4, 6.0, 3.0, 1.0]
    assert [round(w.factor(28 * 86400), 4) for w in SRE_WORKBOOK_WINDOWS] == [13.44, 5.6, 2.8, 0.9333]


def test_burn_rate_one_spends_exactly_the_budget() -> None:
    # An error ratio of exactly 1 - objective for the whole window: burn rate 1, budget 0.
    mt = np.full((1, N_MIN), 1000.0)
    ht = np.full((1, N_HOUR), 60000.0)
    ev = _evaluate(mt, mt * OBJ, ht, ht * OBJ)
    assert ev.burn_rates["1h"][0] == pytest.approx(1.0)
    assert ev.window_burn_rate[0] == pytest.approx(1.0)
    assert ev.budget_remaining[0] == pytest.approx(0.0, abs=1e-9)
    assert ALERT_NAMES[ev.alert[0]] == "ticket"  # 1x sustained over 3d and 6h: the slow-burn ticket


@pytest.mark.parametrize(
    ("rate", "long_min", "spent", "alert"),
    [
        (14.4, 60, 0.02, "page"),  # 14.4x for 1h: 2% of a 30-day budget
        (6.0, 360, 0.05, "page"),  # 6x for 6h: 5%
        (3.0, 1440, 0.10, "ticket"),  # 3x for 1d: 10%
        (1.0, 4320, 0.10, "ticket"),  # 1x for 3d: 10%
    ],
)
def test_workbook_windows_spend_their_fraction_and_fire(
    rate: float, long_min: int, spent: float, alert: str
) -> None:
    # Traffic elsewhere has no errors; the last `long_min` minutes burn at `rate`.
    mt, mg, ht, hg = _series(long_min, error_ratio=rate * (1 - OBJ))
    ev = _evaluate(mt, mg, ht, hg)
    assert 1 - ev.budget_remaining[0] == pytest.approx(spent, rel=1e-6)
    assert ALERT_NAMES[ev.alert[0]] == alert
    # Just below the threshold it does not fire at that severity.
    mt, mg, ht, hg = _series(long_min, error_ratio=rate * 0.97 * (1 - OBJ))
    assert ALERT_NAMES[_evaluate(mt, mg, ht, hg).alert[0]] != alert


def test_exhaustion_and_overspend() -> None:
    mt, mg, ht, hg = _series(600, error_ratio=0.1)  # 100x burn for ten hours: 139% of the budget
    ev = _evaluate(mt, mg, ht, hg)
    assert ev.budget_remaining[0] < 0
    assert ev.exhaustion_hours[0] == 0.0
    mt, mg, ht, hg = _series(60, error_ratio=2 * (1 - OBJ))  # 2x burn for the last hour
    ev = _evaluate(mt, mg, ht, hg)
    remaining = ev.budget_remaining[0]
    assert ev.exhaustion_hours[0] == pytest.approx(remaining * 720 / 2.0)


def test_no_traffic_is_no_data_not_100_or_0() -> None:
    z = np.zeros((1, N_MIN))
    zh = np.zeros((1, N_HOUR))
    ev = _evaluate(z, z, zh, zh)
    assert np.isnan(ev.sli[0])
    assert ev.budget_remaining[0] == 1.0
    assert all(np.isnan(v[0]) for v in ev.burn_rates.values())
    assert ALERT_NAMES[ev.alert[0]] == "none"
    assert np.isnan(ev.exhaustion_hours[0])


def test_low_traffic_below_min_events_never_pages() -> None:
    # 5 requests in the last hour, all failing: no burn rate over 5m/1h (below 10 events).
    mt = np.zeros((1, N_MIN))
    mt[0, -5:] = 1
    ev = _evaluate(mt, np.zeros_like(mt), np.zeros((1, N_HOUR)), np.zeros((1, N_HOUR)))
    assert np.isnan(ev.burn_rates["5m"][0]) and np.isnan(ev.burn_rates["1h"][0])
    assert ALERT_NAMES[ev.alert[0]] == "none"
    assert ev.sli[0] == 0.0  # the SLI itself is still reported


def test_vectorised_rows_are_independent() -> None:
    a = _series(60, error_ratio=14.4 * (1 - OBJ))
    b = _series(0)
    mt, mg, ht, hg = (np.vstack([x, y]) for x, y in zip(a, b, strict=True))
    ev = _evaluate(mt, mg, ht, hg)
    assert [ALERT_NAMES[x] for x in ev.alert] == ["page", "none"]
    assert ev.budget_remaining[1] == 1.0


def test_a_custom_window_table_changes_only_the_alert() -> None:

    mt, mg, ht, hg = _series(60, error_ratio=20 * (1 - OBJ))  # 20x over the last hour
    ev = _evaluate(mt, mg, ht, hg)
    assert ALERT_NAMES[ev.alert[0]] == "page"  # the Workbook's 14.4x page
    strict = (BurnWindow("page", "1h", "5m", 0.05, "5% in an hour"),)  # 36x over a 30-day period
    got = alert_states(ev.burn_rates, np.array([BUDGET]), np.array([float(PERIOD_30D)]), strict)
    assert ALERT_NAMES[got[0]] == "none"


def test_slo_status_fires_at_the_thresholds_the_alert_rules_compare_against() -> None:
    """The golden SLO mix (30d 99.9%, 28d 99%, a calendar month, a 7d 90% with its own capped
    windows): at each window's rule threshold `slo status` raises that severity, and just
    below it (one part in a million) it does not."""
    slos = load_slos(Path(__file__).resolve().parents[1] / "golden" / "alerts" / "slos.yaml")
    checked = 0
    for slo in slos:
        for w in slo.alerting_windows:
            threshold = slo.burn_threshold(w)
            level = ALERT_PAGE if w.severity == "page" else ALERT_TICKET
            for burn, expect in ((threshold, True), (threshold * (1 - 1e-6), False)):
                rates = {n: np.array([0.0]) for n in STATUS_WINDOWS_S}
                rates[w.long] = rates[w.short] = np.array([burn])
                got = alert_states(rates, np.array([slo.error_budget]), np.array([slo.period_s]), [w])
                assert bool(got[0] == level) is expect, (slo.name, w, burn)
                checked += 1
    assert checked >= 12
