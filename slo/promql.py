"""PromQL for SLOs over the gateway's metrics: one place for every expression,
so ``slo status --backend prometheus`` and the generated recording rules agree.
"""

from __future__ import annotations

from collections.abc import Callable

from core import conventions as names
from core.conventions import PROBE_ROUTE_PREFIX
from slo.spec import Slo

METRIC = names.REQUEST_DURATION
ENTRIES = f"{names.BUNDLE_ENTRIES}_total"
"""Batch and transaction entries by outcome (the gateway's ``status_class`` label)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def matchers(slo: Slo, extra: dict[str, str] | None = None) -> list[str]:
    out = [f'{names.SERVICE}="{_escape(slo.service)}"']
    if slo.methods:
        out.append(f'{names.METHOD}=~"{"|".join(slo.methods)}"')
    route = _route_matcher(slo)
    if route:
        out.append(route)
    for k, v in (extra or {}).items():
        out.append(f'{k}="{_escape(v)}"')
    return out


def _route_matcher(slo: Slo) -> str:
    """The route filter and the sources: probes are the routes ``probe {template}``."""
    probe = _escape(_regex_quote(PROBE_ROUTE_PREFIX))
    both = set(slo.sources) == {"traffic", "probe"}
    if slo.routes:
        alts = "|".join(_escape(_regex_quote(r)) for r in slo.routes)
        if both:
            return f'{names.ROUTE}=~"({probe})?({alts})"'
        if "probe" in slo.sources:
            return f'{names.ROUTE}=~"{probe}({alts})"'
        return f'{names.ROUTE}=~"{alts}"'
    if both:
        return ""
    if "probe" in slo.sources:
        return f'{names.ROUTE}=~"{probe}.*"'
    return f'{names.ROUTE}!~"{probe}.*"'


def _regex_quote(s: str) -> str:
    special = set(".^$*+?()[]{}|\\")
    return "".join("\\" + c if c in special else c for c in s)


def bad_status_regex(slo: Slo) -> str:
    """``Slo.status_is_good``'s rule as a status-label regex (bad: any 5xx, or a listed one)."""
    return "|".join(["5..", *(str(s) for s in sorted(slo.bad_statuses))])


def total_series(slo: Slo, extra: dict[str, str] | None = None) -> str:
    return f"{METRIC}_count{{{', '.join(matchers(slo, extra))}}}"


def good_series(slo: Slo, extra: dict[str, str] | None = None) -> str:
    """Good requests: below 500 and not a configured bad status; or, for latency, in the
    histogram bucket at the threshold (the gateway makes every threshold a bucket)."""
    m = matchers(slo, extra)
    if slo.kind == "latency":
        assert slo.threshold_s is not None
        m.append(f'le="{le_label(slo.threshold_s)}"')
        return f"{METRIC}_bucket{{{', '.join(m)}}}"
    m.append(f'{names.STATUS}!~"{bad_status_regex(slo)}"')
    return f"{METRIC}_count{{{', '.join(m)}}}"


def entry_series(slo: Slo, extra: dict[str, str] | None, good: bool) -> str:
    """A batch entry counts bad when its status is 5xx or unreadable (``invalid``)."""
    m = matchers(slo, extra)
    if good:
        m.append(f'{names.STATUS_CLASS}!~"5xx|invalid"')
    return f"{ENTRIES}{{{', '.join(m)}}}"


def counted(
    slo: Slo, extra: dict[str, str] | None, grouping: str, good: bool, increase: Callable[[str], str]
) -> str:
    """``grouping`` of the increase of the SLI's events (all, or the good ones): requests, plus
    batch entries for an SLO that counts them. Either side may have no series for a facility
    (no batches yet, no good requests): it then counts zero instead of hiding the other."""
    req = f"{grouping} ({increase(good_series(slo, extra) if good else total_series(slo, extra))})"
    if not slo.bundle_entries:
        return req
    ent = f"{grouping} ({increase(entry_series(slo, extra, good))})"
    return f"(({req} or {ent} * 0) + ({ent} or {req} * 0))"


def le_label(bound_s: float) -> str:
    """A bucket bound as prometheus_client writes the ``le`` label (0.3, 1.0, 10.0)."""
    return repr(float(bound_s))


