"""Every generated name in one place: recording rules, alerts, labels, dashboard uids.

Recording rules follow Prometheus' ``level:metric:operations`` convention, as
Sloth's do, so existing dashboards and habits carry over.
"""

from __future__ import annotations

import re

ALERT_BURN = "ErrorBudgetBurn"
ALERT_ABSENT = "SLOMetricsAbsent"
RULE_GROUP_PREFIX = "vitalgate-slo-"

OBJECTIVE = "slo:objective:ratio"
ERROR_BUDGET = "slo:error_budget:ratio"
BUDGET_REMAINING = "slo:period_error_budget_remaining:ratio"
PERIOD_BURN_RATE = "slo:period_burn_rate:ratio"
PERIOD_SLI = "slo:period_sli:ratio"
FACILITY_INFO = "vitalgate_facility_info"
FACILITY_SLA = "vitalgate_facility_sla_ratio"


def error_ratio(window: str) -> str:
    """``slo:sli_error:ratio_rate5m``: the share of bad requests over ``window``."""
    return f"slo:sli_error:ratio_rate{window}"


def requests(window: str) -> str:
    """``slo:requests:increase5m``: requests over ``window`` (for the low-traffic guard)."""
    return f"slo:requests:increase{window}"


def rule_group(slo_name: str) -> str:
    return RULE_GROUP_PREFIX + slo_name


def dashboard_uid(kind: str, name: str = "") -> str:
    """Grafana uids are at most 40 characters: ``vg-facility-st-marys``."""
    base = f"vg-{kind}-{name}" if name else f"vg-{kind}"
    return re.sub(r"[^a-zA-Z0-9_-]", "-", base)[:40]
