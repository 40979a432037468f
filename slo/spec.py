"""SLO specifications: the ``slos.yaml`` file and the model the engine computes with.

The YAML shape (pydantic models, ``*Doc``) and the engine's model (frozen
dataclasses) are different types: the file is validated, then mapped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.configfile import ConfigError, DurationS, Problem, Source, read_yaml, validate
from core.conventions import ENTRY_ROUTE_PREFIX, PROBE_ROUTE_PREFIX
from core.durations import format_duration, parse_duration_s
from slo.windows import SRE_WORKBOOK_WINDOWS, BurnWindow
from slo.windows import period_s as _period_s

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
SourceName = Literal["traffic", "probe"]
_BOTH: tuple[SourceName, ...] = ("traffic", "probe")
REQUEST_SOURCES: tuple[str, ...] = _BOTH
"""Where an SLO's requests may come from (its ``sources:``): clients, the gateway's probes."""
LE_TOLERANCE_S = 1e-9
"""A duration bucket's bound and a latency threshold closer than this are the same number."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AvailabilityDoc(_Strict):
    bad_statuses: list[int] = Field(default_factory=list)
    """Statuses below 500 that also count as bad (e.g. 429)."""
    bundle_entries: bool = False
    """Also count each entry of a FHIR batch or transaction response as an event."""

    @field_validator("bad_statuses")
    @classmethod
    def _statuses(cls, v: list[int]) -> list[int]:
        for s in v:
            if not 100 <= s <= 599:
                raise ValueError(f"must be HTTP statuses between 100 and 599 (got {s})")
        return v


class LatencyDoc(_Strict):
    threshold: DurationS

    @field_validator("threshold")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0 or v > 600:
            raise ValueError("must be between 1ms and 10m")
        return v


class SliDoc(_Strict):
    availability: AvailabilityDoc | None = None
    latency: LatencyDoc | None = None

    @model_validator(mode="after")
    def _one(self) -> SliDoc:
        if (self.availability is None) == (self.latency is None):
            raise ValueError("exactly one of 'availability' or 'latency' is required")
        return self


class FilterDoc(_Strict):
    methods: list[str] = Field(default_factory=list)
    routes: list[str] = Field(default_factory=list)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        out = [m.upper() for m in v]
        for m in out:
            if m not in HTTP_METHODS:
                raise ValueError(f"unknown HTTP method {m!r} (one of {', '.join(HTTP_METHODS)})")
        return out


class CalendarDoc(_Strict):
    calendar: Literal["month", "quarter"]


class TimesliceDoc(_Strict):
    target: float = 95.0
    """Percent of a minute's requests that must be good for the minute to be good."""

    @field_validator("target")
    @classmethod
    def _target(cls, v: float) -> float:
        if not 0 < v <= 100:
            raise ValueError(f"must be a percentage between 0 and 100 (got {v})")
        return v


class BurnWindowDoc(_Strict):
    severity: Literal["page", "ticket"]
    long: Literal["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    short: Literal["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
    budget_fraction: float = Field(gt=0, le=1)
    """Share of the period's budget this window lets burn before it fires (0.02 = 2%)."""


class AlertingDoc(_Strict):
    min_events: int = Field(default=10, ge=0)
    """Fewer requests than this in a window: no burn rate (no data), so no alert."""
    page: bool = True
    ticket: bool = True
    runbook_url: str | None = None
    windows: list[BurnWindowDoc] | None = None
    """Replaces the SRE Workbook table for this SLO."""


class SloDoc(_Strict):
    name: str = Field(pattern=NAME_RE)
    service: str = Field(pattern=NAME_RE)
    description: str = ""
    objective: float
    window: str | CalendarDoc = "30d"
    sli: SliDoc
    filter: FilterDoc = Field(default_factory=FilterDoc)
    budgeting: Literal["occurrences", "timeslices"] = "occurrences"
    timeslice: TimesliceDoc = Field(default_factory=TimesliceDoc)
    alerting: AlertingDoc = Field(default_factory=AlertingDoc)
    sources: list[SourceName] = Field(default_factory=lambda: list(_BOTH))
    """What counts: real traffic, the gateway's synthetic probes (``probes:``), or both."""
    contractual: bool | None = None
    """Judged against the facility's SLA in uptime reports (see ``contractual_slos``)."""

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one of traffic, probe")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a source")
        return v

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: float) -> float:
        if not 0 < v < 100:
            raise ValueError(f"must be between 0 and 100, exclusive (got {v})")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str | CalendarDoc) -> str | CalendarDoc:
        if isinstance(v, str) and not re.fullmatch(r"[1-9]\d*d", v):
            raise ValueError(
                f"must be a rolling window in days such as '30d', or {{calendar: month}} (got {v!r})"
            )
        return v


class SlosDoc(_Strict):
    version: Literal[1]
    slos: list[SloDoc] = Field(default_factory=list)


