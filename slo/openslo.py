"""Import OpenSLO v1 ``kind: SLO`` documents as an equivalent ``slos.yaml``.

vitalgate measures at the gateway, so an OpenSLO indicator's queries are not
translated: a ``ratioMetric`` becomes an availability SLI (good = status below
500) and a ``thresholdMetric`` a latency SLI whose threshold is the
objective's ``value`` in seconds. Everything that has no equivalent is named
in a note (``file:line:column: field: ...``), never dropped silently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from core.configfile import ConfigError, Loc, Problem, Source, parse_yaml_documents, read_text
from slo.spec import NAME_RE

_CALENDAR = {"1M": "month", "1Q": "quarter"}


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _rolling_days(duration: str) -> str | None:
    m = re.fullmatch(r"(\d+)([dw])", duration.strip())
    if not m:
        return None
    n = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
    return f"{n}d" if n > 0 else None


class _Refused(Exception):
    """An SLO that cannot be imported, and the one problem that says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


_IMPORTED_KEYS = frozenset(
    {
        "service",
        "description",
        "indicator",
        "indicatorRef",
        "objectives",
        "timeWindow",
        "budgetingMethod",
        "alertPolicies",
    }
)


def _convert(
    src: Source,
    doc: dict[str, Any],
    slis: dict[str, tuple[Source, Loc, dict[str, Any]]],
    notes: list[Problem],
    errors: list[Problem],
) -> dict[str, Any] | None:
    """One kind: SLO document as a slos.yaml entry (None, with the reason in ``errors``, when it
    cannot be imported); what is dropped on the way goes to ``notes``."""
    spec = _dict(doc.get("spec"))
    try:
        name = _get(doc, "metadata", "name")
        if not isinstance(name, str) or not re.fullmatch(NAME_RE, name):
            raise _Refused(src.problem(("metadata", "name"), f"SLO name must match {NAME_RE} (got {name!r})"))
        service = spec.get("service")
        if not isinstance(service, str):
            raise _Refused(
                src.problem(("spec", "service"), "required: the upstream (service) the SLO is about")
            )
        out: dict[str, Any] = {"name": name, "service": service}
        if isinstance(spec.get("description"), str):
            out["description"] = spec["description"]
        indicator = _indicator(src, spec, slis)
        obj = _objective(src, spec, notes)
        out["objective"] = _target(src, obj)
        sli = _sli(src, indicator, obj, notes)
        out["window"] = _window(src, spec, notes)
        out.update(_budgeting(src, spec, obj, notes))
    except _Refused as refused:
        errors.append(refused.problem)
        return None
    if spec.get("alertPolicies"):
        notes.append(
            src.problem(
                ("spec", "alertPolicies"),
                "not imported: alerts follow the multiwindow burn-rate table (see alerting:)",
                at_key=True,
            )
        )
    notes.extend(
        src.problem(("spec", key), "not imported: no equivalent", at_key=True)
        for key in spec
        if key not in _IMPORTED_KEYS
    )
    out["sli"] = sli
    return out


def _indicator(
    src: Source, spec: dict[str, Any], slis: dict[str, tuple[Source, Loc, dict[str, Any]]]
) -> tuple[Source, Loc, dict[str, Any]]:
    """The indicator: inline, or a reference to a kind: SLI document in the same file (with
    where it is, for notes about it)."""
    indicator = spec.get("indicator")
    if isinstance(indicator, dict):
        return src, ("spec", "indicator"), _dict(indicator.get("spec"))
    ref_name = spec.get("indicatorRef")
    if isinstance(ref_name, str):
        ref = slis.get(ref_name)
        if ref is None:
            raise _Refused(
                src.problem(("spec", "indicatorRef"), f"no kind: SLI named {ref_name!r} in this file")
            )
        return ref[0], ref[1], _dict(ref[2].get("spec"))
    raise _Refused(src.problem(("spec",), "an indicator or indicatorRef is required"))


def _objective(src: Source, spec: dict[str, Any], notes: list[Problem]) -> dict[str, Any]:
    objectives = _list(spec.get("objectives"))
    if not objectives or not isinstance(objectives[0], dict):
        raise _Refused(src.problem(("spec", "objectives"), "at least one objective is required"))
    if len(objectives) > 1:
        notes.append(
            src.problem(
                ("spec", "objectives", 1),
                "only the first objective is imported; the others are not",
                at_key=True,
            )
        )
    first: dict[str, Any] = objectives[0]
    return first


def _target(src: Source, obj: dict[str, Any]) -> float:
    if "targetPercent" in obj:
        return float(obj["targetPercent"])
    if "target" in obj:
        return round(float(obj["target"]) * 100, 6)
    raise _Refused(src.problem(("spec", "objectives", 0), "target or targetPercent is required"))


