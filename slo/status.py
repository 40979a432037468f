"""SLO status: per (SLO, facility) rows from a counts backend and the engine.

Windows are resolved here: rolling windows are the last N days; calendar
windows start at the beginning of the facility's own month or quarter in its
time zone (DST-correct through zoneinfo), and the all-facilities row (``*``)
uses UTC. Maintenance windows are excluded from the counts and listed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np

from core.conventions import ALL_FACILITIES
from slo.engine import ALERT_NAMES, F64, alert_states, evaluate
from slo.spec import Facility, Maintenance, Slo, contractual_slos
from slo.windows import SRE_WORKBOOK_WINDOWS, STATUS_WINDOWS_S


@dataclass(frozen=True)
class RowSpec:
    slo: Slo
    facility: str
    timezone: str
    window_start_s: float
    window_min: int
    maintenance: tuple[Maintenance, ...] = ()


@dataclass(frozen=True)
class Counts:
    """Per row: counts over the SLO window, and over each of STATUS_WINDOWS_S (columns).
    For timeslice SLOs the counts are minutes (with data, good), not requests."""

    window_total: F64
    window_good: F64
    burn_total: F64
    burn_good: F64
    request_total: F64
    request_good: F64


class CountsBackend(Protocol):
    def counts(self, rows: Sequence[RowSpec], now_s: float) -> Counts: ...


@dataclass
class StatusRow:
    slo: str
    facility: str
    service: str
    objective: float
    window: str
    total: int
    good: int
    sli: float | None
    budget_remaining: float | None
    burn_rates: dict[str, float | None]
    alert: str
    exhaustion_hours: float | None
    facility_name: str = ""
    sla: float | None = None
    """The facility's contractual SLA (None: it has none, or all facilities together)."""
    sla_met: bool | None = None
    """The SLI against ``sla``; None where the SLA does not judge this SLO (``contractual``
    false: a latency SLO is never compared with an availability SLA), as in the report."""
    contractual: bool = True
    """Whether the facility's SLA is judged on this SLO (``slo.spec.contractual_slos``)."""
    objective_met: bool | None = None
    budgeting: str = "occurrences"
    window_start: str = ""
    budget_allowed: float = 0.0
    budget_consumed: float = 0.0
    requests_total: int = 0
    requests_good: int = 0
    maintenance: list[dict[str, str]] = field(default_factory=list)
    no_data_1h: bool = False
    """Nothing (no request, no probe) counted in the last hour: the figures are old news."""
    threshold_buckets: list[dict[str, float]] = field(default_factory=list)
    """Latency: where the window's counts were taken at a recorded bucket bound other than the
    threshold (history replayed from before the gateway had the threshold among its buckets):
    ``{"threshold_s", "bucket_bound_s", "difference_s"}`` (bound minus threshold), per bound."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def period_start(calendar: str, timezone: str, now_s: float) -> datetime:
    """Start of the current calendar month or quarter in ``timezone``."""
    local = datetime.fromtimestamp(now_s, ZoneInfo(timezone))
    month = local.month if calendar == "month" else 3 * ((local.month - 1) // 3) + 1
    return datetime(local.year, month, 1, tzinfo=ZoneInfo(timezone))


def row_specs(slos: Sequence[Slo], facilities: Sequence[Facility], now_s: float) -> list[RowSpec]:
    out = []
    for slo in slos:
        for fac in [*facilities, None]:
            tz = fac.timezone if fac else "UTC"
            if slo.calendar is not None:
                start = period_start(slo.calendar, tz, now_s).timestamp()
            else:
                assert slo.window_s is not None
                start = now_s - slo.window_s
            window_min = max(1, math.ceil((now_s - start) / 60))
            maintenance = fac.maintenance if fac else tuple(m for f in facilities for m in f.maintenance)
            overlapping = tuple(
                m for m in maintenance if m.end.timestamp() > start and m.start.timestamp() < now_s
            )
            out.append(RowSpec(slo, fac.id if fac else ALL_FACILITIES, tz, start, window_min, overlapping))
    return out


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def compute_status(
    slos: Sequence[Slo], facilities: Sequence[Facility], backend: CountsBackend, now_s: float
) -> list[StatusRow]:
    rows = row_specs(slos, facilities, now_s)
    if not rows:
        return []
    c = backend.counts(rows, now_s)
    budget = np.array([r.slo.error_budget for r in rows])
    periods = np.array([r.slo.period_s for r in rows])
    ev = evaluate(
        c.window_total,
        c.window_good,
        c.burn_total,
        c.burn_good,
        budget,
        periods,
        np.array([float(r.slo.min_events if r.slo.budgeting == "occurrences" else 1) for r in rows]),
    )
    # SLOs with their own window table, or a severity turned off (Slo.alerting_windows, as the
    # alert rules use): only their alert states differ from the Workbook's.
    alerts = ev.alert.copy()
    for windows in {r.slo.alerting_windows for r in rows} - {SRE_WORKBOOK_WINDOWS}:
        idx = np.array([i for i, r in enumerate(rows) if r.slo.alerting_windows == windows])
        rates = {name: rate[idx] for name, rate in ev.burn_rates.items()}
        alerts[idx] = alert_states(rates, budget[idx], periods[idx], windows)
    names = {f.id: f for f in facilities}
    judged = {s.name for s in contractual_slos(slos)}
    hour = list(STATUS_WINDOWS_S).index("1h")
    out = []
    for i, r in enumerate(rows):
        fac = names.get(r.facility)
        sli = _num(ev.sli[i])
        alert = int(alerts[i])
        out.append(
            StatusRow(
                slo=r.slo.name,
                facility=r.facility,
                service=r.slo.service,
                objective=r.slo.objective,
                window=r.slo.window,
                total=int(c.window_total[i]),
                good=int(c.window_good[i]),
                sli=sli,
                budget_remaining=_num(ev.budget_remaining[i]),
                burn_rates={n: _num(ev.burn_rates[n][i]) for n in STATUS_WINDOWS_S}
                | {"window": _num(ev.window_burn_rate[i])},
                alert=ALERT_NAMES[alert],
                exhaustion_hours=_num(ev.exhaustion_hours[i]),
                facility_name=fac.name if fac else "All facilities",
                sla=fac.sla if fac else None,
                sla_met=None
                if sli is None or fac is None or fac.sla is None or r.slo.name not in judged
                else sli >= fac.sla,
                contractual=r.slo.name in judged,
                objective_met=None if sli is None else sli >= r.slo.objective,
                budgeting=r.slo.budgeting,
                window_start=datetime.fromtimestamp(r.window_start_s, ZoneInfo(r.timezone)).isoformat(),
                budget_allowed=round(float(ev.budget_allowed[i]), 3),
                budget_consumed=round(float(ev.budget_consumed[i]), 3),
                requests_total=int(c.request_total[i]),
                requests_good=int(c.request_good[i]),
                maintenance=[
                    {"start": m.start.isoformat(), "end": m.end.isoformat(), "reason": m.reason}
                    for m in r.maintenance
                ],
                no_data_1h=bool(c.burn_total[i, hour] == 0),
            )
        )
    return out


def sort_worst_first(rows: list[StatusRow]) -> list[StatusRow]:
    def key(r: StatusRow) -> tuple[float, str, str]:
        b = r.budget_remaining
        return (math.inf if b is None else b, r.slo, r.facility)

    return sorted(rows, key=key)


def to_json(rows: Sequence[StatusRow]) -> str:
    return json.dumps({"slos": [r.to_json() for r in rows]}, indent=2)


def _pct(x: float | None, digits: int = 3) -> str:
    return "no data" if x is None else f"{100 * x:.{digits}f}%"


def bucket_bound_entry(threshold_s: float, bound_s: float) -> dict[str, float]:
    return {
        "threshold_s": threshold_s,
        "bucket_bound_s": bound_s,
        "difference_s": round(bound_s - threshold_s, 9),
    }


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:g}ms"


def bucket_notes(rows: Sequence[StatusRow]) -> list[str]:
    """One line per SLO whose latency was counted at a bucket bound other than its threshold."""
    notes: dict[str, str] = {}
    for r in rows:
        for b in r.threshold_buckets:
            diff = b["difference_s"]
            where = f"{_ms(abs(diff))} {'below' if diff < 0 else 'above'}"
            notes.setdefault(
                f"{r.slo}@{b['bucket_bound_s']}",
                f"note: {r.slo}: threshold {_ms(b['threshold_s'])} counted at the recorded bucket bound "
                f"{_ms(b['bucket_bound_s'])} ({where}) for history recorded before the gateway had "
                "this threshold among its buckets: requests between the two count "
                + ("bad" if diff < 0 else "good"),
            )
    return list(notes.values())


def _sla(r: StatusRow) -> str:
    """The facility's contractual SLA ("-": none, all facilities together, or an SLO the SLA
    does not judge, such as a latency SLO)."""
    return "-" if r.sla is None or not r.contractual else _pct(r.sla, 2)


def to_table(rows: Sequence[StatusRow]) -> str:
    """One line per (SLO, facility); names are never cut (the columns fit the longest)."""
    slo_w = max([len("SLO"), *(len(r.slo) for r in rows)]) + 2
    fac_w = max([len("FACILITY"), *(len(r.facility) for r in rows)]) + 2
    sla_w = max([len("SLA"), *(len(_sla(r)) for r in rows)]) + 2
    head = (
        f"{'SLO':<{slo_w}}{'FACILITY':<{fac_w}}{'OBJECTIVE':>10}{'SLI':>10}{'BUDGET LEFT':>12}"
        f"{'SLA':>{sla_w}}{'1H BURN':>9}{'ALERT':>8}{'TOTAL':>10}  LAST HOUR"
    )
    lines = [head]
    for r in rows:
        burn = r.burn_rates.get("1h")
        lines.append(
            f"{r.slo:<{slo_w}}{r.facility:<{fac_w}}{_pct(r.objective, 2):>10}{_pct(r.sli):>10}"
            f"{'no data' if r.budget_remaining is None else f'{100 * r.budget_remaining:.1f}%':>12}"
            f"{_sla(r):>{sla_w}}{'-' if burn is None else f'{burn:.2f}':>9}{r.alert:>8}{r.total:>10}"
            f"  {'NO DATA' if r.no_data_1h else 'ok'}"
        )
    notes = bucket_notes(rows)
    return "\n".join([*lines, *([""] if notes else []), *notes])


def now_utc() -> float:
    return datetime.now(UTC).timestamp()