def range_str(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def exact_increase(series: str, range_s: float) -> str:
    """Increase over the range without Prometheus' extrapolation where the counter did
    not reset: last value minus the value at the range start (or the last value, for a
    series born inside the range); ``increase()`` only for series that reset."""
    r = range_str(range_s)
    no_reset = f"(resets({series}[{r}]) > 0)"
    return (
        f"((last_over_time({series}[{r}]) - ({series} offset {r})) unless {no_reset})"
        f" or (last_over_time({series}[{r}]) unless {no_reset})"
        f" or increase({series}[{r}])"
    )


TILE_S = 60
"""The step of the generated rules' tiles: their group's interval, and the range each covers."""

LOOKBACK_S = 300
"""Prometheus' instant-vector lookback (``--query.lookback-delta``, 5m by default)."""


def created_of(series: str) -> str:
    """The ``_created`` series of a counter or histogram selector (``_count``, ``_bucket`` or
    ``_total``; the ``le`` matcher dropped): when the gateway first counted that label set."""
    name, _, rest = series.partition("{")
    for suffix in ("_count", "_bucket", "_total"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    matchers = [m for m in rest.rstrip("}").split(", ") if m and not m.startswith("le=")]
    return f"{name}_created{{{', '.join(matchers)}}}"


def exact_tile(series: str, step_s: float) -> str:
    """A counter's increase over the last ``step_s`` (evaluated every ``step_s``, so that each
    evaluation's range starts where the previous one ended), exact where ``increase()``
    extrapolates: consecutive tiles telescope into the increase between the scrapes at their
    ends, whatever their sum's window. Per series, before any ``sum``, with ``last`` and
    ``max`` its last and largest value in the range and ``start`` its value at the start:

    - never decreasing in the range (``max`` is ``last``) and ``last >= start``: the
      difference, the common case;
    - never decreasing in it but ``last < start``: a reset just before the range's first
      sample, and the process counted ``last`` since;
    - a reset inside it (``max > last``): what it grew before (``max - start``, or ``max``
      after a reset at the start too) plus what it counted after (``last``);
    - no value at the start: born in the range, counted from zero (``last``); unless its
      ``_created`` time says it is older than the range and the lookback, which is a gap in
      the scrapes (Prometheus down longer than its lookback), not a birth: such a tile counts
      nothing rather than the counter's whole life.

    Only ``last_over_time``, ``max_over_time`` and ``offset``, which Prometheus and
    VictoriaMetrics agree on (``resets()`` does not: VictoriaMetrics counts a drop from the
    sample before the range). Wrong only for a counter that reset and then, within one step,
    counted past its old value. What a process counted after its last scrape before it died
    is lost, as to every rule."""
    r = range_str(step_s)
    last = f"last_over_time({series}[{r}])"
    top = f"max_over_time({series}[{r}])"
    start = f"({series} offset {r})"
    dropped = f"({top} > {last})"
    old = f"({created_of(series)} < (time() - {round(step_s + LOOKBACK_S)}))"
    return (
        f"((({last} - {start}) >= 0) unless {dropped})"
        f" or ((({top} - {start} + {last}) >= {last}) and {dropped})"
        f" or (({top} + {last}) and {dropped})"
        f" or ({last} < {start})"
        f" or (({last} unless {start}) unless ignoring (le) {old})"
    )


def summed_tiles(
    tile: str, slo: Slo, range_s: float, grouping: str, extra: dict[str, str] | None = None
) -> str:
    """The sum of a recorded tile series (``slo:requests:tile1m`` and kin) over the last
    ``range_s``: a range a millisecond short, so that the tile a whole range back (which covers
    the minute before it) is left out where ranges include their start (Prometheus 2) as where
    they do not (Prometheus 3, VictoriaMetrics)."""
    sel = [
        f'{names.SLO_LABEL}="{_escape(slo.name)}"',
        *(f'{k}="{_escape(v)}"' for k, v in (extra or {}).items()),
    ]
    ms = max(1, round(range_s * 1000) - 1)
    return f"{grouping} (sum_over_time({tile}{{{', '.join(sel)}}}[{ms}ms]))"


def tile_slices(slo: Slo, range_s: float) -> tuple[str, str]:
    """Timeslice minutes of all facilities together: minutes with requests and good minutes over
    the range, each minute judged on the facilities' summed tiles (not a sum of the facilities'
    own minutes). Each step of the subquery takes the tiles evaluated in the minute before it,
    so every tile counts once."""
    one = 60.0

    def at_step(tile: str) -> str:
        return summed_tiles(tile, slo, one, "sum")

    total, good = at_step(names.TILE_REQUESTS), at_step(names.TILE_GOOD)
    r = range_str(range_s)
    data = f"count_over_time(({total} > 0)[{r}:1m])"
    ok = (
        f"count_over_time((({good} or ({total} * 0)) >= ({slo.timeslice_target!r} * {total} - 1e-9)"
        f" and ({total} > 0))[{r}:1m])"
    )
    return data, ok


def current_period(label: str, offset_s: float = 0) -> str:
    """Per facility, the ``label`` (month or quarter) of its current calendar period, from the
    gateway's ``vitalgate_facility_period_start_seconds``: the newest period start any replica
    reports (around a boundary, replicas scraped a moment apart may disagree), so one per
    facility. ``offset_s``: as it was that long ago."""
    off = f" offset {range_str(offset_s)}" if offset_s else ""
    g = f"{names.FACILITY_PERIOD}{off}"
    return (
        f"(max by ({names.FACILITY}, {label}) ({g})"
        f" == on ({names.FACILITY}) group_left () max by ({names.FACILITY}) ({g}))"
    )


def by_facility(expr: str) -> str:
    return f"sum by ({names.FACILITY}) ({expr})"


def all_facilities(expr: str) -> str:
    return f"sum({expr})"


def slices(slo: Slo, range_s: float, extra: dict[str, str] | None, grouping: str) -> tuple[str, str]:
    """Minutes with data, and good minutes, over the range (timeslice budgeting)."""
    total = counted(slo, extra, grouping, False, lambda s: f"increase({s}[1m])")
    good = counted(slo, extra, grouping, True, lambda s: f"increase({s}[1m])")
    r = range_str(range_s)
    data = f"count_over_time(({total} > 0)[{r}:1m])"
    ok = f"count_over_time(({good} / {total} >= {slo.timeslice_target!r})[{r}:1m])"
    return data, ok
