"""Grafana dashboards from SLO specs, built with grafana-foundation-sdk's typed builders.

Four kinds, each opened first by someone:
- fleet overview (SREs, account managers): every facility x SLO, worst budget first;
- facility (one per facility, uid ``vg-facility-<id>``: the alerts link here);
- SLO detail (one per SLO, facilities as a multi-select variable);
- latency diagnosis (engineers): percentiles by route, a heatmap, exemplars to traces.

Every query names only series the gateway exports or the generated rules
record (``core.conventions``); tests check both that and PromQL validity.
Output is classic dashboard JSON (what ``/api/dashboards/db`` takes) with
deterministic uids and panel ids, serialised with sorted keys: same input,
same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from core import conventions as names
from slo.promql import METRIC
from slo.spec import Facility, Slo
from slo.windows import STATUS_WINDOWS_S

DS = cm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["vitalgate", "slo"]
RATE = "$__rate_interval"
COUNT = f"{METRIC}_count"
BUCKET = f"{METRIC}_bucket"
ROUTE, STATUS = names.ROUTE, names.STATUS
FACILITY, SERVICE, SLO = names.FACILITY, names.SERVICE, names.SLO_LABEL
# Each dashboard variable is named after the label it selects.
VAR_FACILITY = "$" + FACILITY
BY_FACILITY = "{{" + FACILITY + "}}"
BY_SLO = "{{" + SLO + "}}"
BY_ROUTE = f"{{{{{ROUTE}}}}}"
"""The legend ``{{http_route}}``."""


@dataclass(frozen=True)
class DashboardOptions:
    datasource_uid: str = "prometheus"
    """Default of the ``datasource`` variable."""
    trace_datasource_uid: str = "tempo"
    """Where exemplar trace ids link to (the provisioned Prometheus datasource's setting)."""
    datasource_name: str = "Prometheus"
    """The provisioned Prometheus datasource's name."""
    datasource_url: str = "http://127.0.0.1:9090"
    """The provisioned Prometheus datasource's URL, as Grafana's server reaches it."""


@dataclass(frozen=True)
class GeneratedDashboard:
    uid: str
    title: str
    folder: str
    """Folder title: the facility's name, or "vitalgate fleet"."""
    folder_uid: str
    model: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


FLEET_FOLDER = ("vitalgate fleet", "vg-fleet")
UID_COLUMN = "dashboard_uid"


def facility_folder(f: Facility) -> tuple[str, str]:
    return (f.name, names.dashboard_uid("folder", f.id))


def _q(
    expr: str,
    legend: str = "",
    ref: str = "A",
    instant: bool = False,
    table_fmt: bool = False,
    exemplar: bool = False,
    heat: bool = False,
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    if table_fmt:
        q = q.format(pm.PromQueryFormat.TABLE)
    if heat:
        q = q.format(pm.PromQueryFormat.HEATMAP)
    if exemplar:
        q = q.exemplar(True)
    return q


def _steps(*pairs: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in pairs])
    )


BUDGET_STEPS = ((None, "red"), (0.0, "orange"), (0.25, "yellow"), (0.5, "green"))


def _ratio_over_time(title: str, expr: str, legend: str, steps: db.ThresholdsConfig) -> timeseries.Panel:
    """A 0..1 ratio over time, its thresholds drawn as dashed lines."""
    return (
        timeseries.Panel()
        .title(title)
        .datasource(DS)
        .unit("percentunit")
        .with_target(_q(expr, legend))
        .thresholds(steps)
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
    )


class _Layout:
    """Deterministic panel ids and a 24-column grid, filled left to right."""

    def __init__(self) -> None:
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def place(self, panel: Any, w: int, h: int) -> Any:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = panel.id(self.next_id).grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y))
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel

    def row(self, title: str) -> db.Row:
        self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        r = db.Row(title).id(self.next_id).grid_pos(dm.GridPos(h=1, w=24, x=0, y=self.y))
        self.next_id += 1
        self.y += 1
        return r


