"""Whether a Prometheus (or vmalert) runs the generated rules: every group loaded with every
rule, none in error, and each keeping up with its interval.

A rule file left out of ``rule_files``, or a PrometheusRule whose labels do not match the
operator's ``ruleSelector``, is ignored without a word: asking the server is how an operator
finds out (``vitalgate alerts verify``).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from typing import Any

BEHIND_INTERVALS = 3
"""A group last evaluated longer ago than this many intervals is falling behind (or stopped)."""


class RulesUnavailable(Exception):
    """The server did not answer ``/api/v1/rules``."""


def loaded_groups(url: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The rule groups the server at ``url`` runs (its ``/api/v1/rules``)."""
    endpoint = urllib.parse.urljoin(url.rstrip("/") + "/", "api/v1/rules")
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout_s) as r:  # noqa: S310  the operator's URL
            body = json.loads(r.read())
    except (OSError, ValueError) as exc:
        raise RulesUnavailable(f"{endpoint}: {exc}") from None
    groups = body.get("data", {}).get("groups") if isinstance(body, dict) else None
    if not isinstance(groups, list):
        raise RulesUnavailable(f"{endpoint}: not a rules API answer")
    return groups


def _rule_name(rule: dict[str, Any]) -> str:
    return str(rule.get("record") or rule.get("alert") or rule.get("name"))


def _age_s(stamp: Any, now_s: float) -> float | None:
    """Seconds since an RFC 3339 time (nanoseconds allowed); None for none or the zero time."""
    if not isinstance(stamp, str) or stamp.startswith("0001-"):
        return None
    head, dot, frac = stamp.rstrip("Z").partition(".")
    text = head + (("." + frac[:6]) if dot else "") + "+00:00"
    try:
        return now_s - datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def problems(expected: Sequence[dict[str, Any]], loaded: Sequence[dict[str, Any]], now_s: float) -> list[str]:
    """What is wrong with ``loaded`` (the server's groups) against ``expected`` (the generated
    ``rules.yaml`` groups); empty when every group runs as generated."""
    by_name = {str(g.get("name")): g for g in loaded}
    out: list[str] = []
    for group in expected:
        name = str(group["name"])
        running = by_name.get(name)
        if running is None:
            out.append(
                f"group {name}: not loaded (is rules.yaml in rule_files, or does the PrometheusRule"
                " match the operator's ruleSelector?)"
            )
            continue
        want = [_rule_name(r) for r in group["rules"]]
        have = [_rule_name(r) for r in running.get("rules", [])]
        missing = sorted(set(want) - set(have))
        if missing or len(have) != len(want):
            out.append(f"group {name}: {len(have)} rules loaded, {len(want)} generated (missing: {missing})")
        for rule in running.get("rules", []):
            health, error = rule.get("health"), rule.get("lastError")
            if error or health not in ("ok", "unknown", None):
                out.append(f"group {name}: rule {_rule_name(rule)}: {health}: {error or 'no error text'}")
        interval = float(running.get("interval") or 0)
        took = float(running.get("evaluationTime") or 0)
        if interval and took > interval:
            out.append(
                f"group {name}: takes {took:.2f} s to evaluate, longer than its {interval:g} s interval"
            )
        age = _age_s(running.get("lastEvaluation"), now_s)
        if interval and age is not None and age > BEHIND_INTERVALS * interval:
            out.append(
                f"group {name}: last evaluated {age:.0f} s ago, every {interval:g} s expected:"
                " evaluations are falling behind or stopped"
            )
        elif age is None:
            out.append(f"group {name}: loaded but not evaluated yet")
    return out
