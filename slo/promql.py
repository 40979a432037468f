"""PromQL for SLOs over the gateway's metrics: one place for every expression,
so ``slo status --backend prometheus`` and the generated recording rules agree.
"""

from __future__ import annotations

from collections.abc import Callable

from slo import conventions as names
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
    if slo.routes:
        out.append(f'{names.ROUTE}=~"' + "|".join(_escape(_regex_quote(r)) for r in slo.routes) + '"')
    for k, v in (extra or {}).items():
        out.append(f'{k}="{_escape(v)}"')
    return out


def _regex_quote(s: str) -> str:
    special = set(".^$*+?()[]{}|\\")
    return "".join("\\" + c if c in special else c for c in s)


def bad_status_regex(slo: Slo) -> str:
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