def _base(title: str, uid: str, opts: DashboardOptions, tags: Sequence[str] = ()) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .tags([*TAGS, *tags])
        .refresh("1m")
        .time("now-7d", "now")
        .timezone("browser")
        .readonly()
        .with_variable(
            db.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
            .current(dm.VariableOption(selected=True, text=opts.datasource_uid, value=opts.datasource_uid))
        )
        .link(
            db.DashboardLink("vitalgate")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["vitalgate"])
            .as_dropdown(True)
            .include_vars(False)
            .keep_time(True)
        )
    )


def _facility_var(multi: bool, current: str | None = None, query: str | None = None) -> db.QueryVariable:
    v = (
        db.QueryVariable(FACILITY)
        .label("Facility")
        .datasource(DS)
        .query(query or f"label_values({names.FACILITY_INFO}, {FACILITY})")
        .refresh(dm.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if current is not None:
        v = v.current(dm.VariableOption(selected=True, text=current, value=current))
    return v


_SEVERITY_COLOURS = {"page": "red", "ticket": "orange"}


def _burn_rate_panel(title: str, sel: str, slos: Sequence[Slo], by: str) -> timeseries.Panel:
    """Burn rates over every long window the SLOs alert on, each series with the thresholds
    its alerts fire at drawn as lines (``Slo.burn_threshold``, the number the alert rules
    compare against: of each SLO's own period and windows, capped). Series are named
    ``<slo> <window>`` on a facility's dashboard (``by`` "slo") and ``<facility> <window>``
    on an SLO's (``by`` "facility", one SLO)."""
    longs = sorted(
        {w.long for s in slos for w in s.alerting_windows}, key=lambda name: STATUS_WINDOWS_S[name]
    )
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DS)
        .description("Burn rate over each alerting window; lines where its page (red) and ticket alerts fire")
        .thresholds(_steps((None, "green")))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE))
    )
    for i, long in enumerate(longs):
        using = [s for s in slos if any(w.long == long for w in s.alerting_windows)]
        matchers = ",".join(m for m in (sel, f'{SLO}=~"' + "|".join(s.name for s in using) + '"') if m)
        expr = f"{names.error_ratio(long)}{{{matchers}}} / on ({SLO}) group_left {names.ERROR_BUDGET}"
        panel = panel.with_target(_q(expr, f"{{{{{by}}}}} {long}", chr(ord("A") + i)))
        for s in using:
            lines = sorted((s.burn_threshold(w), w.severity) for w in s.alerting_windows if w.long == long)
            steps: list[dict[str, float | str | None]] = [{"value": None, "color": "green"}]
            steps += [{"value": value, "color": _SEVERITY_COLOURS[sev]} for value, sev in lines]
            series = f"^{s.name} {long}$" if by == SLO else f"^.* {long}$"
            config = dm.DynamicConfigValue(id_val="thresholds", value={"mode": "absolute", "steps": steps})
            panel = panel.override_by_regexp(series, [config])
    return panel


def _fleet_budget_table(facilities: Sequence[Facility]) -> table.Panel:
    """Every facility and SLO in one table: budget left, SLI, objective, contract SLA."""
    # Grafana's data links cannot hash: when some facility's uid is hashed, the budget
    # query carries each facility's uid as a (hidden) column for the link to use.
    budget, link = names.BUDGET_REMAINING, f"/d/{names.FACILITY_UID_PREFIX}${{__data.fields.{FACILITY}}}"
    hidden = {"Time": True, "__name__": True, SERVICE: False}
    if names.hashed_facility_uids(f.id for f in facilities):
        budget = names.facility_uid_promql(budget, (f.id for f in facilities), UID_COLUMN)
        link = f"/d/${{__data.fields.{UID_COLUMN}}}"
        hidden[UID_COLUMN] = True
    fields = {
        "Value #A": ("Budget left", "percentunit"),
        "Value #B": ("SLI", "percentunit"),
        "Value #C": ("Objective", "percentunit"),
        "Value #D": ("Contract SLA", "percentunit"),
    }
    return (
        table.Panel()
        .title("Error budget remaining by facility and SLO")
        .description(
            "Budget left over each SLO's window (1 untouched, 0 spent, below 0 overspent), the SLI "
            "against the internal objective and the facility's contractual SLA."
        )
        .datasource(DS)
        .with_target(_q(budget, ref="A", instant=True, table_fmt=True))
        .with_target(_q(names.PERIOD_SLI, ref="B", instant=True, table_fmt=True))
        # One row per facility and SLO for every column, so the table merges on those labels.
        .with_target(
            _q(
                f"{names.BUDGET_REMAINING} * 0 + on (slo) group_left {names.OBJECTIVE}",
                ref="C",
                instant=True,
                table_fmt=True,
            )
        )
        .with_target(
            _q(
                f"{names.BUDGET_REMAINING} * 0 + on ({FACILITY}) group_left {names.FACILITY_SLA}",
                ref="D",
                instant=True,
                table_fmt=True,
            )
        )
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": hidden,
                    "indexByName": {
                        FACILITY: 0,
                        SLO: 1,
                        SERVICE: 2,
                        "Value #A": 3,
                        "Value #B": 4,
                        "Value #C": 5,
                        "Value #D": 6,
                    },
                    "renameByName": {k: v[0] for k, v in fields.items()},
                },
            )
        )
        .sort_by([cb.TableSortByFieldState().display_name("Budget left").desc(False)])
        .unit("percentunit")
        .decimals(3)
        .thresholds(_steps(*BUDGET_STEPS))
        .override_by_name(
            "Budget left",
            [dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})],
        )
        .override_by_name(
            FACILITY,
            [
                dm.DynamicConfigValue(
                    id_val="links",
                    value=[{"title": "Facility dashboard", "url": link}],
                )
            ],
        )
    )