@dataclass(frozen=True)
class Slo:
    """One SLO as the engine sees it. Ratios are 0..1; durations in seconds."""

    name: str
    service: str
    objective: float
    window: str
    window_s: float | None
    calendar: str | None
    kind: Literal["availability", "latency"]
    threshold_s: float | None = None
    bad_statuses: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    description: str = ""
    budgeting: Literal["occurrences", "timeslices"] = "occurrences"
    timeslice_target: float = 0.95
    min_events: int = 10
    page: bool = True
    ticket: bool = True
    runbook_url: str | None = None
    windows: tuple[BurnWindow, ...] = SRE_WORKBOOK_WINDOWS
    bundle_entries: bool = False
    """Availability: each entry of a batch or transaction response is an event too (its
    own method, route template and status), beside the batch request itself."""
    sources: tuple[str, ...] = REQUEST_SOURCES
    """``traffic`` (clients' requests), ``probe`` (the gateway's synthetic probes), or both."""
    contractual: bool | None = None
    """As written in ``slos.yaml`` (None: not said); ``contractual_slos`` decides."""

    @property
    def error_budget(self) -> float:
        """The share of requests (or, for timeslices, minutes) allowed bad over the period:
        ``1 - objective``, computed here only. Rounded to the objective's own 12 digits, so a
        99.9% SLO's budget is 0.001 (not 0.0010000000000000009) in the alert rules, the
        promtool tests, ``slo status`` and the reports alike."""
        return round(1.0 - self.objective, 12)

    @property
    def alerting_windows(self) -> tuple[BurnWindow, ...]:
        """The windows that alert: those of the severities turned on (``page``, ``ticket``)."""
        return tuple(w for w in self.windows if (self.page if w.severity == "page" else self.ticket))

    def burn_threshold(self, w: BurnWindow) -> float:
        """The burn rate at which window ``w`` fires for this SLO (of its period, capped at a
        total outage's): the one number the alert rules compare against and the dashboards
        draw."""
        return w.threshold(self.period_s, self.error_budget)

    @property
    def period_s(self) -> float:
        """The period the budget is spread over (a calendar window's nominal length)."""
        return _period_s(self.window_s, self.calendar)

    def good_buckets(self, upper_s: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Latency: which duration buckets (by upper bound) hold good requests: those at or
        below the threshold (the gateway makes every threshold a bucket bound; the tolerance
        absorbs the bound's float spelling)."""
        return upper_s <= (self.threshold_s or 0.0) + LE_TOLERANCE_S

    def bucket_bound(self, upper_s: npt.NDArray[np.float64]) -> float:
        """Latency: the bucket bound the threshold is counted at in a histogram with these upper
        bounds (the largest at or below it; 0 when none is, and every request counts bad). The
        threshold itself when the histogram has it, as the gateway's always does."""
        good = upper_s[self.good_buckets(upper_s)]
        return float(good.max()) if good.size else 0.0

    @cached_property
    def key(self) -> str:
        """Names what is counted: changes when the SLI definition changes (not the objective),
        so recorded counts are never reused for a different definition."""
        ident = json.dumps(
            [
                self.service,
                self.kind,
                self.threshold_s,
                sorted(self.bad_statuses),
                sorted(self.methods),
                sorted(self.routes),
                *(["bundle_entries"] if self.bundle_entries else []),
                # (named only when not both: the keys of SLOs defined before sources existed stay)
                *([sorted(self.sources)] if set(self.sources) != set(REQUEST_SOURCES) else []),
            ],
            separators=(",", ":"),
        )
        return f"{self.name}@{hashlib.sha256(ident.encode()).hexdigest()[:10]}"

    def status_is_good(self, status: int) -> bool:
        """Availability: a response below 500 and not one of ``bad_statuses`` (the same rule,
        as a label regex for Prometheus, is ``slo.promql.bad_status_regex``)."""
        return status < 500 and status not in self.bad_statuses

    def good_columns(self, status: int, upper_s: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Which duration-bucket columns (by upper bound) of one series with this status hold
        good requests: the good/bad rule every count of this SLO is made with (the store's
        writer and its replay). Latency: the buckets at or below the threshold, whatever the
        status; availability: every bucket or none, by the status."""
        if self.kind == "latency":
            return self.good_buckets(upper_s)
        return np.full(upper_s.shape, self.status_is_good(status), dtype=np.bool_)

    def matches(self, service: str, route: str, method: str) -> bool:
        if route.startswith(PROBE_ROUTE_PREFIX):
            if "probe" not in self.sources:
                return False
            route = route[len(PROBE_ROUTE_PREFIX) :]
        elif "traffic" not in self.sources:
            return False
        if route.startswith(ENTRY_ROUTE_PREFIX):
            # A batch entry's own series: counted only by SLOs that count entries.
            if not self.bundle_entries:
                return False
            route = route[len(ENTRY_ROUTE_PREFIX) :]
        return (
            service == self.service
            and (not self.methods or method in self.methods)
            and (not self.routes or route in self.routes)
        )


def _to_slo(doc: SloDoc) -> Slo:
    if isinstance(doc.window, CalendarDoc):
        window, window_s, calendar = str(doc.window.calendar), None, str(doc.window.calendar)
    else:
        window, window_s, calendar = doc.window, parse_duration_s(doc.window), None
    lat = doc.sli.latency
    avail = doc.sli.availability
    return Slo(
        name=doc.name,
        service=doc.service,
        objective=round(doc.objective / 100.0, 12),
        window=window,
        window_s=window_s,
        calendar=calendar,
        kind="latency" if lat else "availability",
        threshold_s=lat.threshold if lat else None,
        bad_statuses=tuple(avail.bad_statuses) if avail else (),
        bundle_entries=bool(avail and avail.bundle_entries),
        methods=tuple(doc.filter.methods),
        routes=tuple(doc.filter.routes),
        description=doc.description,
        budgeting=doc.budgeting,
        timeslice_target=round(doc.timeslice.target / 100.0, 12),
        min_events=doc.alerting.min_events,
        page=doc.alerting.page,
        ticket=doc.alerting.ticket,
        runbook_url=doc.alerting.runbook_url,
        sources=tuple(doc.sources),
        contractual=doc.contractual,
        windows=(
            tuple(
                BurnWindow(w.severity, w.long, w.short, w.budget_fraction, "configured")
                for w in doc.alerting.windows
            )
            if doc.alerting.windows
            else SRE_WORKBOOK_WINDOWS
        ),
    )


def check_slos(data: Any, source: Source, services: set[str] | None = None) -> list[Problem]:
    """Checks across SLOs (unique names, known services), on the raw document."""
    problems = []
    seen: set[str] = set()
    items = data.get("slos") if isinstance(data, dict) else None
    for i, s in enumerate(items if isinstance(items, list) else []):
        if not isinstance(s, dict):
            continue
        name, service = s.get("name"), s.get("service")
        if isinstance(name, str):
            if name in seen:
                problems.append(source.problem(("slos", i, "name"), f"duplicate SLO name {name!r}"))
            seen.add(name)
        if s.get("contractual") is True and isinstance(s.get("sli"), dict) and "availability" not in s["sli"]:
            problems.append(
                source.problem(
                    ("slos", i, "contractual"),
                    "only an availability SLO can be judged against a facility's SLA",
                )
            )
        if services is not None and isinstance(service, str) and service not in services:
            known = ", ".join(sorted(services)) or "none"
            problems.append(
                source.problem(("slos", i, "service"), f"unknown service {service!r} (upstreams: {known})")
            )
    return problems


def load_slos(path: str | Path, services: set[str] | None = None) -> list[Slo]:
    """Load and validate ``slos.yaml``. ``services``: the upstream names SLOs may name."""
    source = read_yaml(path)
    problems: list[Problem] = []
    doc: SlosDoc | None = None
    try:
        doc = validate(SlosDoc, source)
    except ConfigError as exc:
        problems.extend(exc.problems)
    problems.extend(check_slos(source.data, source, services))
    if problems or doc is None:
        raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
    return [_to_slo(s) for s in doc.slos]


def contractual_slos(slos: Sequence[Slo]) -> list[Slo]:
    """The SLOs a facility's SLA is judged on: those marked ``contractual: true``; when none
    is, every availability SLO not marked ``contractual: false`` (what reports judged before
    the mark existed). A latency SLO is never compared with an availability SLA."""
    marked = [s for s in slos if s.contractual is True]
    if marked:
        return marked
    return [s for s in slos if s.kind == "availability" and s.contractual is not False]


def latency_thresholds_s(slos: list[Slo]) -> list[float]:
    """Every latency threshold named by an SLO: the gateway adds each to its buckets."""
    return sorted({s.threshold_s for s in slos if s.threshold_s is not None})


@dataclass(frozen=True)
class Maintenance:
    start: datetime
    end: datetime
    reason: str


PAPER_SIZES: dict[str, str] = {"a4": "A4", "letter": "letter"}
"""Paper a facility's reports print on (``paper:`` in gateway.yaml, ``--paper``), by CSS name."""


@dataclass(frozen=True)
class Facility:
    """What the SLO engine knows of a facility (from gateway.yaml)."""

    id: str
    name: str
    timezone: str = "UTC"
    sla: float | None = None
    """Contractual availability as a ratio (0..1), beside the internal objective."""
    maintenance: tuple[Maintenance, ...] = ()
    paper: str | None = None
    """A key of PAPER_SIZES for its printed reports (None: the report's default, A4)."""


__all__ = ["Slo", "SlosDoc", "contractual_slos", "format_duration", "latency_thresholds_s", "load_slos"]