def _sli(
    src: Source, indicator: tuple[Source, Loc, dict[str, Any]], obj: dict[str, Any], notes: list[Problem]
) -> dict[str, Any]:
    """The SLI as the gateway measures it: queries are not translated."""
    ind_src, ind_loc, ind_spec = indicator
    if "ratioMetric" in ind_spec:
        notes.append(
            ind_src.problem(
                (*ind_loc, "spec", "ratioMetric"),
                "queries not translated: measured at the gateway as availability (status < 500)",
                at_key=True,
            )
        )
        ratio = ind_spec["ratioMetric"]
        if isinstance(ratio, dict) and ratio.get("counter") is False:
            notes.append(
                ind_src.problem(
                    (*ind_loc, "spec", "ratioMetric", "counter"),
                    "gauge ratios are not supported; counted as requests",
                    at_key=True,
                )
            )
        return {"availability": {}}
    if "thresholdMetric" in ind_spec:
        op, value = obj.get("op"), obj.get("value")
        if op not in ("lte", "lt") or not isinstance(value, int | float):
            raise _Refused(
                src.problem(
                    ("spec", "objectives", 0),
                    "a thresholdMetric objective needs op: lte and a value (seconds)",
                )
            )
        notes.append(
            ind_src.problem(
                (*ind_loc, "spec", "thresholdMetric"),
                f"query not translated: latency measured at the gateway against {value} s",
                at_key=True,
            )
        )
        return {"latency": {"threshold": f"{round(float(value) * 1000)}ms"}}
    raise _Refused(
        ind_src.problem((*ind_loc, "spec"), "only ratioMetric and thresholdMetric indicators are supported")
    )


def _window(src: Source, spec: dict[str, Any], notes: list[Problem]) -> str | dict[str, str]:
    windows = _list(spec.get("timeWindow"))
    if len(windows) != 1 or not isinstance(windows[0], dict):
        raise _Refused(src.problem(("spec", "timeWindow"), "exactly one time window is required"))
    tw = windows[0]
    duration = str(tw.get("duration", ""))
    loc: Loc = ("spec", "timeWindow", 0, "duration")
    if tw.get("isRolling", False):
        days = _rolling_days(duration)
        if days is None:
            raise _Refused(
                src.problem(loc, f"rolling windows must be whole days or weeks (got {duration!r})")
            )
        return days
    cal = _CALENDAR.get(duration)
    if cal is None:
        raise _Refused(src.problem(loc, f"calendar windows must be 1M or 1Q (got {duration!r})"))
    for key, why in (
        ("timeZone", "not imported: calendar windows use each facility's own time zone"),
        ("startTime", "not imported: periods start on the first of the month or quarter"),
    ):
        if _get(tw, "calendar", key) is not None:
            notes.append(src.problem(("spec", "timeWindow", 0, "calendar", key), why, at_key=True))
    return {"calendar": cal}


def _budgeting(
    src: Source, spec: dict[str, Any], obj: dict[str, Any], notes: list[Problem]
) -> dict[str, Any]:
    method = spec.get("budgetingMethod", "Occurrences")
    if method == "Occurrences":
        return {}
    if method != "Timeslices":
        raise _Refused(
            src.problem(
                ("spec", "budgetingMethod"), f"{method!r} is not supported (Occurrences or Timeslices)"
            )
        )
    out: dict[str, Any] = {"budgeting": "timeslices"}
    window = str(obj.get("timeSliceWindow", "1m"))
    if window not in ("1m", "60s"):
        notes.append(
            src.problem(
                ("spec", "objectives", 0, "timeSliceWindow"),
                f"slices are always 1m (got {window!r})",
                at_key=True,
            )
        )
    if "timeSliceTarget" in obj:
        out["timeslice"] = {"target": round(float(obj["timeSliceTarget"]) * 100, 6)}
    return out


def openslo_to_slos_yaml(path: Path) -> tuple[str, list[Problem]]:
    """The slos.yaml text, and notes on what was not imported. Raises ConfigError."""
    sources = parse_yaml_documents(read_text(path), str(path))
    notes: list[Problem] = []
    errors: list[Problem] = []
    slis: dict[str, tuple[Source, Loc, dict[str, Any]]] = {}
    for src in sources:
        d = src.data
        if isinstance(d, dict) and d.get("kind") == "SLI" and isinstance(_get(d, "metadata", "name"), str):
            slis[d["metadata"]["name"]] = (src, (), d)
    slos = []
    for src in sources:
        d = src.data
        if not isinstance(d, dict):
            errors.append(src.problem((), "not an OpenSLO document"))
            continue
        if d.get("apiVersion") != "openslo/v1":
            errors.append(
                src.problem(("apiVersion",), f"only openslo/v1 is supported (got {d.get('apiVersion')!r})")
            )
            continue
        kind = d.get("kind")
        if kind == "SLO":
            converted = _convert(src, d, slis, notes, errors)
            if converted is not None:
                slos.append(converted)
        elif kind != "SLI":
            notes.append(
                src.problem(
                    ("kind",), f"kind {kind} not imported (only SLO, and SLI by reference)", at_key=True
                )
            )
    if errors:
        raise ConfigError(errors)
    header = f"# Imported from {path.name} (OpenSLO v1) by `vitalgate slo import-openslo`.\n"
    return header + yaml.safe_dump({"version": 1, "slos": slos}, sort_keys=False, allow_unicode=True), notes