def fleet_overview(
    slos: Sequence[Slo], facilities: Sequence[Facility], opts: DashboardOptions
) -> GeneratedDashboard:
    uid = names.dashboard_uid("fleet")
    lay = _Layout()
    d = _base("vitalgate: fleet overview", uid, opts, ["fleet"])
    d = d.with_row(lay.row("Every facility and SLO, worst error budget first"))
    d = d.with_panel(lay.place(_fleet_budget_table(facilities), 24, 12))
    d = d.with_row(lay.row("Now"))
    paging = (
        stat.Panel()
        .title("Facilities paging")
        .datasource(DS)
        .with_target(
            _q(
                f'count(count by ({FACILITY}) (ALERTS{{alertname="{names.ALERT_BURN}", alertstate="firing", '
                'severity="page"})) or vector(0)',
                instant=True,
            )
        )
        .thresholds(_steps((None, "green"), (1, "red")))
    )
    overspent = (
        stat.Panel()
        .title("SLOs over budget")
        .datasource(DS)
        .with_target(_q(f"count({names.BUDGET_REMAINING} < 0) or vector(0)", instant=True))
        .thresholds(_steps((None, "green"), (1, "orange")))
    )
    reqs = (
        stat.Panel()
        .title("Requests/s, all facilities")
        .datasource(DS)
        .unit("reqps")
        .with_target(_q(f"sum(rate({COUNT}[{RATE}]))"))
    )
    for p, w in ((paging, 8), (overspent, 8), (reqs, 8)):
        d = d.with_panel(lay.place(p, w, 5))
    worst = _ratio_over_time(
        "Lowest error budgets over time",
        f"bottomk(10, {names.BUDGET_REMAINING})",
        BY_FACILITY + " " + BY_SLO,
        _steps(*BUDGET_STEPS),
    )
    d = d.with_panel(lay.place(worst, 24, 9))
    return GeneratedDashboard(uid, "vitalgate: fleet overview", *FLEET_FOLDER, _build(d))


def _slo_stats(f: Facility, s: Slo, sel: str) -> tuple[stat.Panel, stat.Panel]:
    """A facility's SLI (against objective and SLA) and budget left for one SLO."""
    sli = (
        stat.Panel()
        .title(f"{s.name}: SLI")
        .description(
            f"{s.description or s.name}. Objective {100 * s.objective:g}% over {s.window}"
            + (f"; contract SLA {100 * f.sla:g}%" if f.sla is not None else "")
        )
        .datasource(DS)
        .unit("percentunit")
        .decimals(3)
        .with_target(_q(f'{names.PERIOD_SLI}{{{sel}, {SLO}="{s.name}"}}', instant=True))
        .thresholds(
            _steps(
                (None, "red"),
                (round(min(s.objective, f.sla or s.objective), 6), "orange"),
                (round(s.objective, 6), "green"),
            )
        )
    )
    budget = (
        stat.Panel()
        .title(f"{s.name}: budget left")
        .datasource(DS)
        .unit("percentunit")
        .decimals(1)
        .with_target(_q(f'{names.BUDGET_REMAINING}{{{sel}, {SLO}="{s.name}"}}', instant=True))
        .thresholds(_steps(*BUDGET_STEPS))
    )
    return sli, budget


