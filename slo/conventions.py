"""Every generated name in one place: recording rules, alerts, labels, dashboard uids.

Recording rules follow Prometheus' ``level:metric:operations`` convention, as
Sloth's do, so existing dashboards and habits carry over.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

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


UID_LIMIT = 40
"""Grafana's longest uid."""
_PLAIN_UID = re.compile(r"[a-z0-9_-]+")


def dashboard_uid(kind: str, name: str = "") -> str:
    """The one source of every dashboard and folder uid, and of every link to one.

    ``vg-facility-st-marys`` while that fits Grafana's 40 characters; a longer (or
    non-slug) name keeps a readable head and ends in ``-Z`` and ten base32 characters
    of its SHA-256, so the uid is stable and two names sharing a long prefix differ.
    Names are lower-case slugs, so the upper-case tail never equals a plain uid.
    """
    base = f"vg-{kind}-{name}" if name else f"vg-{kind}"
    if len(base) <= UID_LIMIT and _PLAIN_UID.fullmatch(base):
        return base
    digest = base64.b32encode(hashlib.sha256(base.encode()).digest()).decode()[:10]
    head = re.sub(r"[^a-z0-9_-]", "-", base)[: UID_LIMIT - 12]
    return f"{head}-Z{digest}"


FACILITY_UID_PREFIX = dashboard_uid("facility") + "-"


def hashed_facility_uids(facility_ids: Iterable[str]) -> dict[str, str]:
    """Facility id -> dashboard uid, for the ids whose uid is not the prefix plus the id.

    Links are filled in at render time (by Prometheus' or Grafana's templating), which
    cannot hash: the generators spell these few out and template the rest.
    """
    uids = {fid: dashboard_uid("facility", fid) for fid in facility_ids}
    return {fid: uid for fid, uid in sorted(uids.items()) if uid != FACILITY_UID_PREFIX + fid}


def facility_uid_go_template(facility_ids: Iterable[str], label: str = "$labels.facility") -> str:
    """A Prometheus (Go) template printing the dashboard uid of the facility in ``label``."""
    plain = f"{FACILITY_UID_PREFIX}{{{{ {label} }}}}"
    hashed = hashed_facility_uids(facility_ids)
    if not hashed:
        return plain
    branches = "{{ else if ".join(f'eq {label} "{fid}" }}}}{uid}' for fid, uid in hashed.items())
    return f"{{{{ if {branches}{{{{ else }}}}{plain}{{{{ end }}}}"


def facility_uid_promql(expr: str, facility_ids: Iterable[str], label: str = "dashboard_uid") -> str:
    """``expr`` with a ``label`` naming each facility's dashboard uid (for Grafana data links)."""
    out = f'label_replace({expr}, "{label}", "{FACILITY_UID_PREFIX}$1", "facility", "(.+)")'
    # Facility ids are slugs: as a (fully anchored) regex each matches itself only.
    for fid, uid in hashed_facility_uids(facility_ids).items():
        out = f'label_replace({out}, "{label}", "{uid}", "facility", "{fid}")'
    return out
