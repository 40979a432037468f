"""The figures of an uptime report: per facility, period and SLO, from the embedded store.

Periods (``2026-10``, ``2026-Q4``, ``2026``) begin and end at midnight in the
facility's own time zone (DST-correct through zoneinfo). Everything is
counted per minute:

- availability achieved: good / total requests over the period;
- uptime minutes (timeslices): a minute with traffic is up when at least the
  SLO's timeslice target of its requests are good; down minutes are downtime;
- incidents: runs of down minutes, merged across minutes without traffic (no
  evidence either way) but never across an up minute;
- maintenance windows are excluded (neither up nor down) and listed;
- minutes without traffic are "no data", counted and stated, never up;
- the contract: each contractual SLO's uptime (up minutes over measured minutes) against
  the facility's SLA, with the downtime that allows (``(1 - SLA)`` of the measured minutes)
  and the downtime used (down minutes); met when used <= allowed, the same as uptime >= SLA.
  Other SLOs are judged against their own objective only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from core.conventions import ENTRY_ROUTE_PREFIX
from slo.engine import good_minutes
from slo.spec import PAPER_SIZES, REQUEST_SOURCES, Facility, Slo, contractual_slos
from slo.store import Store

F64 = npt.NDArray[np.float64]


PAPERS = PAPER_SIZES
DEFAULT_PAPER = "a4"


class PeriodError(ValueError):
    pass


@dataclass(frozen=True)
class Period:
    label: str  # 2026-10, 2026-Q4, 2026
    first: date
    after: date  # first day after the period

    def bounds_s(self, tz: str) -> tuple[int, int]:
        z = ZoneInfo(tz)
        start = datetime(self.first.year, self.first.month, self.first.day, tzinfo=z)
        end = datetime(self.after.year, self.after.month, self.after.day, tzinfo=z)
        return int(start.timestamp()), int(end.timestamp())

    def previous(self) -> Period:
        if re.fullmatch(r"\d{4}", self.label):
            return parse_period(str(self.first.year - 1))
        if "Q" in self.label:
            q = (self.first.month - 1) // 3
            year, q = (self.first.year, q) if q > 0 else (self.first.year - 1, 4)
            return parse_period(f"{year}-Q{q}")
        d = self.first - timedelta(days=1)
        return parse_period(f"{d.year}-{d.month:02d}")


def paper_of(facility: Facility, chosen: str | None = None) -> str:
    """The paper a facility's report prints on: the one asked for, else the facility's, else A4."""
    return chosen or facility.paper or DEFAULT_PAPER


def parse_period(text: str) -> Period:
    m = re.fullmatch(r"(\d{4})(?:-(?:(\d{2})|Q([1-4])))?", text.strip())
    if not m:
        raise PeriodError(f"period must look like 2026-10, 2026-Q4 or 2026 (got {text!r})")
    year = int(m.group(1))
    if m.group(2):
        month = int(m.group(2))
        if not 1 <= month <= 12:
            raise PeriodError(f"no month {month} (got {text!r})")
        first = date(year, month, 1)
        after = date(year + (month == 12), month % 12 + 1, 1)
    elif m.group(3):
        q = int(m.group(3))
        first = date(year, 3 * q - 2, 1)
        after = date(year + (q == 4), (3 * q) % 12 + 1, 1)
    else:
        first, after = date(year, 1, 1), date(year + 1, 1, 1)
    return Period(text.strip(), first, after)


@dataclass
class Incident:
    start: str  # local ISO time
    end: str
    minutes: int  # down minutes in it
    requests_affected: int


@dataclass
class DayFigures:
    day: str
    total: int
    good: int
    availability: float | None
    up_minutes: int
    down_minutes: int
    no_data_minutes: int
    maintenance_minutes: int
    uptime: float | None = None
    """Up minutes over measured (up or down) minutes of the day: what the contract is judged on."""


@dataclass
class SloReport:
    slo: str
    service: str
    kind: str
    objective: float
    sla: float | None
    timeslice_target: float
    total: int
    good: int
    availability: float | None
    uptime: float | None
    objective_met: bool | None
    sla_met: bool | None
    budget_used: float | None
    up_minutes: int
    down_minutes: int
    no_data_minutes: int
    maintenance_minutes: int
    incidents: list[Incident]
    days: list[DayFigures]
    budget_curve: list[float | None]
    previous: list[tuple[str, float | None]] = field(default_factory=list)
    sources: list[str] = field(default_factory=lambda: list(REQUEST_SOURCES))
    traffic_minutes: int = 0
    """Minutes (of the period so far, maintenance excluded) with a client's request."""
    probe_only_minutes: int = 0
    """Minutes with no client's request but the gateway's probes."""
    no_evidence_minutes: int = 0
    """Minutes with neither."""
    insufficient_data: bool = False
    """No minute of the period holds evidence the SLO counts: no figure is stated (never 100%)."""
    contractual: bool = False
    """Judged against the facility's SLA (``sla_met`` is None for the others)."""
    threshold_s: float | None = None
    """Latency SLOs: the duration a good request stays within."""
    downtime_allowed_minutes: float | None = None
    """Contractual SLOs: ``(1 - SLA)`` of the minutes measured (up + down)."""
    budgeting: str = "occurrences"
    """``timeslices``: the objective is judged on uptime (minutes), else on requests."""
    coverage_not_kept_minutes: int = 0
    """Measured minutes older than the raw-minute history (``minute_retention``): counted from the
    per-SLO minutes, but whether clients or probes covered them is no longer known."""


