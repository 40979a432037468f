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

from slo.configfile import ConfigError, Loc, Problem, Source, parse_yaml_documents, read_text
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


def _convert(
    src: Source,
    doc: dict[str, Any],
    slis: dict[str, tuple[Source, Loc, dict[str, Any]]],
    notes: list[Problem],
    errors: list[Problem],
) -> dict[str, Any] | None:
    spec = _dict(doc.get("spec"))
    name = _get(doc, "metadata", "name")
    if not isinstance(name, str) or not re.fullmatch(NAME_RE, name):
        errors.append(src.problem(("metadata", "name"), f"SLO name must match {NAME_RE} (got {name!r})"))
        return None
    out: dict[str, Any] = {"name": name}
    service = spec.get("service")
    if not isinstance(service, str):
        errors.append(src.problem(("spec", "service"), "required: the upstream (service) the SLO is about"))
        return None
    out["service"] = service
    if isinstance(spec.get("description"), str):
        out["description"] = spec["description"]

    # The indicator: inline, or a reference to a kind: SLI document in the same file.
    indicator: dict[str, Any] | None = (
        spec.get("indicator") if isinstance(spec.get("indicator"), dict) else None
    )
    ind_src: Source = src
    ind_loc: Loc = ("spec", "indicator")
    if indicator is None and isinstance(spec.get("indicatorRef"), str):
        ref = slis.get(spec["indicatorRef"])
        if ref is None:
            errors.append(
                src.problem(
                    ("spec", "indicatorRef"), f"no kind: SLI named {spec['indicatorRef']!r} in this file"
                )
            )
            return None
        ind_src, ind_loc, indicator = ref
    if indicator is None:
        errors.append(src.problem(("spec",), "an indicator or indicatorRef is required"))
        return None
    ind_spec = _dict(indicator.get("spec"))

    objectives = _list(spec.get("objectives"))
    if not objectives or not isinstance(objectives[0], dict):
        errors.append(src.problem(("spec", "objectives"), "at least one objective is required"))
        return None
    if len(objectives) > 1:
        notes.append(
            src.problem(
                ("spec", "objectives", 1),
                "only the first objective is imported; the others are not",
                at_key=True,
            )
        )
    obj = objectives[0]
    if "targetPercent" in obj:
        out["objective"] = float(obj["targetPercent"])
    elif "target" in obj:
        out["objective"] = round(float(obj["target"]) * 100, 6)
    else:
        errors.append(src.problem(("spec", "objectives", 0), "target or targetPercent is required"))
        return None

    if "ratioMetric" in ind_spec:
        ratio = ind_spec["ratioMetric"]
        out["sli"] = {"availability": {}}
        notes.append(
            ind_src.problem(
                (*ind_loc, "spec", "ratioMetric"),
                "queries not translated: measured at the gateway as availability (status < 500)",
                at_key=True,
            )
        )
        if isinstance(ratio, dict) and ratio.get("counter") is False:
            notes.append(
                ind_src.problem(
                    (*ind_loc, "spec", "ratioMetric", "counter"),
                    "gauge ratios are not supported; counted as requests",
                    at_key=True,
                )
            )
    elif "thresholdMetric" in ind_spec:
        op, value = obj.get("op"), obj.get("value")
        if op not in ("lte", "lt") or not isinstance(value, int | float):
            errors.append(
                src.problem(
                    ("spec", "objectives", 0),
                    "a thresholdMetric objective needs op: lte and a value (seconds)",
                )
            )
            return None
        out["sli"] = {"latency": {"threshold": f"{round(float(value) * 1000)}ms"}}
        notes.append(
            ind_src.problem(
                (*ind_loc, "spec", "thresholdMetric"),
                f"query not translated: latency measured at the gateway against {value} s",
                at_key=True,
            )
        )
    else:
        errors.append(
            ind_src.problem(
                (*ind_loc, "spec"), "only ratioMetric and thresholdMetric indicators are supported"
            )
        )
        return None

    windows = _list(spec.get("timeWindow"))
    if len(windows) != 1 or not isinstance(windows[0], dict):
        errors.append(src.problem(("spec", "timeWindow"), "exactly one time window is required"))
        return None
    tw = windows[0]
    duration = str(tw.get("duration", ""))
    if tw.get("isRolling", False):
        days = _rolling_days(duration)
        if days is None:
            errors.append(
                src.problem(
                    ("spec", "timeWindow", 0, "duration"),
                    f"rolling windows must be whole days or weeks (got {duration!r})",
                )
            )
            return None
        out["window"] = days
    else:
        cal = _CALENDAR.get(duration)
        if cal is None:
            errors.append(
                src.problem(
                    ("spec", "timeWindow", 0, "duration"),
                    f"calendar windows must be 1M or 1Q (got {duration!r})",
                )
            )
            return None
        out["window"] = {"calendar": cal}
        if _get(tw, "calendar", "timeZone") is not None:
            notes.append(
                src.problem(
                    ("spec", "timeWindow", 0, "calendar", "timeZone"),
                    "not imported: calendar windows use each facility's own time zone",
                    at_key=True,
                )
            )
        if _get(tw, "calendar", "startTime") is not None:
            notes.append(
                src.problem(
                    ("spec", "timeWindow", 0, "calendar", "startTime"),
                    "not imported: periods start on the first of the month or quarter",
                    at_key=True,
                )
            )

    method = spec.get("budgetingMethod", "Occurrences")
    if method == "Timeslices":
        out["budgeting"] = "timeslices"
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
    elif method != "Occurrences":
        errors.append(
            src.problem(
                ("spec", "budgetingMethod"), f"{method!r} is not supported (Occurrences or Timeslices)"
            )
        )
        return None
    if spec.get("alertPolicies"):
        notes.append(
            src.problem(
                ("spec", "alertPolicies"),
                "not imported: alerts follow the multiwindow burn-rate table (see alerting:)",
                at_key=True,
            )
        )
    for key in spec:
        if key not in {
            "service",
            "description",
            "indicator",
            "indicatorRef",
            "objectives",
            "timeWindow",
            "budgetingMethod",
            "alertPolicies",
        }:
            notes.append(src.problem(("spec", key), "not imported: no equivalent", at_key=True))
    out["sli"] = out.pop("sli")
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