def _route_panels(sel: str) -> tuple[timeseries.Panel, ...]:
    """Request rate, 5xx ratio and p95 latency by route, for the series ``sel`` selects."""
    rate = (
        timeseries.Panel()
        .title("Requests/s by route")
        .datasource(DS)
        .unit("reqps")
        .with_target(_q(f"sum by ({ROUTE}) (rate({COUNT}{{{sel}}}[{RATE}]))", BY_ROUTE))
    )
    errors = (
        timeseries.Panel()
        .title("Error rate (5xx) by route")
        .datasource(DS)
        .unit("percentunit")
        .with_target(
            _q(
                f'sum by ({ROUTE}) (rate({COUNT}{{{sel}, {STATUS}=~"5.."}}[{RATE}]))'
                f" / sum by ({ROUTE}) (rate({COUNT}{{{sel}}}[{RATE}]))",
                BY_ROUTE,
            )
        )
    )
    latency = (
        timeseries.Panel()
        .title("p95 latency by route")
        .datasource(DS)
        .unit("s")
        .with_target(
            _q(
                f"histogram_quantile(0.95, sum by (le, {ROUTE}) (rate({BUCKET}{{{sel}}}[{RATE}])))",
                BY_ROUTE,
                exemplar=True,
            )
        )
    )
    return rate, errors, latency


def facility_dashboard(f: Facility, slos: Sequence[Slo], opts: DashboardOptions) -> GeneratedDashboard:
    uid = names.dashboard_uid("facility", f.id)
    sel = f'{FACILITY}="{VAR_FACILITY}"'
    lay = _Layout()
    title = f"vitalgate: {f.name}"
    d = _base(title, uid, opts, [FACILITY]).with_variable(_facility_var(False, f.id))
    d = d.with_row(lay.row("SLOs"))
    for s in slos:
        sli, budget = _slo_stats(f, s, sel)
        d = d.with_panel(lay.place(sli, 6, 4)).with_panel(lay.place(budget, 6, 4))
    d = d.with_row(lay.row("Error budget"))
    burndown = _ratio_over_time(
        "Error budget remaining (burn-down over each SLO's window)",
        f"{names.BUDGET_REMAINING}{{{sel}}}",
        BY_SLO,
        _steps(*BUDGET_STEPS),
    )
    burn = _burn_rate_panel("Burn rate against the alert thresholds", sel, slos, SLO)
    d = d.with_panel(lay.place(burndown, 12, 8)).with_panel(lay.place(burn, 12, 8))
    d = d.with_row(lay.row("Traffic by route"))
    for p in _route_panels(sel):
        d = d.with_panel(lay.place(p, 8, 8))
    d = d.with_row(lay.row("Alerts"))
    alerts = (
        table.Panel()
        .title("Active alerts")
        .datasource(DS)
        .with_target(_q(f'ALERTS{{{sel}, alertstate="firing"}}', instant=True, table_fmt=True))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True, "Value": True, "__name__": True}}
            )
        )
        .no_value("No alerts firing")
    )
    d = d.with_panel(lay.place(alerts, 24, 6))
    return GeneratedDashboard(uid, title, *facility_folder(f), _build(d))