@dataclass
class Report:
    facility: str
    facility_name: str
    timezone: str
    period: str
    start: str
    end: str
    generated_at: str
    slos: list[SloReport]
    maintenance: list[dict[str, str]]
    latency_weeks: dict[str, list[tuple[str, float | None, float | None, float | None]]]
    sha256: str = ""
    sla: float | None = None
    """The facility's contractual availability (0..1)."""
    sla_met: bool | None = None
    """Every contractual SLO met the SLA; False when one missed it (None: no SLA, no contractual
    SLO, or one without data and none missed)."""
    contractual_marked: bool = False
    """Some SLO is marked ``contractual: true`` (else availability SLOs are, by default)."""
    partial_through: str | None = None
    """The period had not ended when the report was made: its figures run to this local time
    (``2026-12-07 17:43 CST``); None for a period that has ended."""

    def figures(self) -> dict[str, object]:
        """Everything the report states, without the generation time: what the checksum covers."""
        d = asdict(self)
        d.pop("generated_at")
        d.pop("sha256")
        return d

    def seal(self) -> None:
        blob = json.dumps(self.figures(), sort_keys=True, separators=(",", ":"), default=str)
        self.sha256 = hashlib.sha256(blob.encode()).hexdigest()


def minute_arrays(store: Store, key: str, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]:
    """Total and good requests per minute over [start_s, end_s) from the per-SLO minute rows."""
    counts = store.slo_minute_counts({(key, facility): 0}, 1, start_s, (end_s - start_s) // 60)
    return counts[0, 0].astype(np.float64), counts[0, 1].astype(np.float64)


def hour_totals(store: Store, key: str, facility: str, start_s: int, end_s: int) -> tuple[float, float]:
    """Total and good over [start_s, end_s) from the hourly rows (for earlier periods)."""
    h0, h1 = start_s // 3600, end_s // 3600
    if h1 <= h0:
        return 0.0, 0.0
    counts = store.slo_hour_counts({(key, facility): 0}, 1, h0 * 3600, h1 - h0)
    return float(counts[0, 0].sum()), float(counts[0, 1].sum())


def _local(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="minutes")


def incidents(
    down: npt.NDArray[np.bool_], up: npt.NDArray[np.bool_], bad: F64, start_s: int, tz: ZoneInfo
) -> list[Incident]:
    out: list[Incident] = []
    i, n = 0, len(down)
    while i < n:
        if not down[i]:
            i += 1
            continue
        j, last = i, i
        while j + 1 < n and not up[j + 1]:
            j += 1
            if down[j]:
                last = j
        seg = slice(i, last + 1)
        out.append(
            Incident(
                start=_local(start_s + 60 * i, tz),
                end=_local(start_s + 60 * (last + 1), tz),
                minutes=int(down[seg].sum()),
                requests_affected=int(bad[seg].sum()),
            )
        )
        i = last + 1
    return out


def _per_day(day_index: npt.NDArray[np.intp], values: npt.NDArray[np.generic], n_days: int) -> list[int]:
    sums = np.bincount(day_index, weights=values.astype(np.float64), minlength=n_days)
    return [int(v) for v in sums[:n_days]]


class ReportBackend(Protocol):
    """Where a report's counts come from: the embedded store or Prometheus."""

    def minutes(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]: ...

    def coverage(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]:
        """Requests per minute the SLO selects, from clients and from the gateway's probes."""
        ...

    def totals(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[float, float]: ...

    def latency_weeks(
        self, slos: Sequence[Slo], facility: str, period: Period, tz: ZoneInfo
    ) -> dict[str, list[tuple[str, float | None, float | None, float | None]]]: ...


class StoreReportBackend:
    """A report's counts read from the embedded store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def minutes(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]:
        return minute_arrays(self.store, slo.key, facility, start_s, end_s)

    def totals(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[float, float]:
        return hour_totals(self.store, slo.key, facility, start_s, end_s)

    def coverage(self, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]:
        return raw_coverage(self.store, slo, facility, start_s, end_s)

    def latency_weeks(
        self, slos: Sequence[Slo], facility: str, period: Period, tz: ZoneInfo
    ) -> dict[str, list[tuple[str, float | None, float | None, float | None]]]:
        return latency_by_week(self.store, slos, facility, period, tz)


def raw_coverage(store: Store, slo: Slo, facility: str, start_s: int, end_s: int) -> tuple[F64, F64]:
    """Requests per minute of the SLO's selection, from clients and from probes, read from the
    raw minute history (``telemetry.store.minute_retention``; older minutes read as none)."""
    n = (end_s - start_s) // 60
    out = (np.zeros(n), np.zeros(n))
    variants = (replace(slo, sources=("traffic",)), replace(slo, sources=("probe",)))
    which: dict[int, int] = {}
    for sid, key in store.all_series().items():
        if key[0] != facility:
            continue
        for k, variant in enumerate(variants):
            if variant.matches(key[1], key[2], key[3]):
                which[sid] = k
    for hour, sid, _layout, arr in store.raw_hours_between(start_s - start_s % 3600, end_s):
        k = which.get(sid, -1)
        if k < 0:
            continue
        first = (hour - start_s) // 60
        per_minute = arr.sum(axis=1).astype(np.float64)
        lo, hi = max(0, first), min(n, first + len(per_minute))
        if lo < hi:
            out[k][lo:hi] += per_minute[lo - first : hi - first]
    return out


def backend_of(data: Store | ReportBackend) -> ReportBackend:
    return StoreReportBackend(data) if isinstance(data, Store) else data


@dataclass(frozen=True)
class _Minutes:
    """The minutes of a report's period (local days, maintenance, the future): shared by its SLOs."""

    start_s: int
    end_s: int
    tz: ZoneInfo
    excluded: npt.NDArray[np.bool_]
    """Maintenance or not yet happened: counted as neither up nor down."""
    maint: npt.NDArray[np.bool_]
    future: npt.NDArray[np.bool_]
    day_starts: list[tuple[date, int]]
    """The local days of the period that have begun (a partial period stops at today)."""
    day_index: npt.NDArray[np.intp]


def _minutes(facility: Facility, period: Period, now_s: float) -> tuple[_Minutes, list[dict[str, str]]]:
    tz = ZoneInfo(facility.timezone)
    start_s, end_s = period.bounds_s(facility.timezone)
    minute_ts = start_s + 60 * np.arange((end_s - start_s) // 60)
    maint = np.zeros(len(minute_ts), dtype=bool)
    listed = []
    for m in facility.maintenance:
        a, b = m.start.timestamp(), m.end.timestamp()
        if b > start_s and a < end_s:
            maint |= (minute_ts >= a) & (minute_ts < b)
            listed.append({"start": _local(a, tz), "end": _local(b, tz), "reason": m.reason})
    # Local day of each minute, for the daily figures.
    day_starts = []
    d = period.first
    while d < period.after:
        day_starts.append((d, int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp())))
        d += timedelta(days=1)
    day_index = np.searchsorted([s for _, s in day_starts], minute_ts, side="right") - 1
    future = minute_ts >= now_s
    # Days not begun are left out, never listed as days without data (minutes after now count nowhere).
    day_starts = [(d, s) for d, s in day_starts if s < now_s] or day_starts[:1]
    return _Minutes(start_s, end_s, tz, maint | future, maint, future, day_starts, day_index), listed


def _days(
    mins: _Minutes,
    total: F64,
    good: F64,
    up: npt.NDArray[np.bool_],
    down: npt.NDArray[np.bool_],
    no_data: npt.NDArray[np.bool_],
) -> list[DayFigures]:
    n = len(mins.day_starts)
    inside = mins.day_index < n  # minutes of days not begun: nothing to count
    day_t, day_g, day_up, day_down, day_nd, day_m = (
        _per_day(mins.day_index[inside], v[inside], n) for v in (total, good, up, down, no_data, mins.maint)
    )
    return [
        DayFigures(
            day=day.isoformat(),
            total=day_t[k],
            good=day_g[k],
            availability=day_g[k] / day_t[k] if day_t[k] else None,
            up_minutes=day_up[k],
            down_minutes=day_down[k],
            no_data_minutes=day_nd[k],
            maintenance_minutes=day_m[k],
            uptime=day_up[k] / (day_up[k] + day_down[k]) if day_up[k] + day_down[k] else None,
        )
        for k, (day, _) in enumerate(mins.day_starts)
    ]


def _slo_report(
    backend: ReportBackend,
    s: Slo,
    facility: Facility,
    period: Period,
    mins: _Minutes,
    previous_periods: int,
    contractual: bool,
) -> SloReport:
    total, good = backend.minutes(s, facility.id, mins.start_s, mins.end_s)
    total = np.where(mins.excluded, 0.0, total)
    good = np.where(mins.excluded, 0.0, good)
    has = total > 0
    up = good_minutes(total, good, s.timeslice_target)  # the store's and the engine's rule
    down = has & ~up
    tot, gd = int(total.sum()), int(good.sum())
    avail = gd / tot if tot else None
    data_min = int(has.sum())
    uptime = int(up.sum()) / data_min if data_min else None
    measure = uptime if s.budgeting == "timeslices" else avail
    budget_used = (1 - measure) / s.error_budget if measure is not None else None
    no_data = ~has & ~mins.excluded
    traffic, probes = backend.coverage(s, facility.id, mins.start_s, mins.end_s)
    with_traffic = (traffic > 0) & ~mins.excluded
    probe_only = (probes > 0) & ~with_traffic & ~mins.excluded
    # Requests counted in a minute neither clients nor probes cover: its raw minute was dropped.
    not_kept = has & ~with_traffic & ~probe_only
    days = _days(mins, total, good, up, down, no_data)
    # Budget left after each day, against the whole period's allowance so far.
    cum_t, cum_b = np.cumsum([x.total for x in days]), np.cumsum([x.total - x.good for x in days])
    allowed = cum_t[-1] * s.error_budget if len(cum_t) and cum_t[-1] else 0.0
    curve = [round(1 - b / allowed, 6) if allowed else None for b in cum_b]
    previous = []
    p = period
    for _ in range(previous_periods):
        p = p.previous()
        ps, pe = p.bounds_s(facility.timezone)
        pt, pg = backend.totals(s, facility.id, ps, pe)
        previous.append((p.label, round(pg / pt, 6) if pt else None))
    return SloReport(
        slo=s.name,
        service=s.service,
        kind=s.kind,
        objective=s.objective,
        sla=facility.sla,
        timeslice_target=s.timeslice_target,
        total=tot,
        good=gd,
        availability=round(avail, 6) if avail is not None else None,
        uptime=round(uptime, 6) if uptime is not None else None,
        objective_met=None if measure is None else measure >= s.objective,
        # The contract is judged on time (up minutes), whatever the SLO's budgeting.
        sla_met=None if uptime is None or facility.sla is None or not contractual else uptime >= facility.sla,
        budget_used=round(budget_used, 6) if budget_used is not None else None,
        up_minutes=int(up.sum()),
        down_minutes=int(down.sum()),
        no_data_minutes=int(no_data.sum()),
        maintenance_minutes=int(mins.maint.sum()),
        incidents=incidents(down, up, total - good, mins.start_s, mins.tz),
        days=days,
        budget_curve=curve,
        previous=previous,
        sources=list(s.sources),
        traffic_minutes=int(with_traffic.sum()),
        probe_only_minutes=int(probe_only.sum()),
        no_evidence_minutes=int(
            (~mins.excluded).sum() - with_traffic.sum() - probe_only.sum() - not_kept.sum()
        ),
        coverage_not_kept_minutes=int(not_kept.sum()),
        insufficient_data=data_min == 0,
        contractual=contractual,
        threshold_s=s.threshold_s,
        budgeting=s.budgeting,
        downtime_allowed_minutes=(
            round((1 - facility.sla) * data_min, 3) if contractual and facility.sla is not None else None
        ),
    )


def build_report(
    store: Store | ReportBackend,
    slos: Sequence[Slo],
    facility: Facility,
    period: Period,
    now_s: float,
    previous_periods: int = 3,
) -> Report:
    backend = backend_of(store)
    check_started(period, facility.timezone, now_s)
    mins, listed = _minutes(facility, period, now_s)
    contract = {s.name for s in contractual_slos(slos)}
    slo_reports = [
        _slo_report(backend, s, facility, period, mins, previous_periods, s.name in contract) for s in slos
    ]
    judged = [x.sla_met for x in slo_reports if x.contractual]
    report = Report(
        facility=facility.id,
        facility_name=facility.name,
        timezone=facility.timezone,
        period=period.label,
        start=_local(mins.start_s, mins.tz),
        end=_local(mins.end_s, mins.tz),
        generated_at=_local(now_s, mins.tz),
        slos=slo_reports,
        maintenance=listed,
        latency_weeks=backend.latency_weeks(slos, facility.id, period, mins.tz),
        sla=facility.sla,
        contractual_marked=any(s.contractual is True for s in slos),
        sla_met=_all_met(judged),
        partial_through=_partial_through(now_s, mins) if now_s < mins.end_s else None,
    )
    report.seal()
    return report


def check_started(period: Period, timezone: str, now_s: float) -> None:
    """Refuse a period that has not begun in the facility's time zone: it has no figure at all."""
    start_s, _ = period.bounds_s(timezone)
    if now_s < start_s:
        raise PeriodError(
            f"period {period.label} has not started: it begins {long_date(period.first)} ({timezone})"
        )


def long_date(d: date) -> str:
    """``1 December 2026``: the way a date is written for the customer (no leading zero)."""
    return f"{d.day} {d:%B %Y}"


def _all_met(judged: list[bool | None]) -> bool | None:
    """Missed when any contractual SLO missed; met when every one met; else unknown (no data)."""
    if False in judged:
        return False
    return None if not judged or None in judged else True


def _partial_through(now_s: float, mins: _Minutes) -> str:
    """Local date, time and zone abbreviation a period that has not ended is reported to."""
    local = datetime.fromtimestamp(max(now_s, mins.start_s), mins.tz)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def _quantile(q: float, bounds: Sequence[float], counts: F64) -> float | None:
    total = counts.sum()
    if total <= 0:
        return None
    cum = np.cumsum(counts)
    rank = q * total
    i = int(np.searchsorted(cum, rank))
    lo = float(bounds[i - 1]) if i > 0 else 0.0
    if i >= len(bounds):
        return float(bounds[-1])
    below = cum[i - 1] if i > 0 else 0.0
    inside = counts[i]
    return float(lo + (bounds[i] - lo) * ((rank - below) / inside if inside else 0.0))


def latency_by_week(
    store: Store, slos: Sequence[Slo], facility: str, period: Period, tz: ZoneInfo
) -> dict[str, list[tuple[str, float | None, float | None, float | None]]]:
    """p50, p95 and p99 per week (weeks starting Monday, local) for each service, from the raw history."""
    start_s, end_s = period.bounds_s(str(tz))
    services = sorted({s.service for s in slos})
    # Batch entries' own series carry counts, not durations: not latency.
    series = {
        sid: key
        for sid, key in store.all_series().items()
        if key[0] == facility and key[1] in services and not key[2].startswith(ENTRY_ROUTE_PREFIX)
    }
    layouts = store.layouts()
    weeks: dict[str, dict[tuple[str, int], F64]] = {}
    first_monday = period.first - timedelta(days=period.first.weekday())

    def week_of(ts: float) -> str:
        day = datetime.fromtimestamp(ts, tz).date()
        return (first_monday + timedelta(days=7 * ((day - first_monday).days // 7))).isoformat()

    def add(ts: float, sid: int, layout: int, row: F64) -> None:
        key = series[sid]
        acc = weeks.setdefault(week_of(ts), {})
        cur = acc.get((key[1], layout))
        acc[(key[1], layout)] = row if cur is None else cur + row

    seen_minutes: set[int] = set()
    for hour, sid, layout, arr in store.raw_hours_between(start_s - start_s % 3600, end_s):
        if sid in series and start_s <= hour < end_s:
            add(hour, sid, layout, arr.sum(axis=0).astype(np.float64))
            seen_minutes.add(hour // 86400)
    for day, sid, layout, arr in store.raw_days_between(start_s // 86400, end_s // 86400 + 1):
        if sid in series and day not in seen_minutes:
            for h in range(24):
                ts = day * 86400 + h * 3600
                if start_s <= ts < end_s and arr[h].any():
                    add(ts, sid, layout, arr[h].astype(np.float64))
    out: dict[str, list[tuple[str, float | None, float | None, float | None]]] = {s: [] for s in services}
    for week in sorted(weeks):
        for service in services:
            rows = [(layouts[lay], c) for (svc, lay), c in weeks[week].items() if svc == service]
            if not rows:
                out[service].append((week, None, None, None))
                continue
            bounds, counts = rows[0][0], sum(c for _, c in rows)  # one layout per week in practice
            p50, p95, p99 = (_quantile(q, list(bounds), np.asarray(counts)) for q in (0.5, 0.95, 0.99))
            out[service].append((week, p50, p95, p99))
    return out


def daily_availability(
    data: Store | ReportBackend, slo: Slo, facility: Facility, now_s: float, days: int = 90
) -> list[tuple[str, float | None, int]]:
    """(local date, availability or None, requests) for the last ``days`` local days, oldest first."""
    tz = ZoneInfo(facility.timezone)
    today = datetime.fromtimestamp(now_s, tz).date()
    first = today - timedelta(days=days - 1)
    start_s = int(datetime(first.year, first.month, first.day, tzinfo=tz).timestamp())
    after = today + timedelta(days=1)
    end_s = int(datetime(after.year, after.month, after.day, tzinfo=tz).timestamp())
    total, good = backend_of(data).minutes(slo, facility.id, start_s, end_s)
    out = []
    d = first
    while d <= today:
        a = (int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()) - start_s) // 60
        nd = d + timedelta(days=1)
        b = (int(datetime(nd.year, nd.month, nd.day, tzinfo=tz).timestamp()) - start_s) // 60
        t, g = float(total[a:b].sum()), float(good[a:b].sum())
        out.append((d.isoformat(), g / t if t else None, int(t)))
        d = nd
    return out