def slo_dashboard(s: Slo, opts: DashboardOptions) -> GeneratedDashboard:
    uid = names.dashboard_uid("slo", s.name)
    sel = f'{SLO}="{s.name}", {FACILITY}=~"{VAR_FACILITY}"'
    lay = _Layout()
    title = f"vitalgate SLO: {s.name}"
    d = _base(title, uid, opts, ["slo-detail"]).with_variable(
        _facility_var(True, query=f'label_values({names.BUDGET_REMAINING}{{{SLO}="{s.name}"}}, {FACILITY})')
    )
    d = d.with_row(
        lay.row(f"{s.name}: {s.description or s.kind} (objective {100 * s.objective:g}% over {s.window})")
    )
    panels = [
        _ratio_over_time(
            "SLI by facility",
            f"{names.PERIOD_SLI}{{{sel}}}",
            BY_FACILITY,
            _steps((None, "red"), (round(s.objective, 6), "green")),
        ),
        timeseries.Panel()
        .title("Error budget remaining by facility")
        .datasource(DS)
        .unit("percentunit")
        .with_target(_q(f"{names.BUDGET_REMAINING}{{{sel}}}", BY_FACILITY))
        .thresholds(_steps(*BUDGET_STEPS)),
        _burn_rate_panel("Burn rate by facility", sel, [s], FACILITY),
        timeseries.Panel()
        .title("Requests in the last hour by facility")
        .datasource(DS)
        .with_target(_q(f"{names.requests('1h')}{{{sel}}}", BY_FACILITY)),
    ]
    for p in panels:
        d = d.with_panel(lay.place(p, 12, 8))
    return GeneratedDashboard(uid, title, *FLEET_FOLDER, _build(d))


def latency_dashboard(opts: DashboardOptions) -> GeneratedDashboard:
    uid = names.dashboard_uid("latency")
    sel = f'{FACILITY}=~"{VAR_FACILITY}", {ROUTE}=~"$route"'
    lay = _Layout()
    title = "vitalgate: latency diagnosis"
    route_var = (
        db.QueryVariable("route")
        .label("Route")
        .datasource(DS)
        .query(f'label_values({COUNT}{{{FACILITY}=~"{VAR_FACILITY}"}}, {ROUTE})')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    d = _base(title, uid, opts, ["latency"]).with_variable(_facility_var(True)).with_variable(route_var)
    d = d.with_row(lay.row("Percentiles (click an exemplar dot for the slow request's trace)"))
    for q in (0.5, 0.95, 0.99):
        p = (
            timeseries.Panel()
            .title(f"p{round(q * 100)} by route and facility")
            .datasource(DS)
            .unit("s")
            .with_target(
                _q(
                    f"histogram_quantile({q}, sum by (le, {ROUTE}, {FACILITY}) "
                    f"(rate({BUCKET}{{{sel}}}[{RATE}])))",
                    BY_FACILITY + " " + BY_ROUTE,
                    exemplar=True,
                )
            )
        )
        d = d.with_panel(lay.place(p, 8, 9))
    d = d.with_row(lay.row("Distribution"))
    heat = (
        heatmap.Panel()
        .title("Latency heatmap")
        .datasource(DS)
        .with_target(
            _q(f"sum by (le) (increase({BUCKET}{{{sel}}}[{RATE}]))", "{{le}}", heat=True, exemplar=True)
        )
        .calculate(False)
    )
    slowest = (
        table.Panel()
        .title("Slowest routes now (p99)")
        .datasource(DS)
        .unit("s")
        .with_target(
            _q(
                f"topk(10, histogram_quantile(0.99, sum by (le, {ROUTE}, {FACILITY}) "
                f"(rate({BUCKET}{{{sel}}}[5m]))))",
                instant=True,
                table_fmt=True,
            )
        )
        .sort_by([cb.TableSortByFieldState().display_name("Value").desc(True)])
    )
    d = d.with_panel(lay.place(heat, 16, 10)).with_panel(lay.place(slowest, 8, 10))
    return GeneratedDashboard(uid, title, *FLEET_FOLDER, _build(d))


def _build(d: db.Dashboard) -> dict[str, Any]:
    model: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder, sort_keys=True))
    return model


def build_all(
    slos: Sequence[Slo], facilities: Sequence[Facility], opts: DashboardOptions
) -> list[GeneratedDashboard]:
    out = [fleet_overview(slos, facilities, opts), latency_dashboard(opts)]
    out += [slo_dashboard(s, opts) for s in slos]
    out += [facility_dashboard(f, slos, opts) for f in facilities]
    return out


def queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target in a dashboard model."""
    out = []
    for panel in model.get("panels", []):
        for target in panel.get("targets", []) or []:
            if "expr" in target:
                out.append((panel.get("title", ""), target["expr"]))
    return out
