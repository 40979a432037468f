"""Every name in one place: what the gateway emits (metric names and labels, access-log
fields, the reserved service and facility values) and what is generated from it (recording
rules, alerts, dashboard uids).

The gateway's metrics follow the OpenTelemetry HTTP semantic conventions as Prometheus
spells them; recording rules follow Prometheus' ``level:metric:operations`` convention, as
Sloth's do, so existing dashboards and habits carry over. Everything that reads or writes one
of these (the data plane, the exposition, the store importer, PromQL, rules, unit tests,
dashboards, the demo) takes it from here.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import Final

# What the gateway emits. -----------------------------------------------------------------
ENTRY_ROUTE_PREFIX: Final = "entry "
"""The embedded store keeps a batch entry's outcomes as a series whose route is this prefix
and the entry's route template (``entry /fhir/Patient/{id}``): no request route starts so."""
PROBE_ROUTE_PREFIX: Final = "probe "
"""The route label of a synthetic probe's request (``probe /fhir/metadata``): its own series
in metrics, the log and the store, so that an SLO can count traffic, probes, or both."""
REQUEST_DURATION: Final = "http_server_request_duration_seconds"
ACTIVE_REQUESTS: Final = "http_server_active_requests"
FACILITY: Final = "facility"
SERVICE: Final = "service"
SLO_LABEL: Final = "slo"
"""The label of every recorded SLO series and SLO alert: the SLO's name."""
ROUTE: Final = "http_route"
METHOD: Final = "http_request_method"
STATUS: Final = "http_response_status_code"
REQUEST_LABELS: Final = (FACILITY, SERVICE, ROUTE, METHOD, STATUS)
"""The request histogram's labels, in the order of the gateway's label sets."""
STATUS_CLASS: Final = "status_class"
"""``2xx`` .. ``5xx``, or ``invalid``: a batch entry's outcome."""
TELEMETRY_DROPPED: Final = "vitalgate_telemetry_dropped"
CARDINALITY_OVERFLOW: Final = "vitalgate_cardinality_overflow"
BUNDLE_ENTRIES: Final = "vitalgate_fhir_bundle_entries"
URL_LEAK: Final = "vitalgate_upstream_url_leak"
STORE_ERRORS: Final = "vitalgate_store_errors"
STORE_LAST_FLUSH: Final = "vitalgate_store_last_flush_timestamp_seconds"
"""When the embedded store last held everything counted (per process; the oldest live one)."""
STORE_FLUSH_DURATION: Final = "vitalgate_store_last_flush_duration_seconds"
STORE_FLUSH_INTERVAL: Final = "vitalgate_store_flush_interval_seconds"
SPAN_EXPORT_FAILURES: Final = "vitalgate_span_export_failures"
ACCESS_LOG_WRITE_ERRORS: Final = "vitalgate_access_log_write_errors"
QUEUE_DEPTH: Final = "vitalgate_telemetry_queue_depth"
PROBE_REQUESTS: Final = "vitalgate_probe_requests"
PROBE_SUCCESS: Final = "vitalgate_probe_success"
UPSTREAM_CERT_EXPIRY: Final = "vitalgate_upstream_certificate_expiry_timestamp_seconds"
CONNECTIONS_REFUSED: Final = "vitalgate_client_connections_refused"
RESPONSES_UNINSPECTED: Final = "vitalgate_fhir_responses_uninspected"
RESPONSE_SPOOLED_BYTES: Final = "vitalgate_response_spooled_bytes"
RESPONSE_SPOOL_ERRORS: Final = "vitalgate_response_spool_errors"
RESPONSE_SPOOL_FALLBACKS: Final = "vitalgate_response_spool_fallbacks"
AUDIT_RECORDS: Final = "vitalgate_audit_records"
AUDIT_WRITE_ERRORS: Final = "vitalgate_audit_write_errors"
AUDIT_FORWARDED: Final = "vitalgate_audit_forwarded"
AUDIT_FORWARD_FAILURES: Final = "vitalgate_audit_forward_failures"
AUDIT_FORWARD_LAG: Final = "vitalgate_audit_forward_lag_records"
FACILITY_INFO: Final = "vitalgate_facility_info"
FACILITY_SLA: Final = "vitalgate_facility_sla_ratio"
FACILITY_NAME: Final = "facility_name"

NO_SERVICE: Final = "none"
"""The service of a request no route matched (and of one the HTTP parser refused)."""
UNKNOWN_FACILITY: Final = "unknown"
"""A request whose facility is missing or not configured."""
ALL_FACILITIES: Final = "*"
"""Status over every facility at once (``slo status --facility '*'``, the store's rows)."""
OTHER_ROUTE: Final = "other"
"""The route a label set folds into once the cardinality limit is reached."""
OTHER_METHOD: Final = "_OTHER"
"""OpenTelemetry's method for one outside the known set."""

# Access-log fields, in the order a request line carries them.
LOG_TIMESTAMP: Final = "timestamp"
LOG_EVENT: Final = "event"
LOG_TRACE_ID: Final = "trace_id"
LOG_SPAN_ID: Final = "span_id"
LOG_TRACE_FLAGS: Final = "trace_flags"
LOG_FACILITY: Final = FACILITY
LOG_SERVICE: Final = SERVICE
LOG_ROUTE: Final = "http.route"
LOG_METHOD: Final = "http.request.method"
LOG_STATUS: Final = "http.response.status_code"
LOG_DURATION_MS: Final = "duration_ms"
LOG_UPSTREAM_MS: Final = "upstream_duration_ms"
LOG_ERROR_TYPE: Final = "error.type"
REQUEST_EVENT: Final = "request"
REQUEST_FIELDS: Final = (
    LOG_TRACE_ID,
    LOG_SPAN_ID,
    LOG_TRACE_FLAGS,
    LOG_FACILITY,
    LOG_SERVICE,
    LOG_ROUTE,
    LOG_METHOD,
    LOG_STATUS,
    LOG_DURATION_MS,
    LOG_UPSTREAM_MS,
    LOG_ERROR_TYPE,
)

# What is generated. -----------------------------------------------------------------------

ALERT_BURN = "ErrorBudgetBurn"
ALERT_ABSENT = "SLOMetricsAbsent"
RULE_GROUP_PREFIX = "vitalgate-slo-"

OBJECTIVE = "slo:objective:ratio"
ERROR_BUDGET = "slo:error_budget:ratio"
BUDGET_REMAINING = "slo:period_error_budget_remaining:ratio"
PERIOD_BURN_RATE = "slo:period_burn_rate:ratio"
PERIOD_SLI = "slo:period_sli:ratio"


def error_ratio(window: str) -> str:
    """``slo:sli_error:ratio_rate5m``: the share of bad requests over ``window``."""
    return f"slo:sli_error:ratio_rate{window}"


def requests(window: str) -> str:
    """``slo:requests:increase5m``: requests over ``window`` (for the low-traffic guard)."""
    return f"slo:requests:increase{window}"


def rule_group(slo_name: str) -> str:
    return RULE_GROUP_PREFIX + slo_name


def long_rule_group(slo_name: str) -> str:
    """The SLO's windows of a day and more, evaluated less often than its alerts."""
    return RULE_GROUP_PREFIX + slo_name + "-long"


TILE_REQUESTS = "slo:requests:tile1m"
"""Per facility, the SLO's requests over one step of its rule group (a minute): the tiles every
window sums."""
TILE_GOOD = "slo:good_requests:tile1m"
TILE_MINUTES = "slo:minutes:tile1m"
"""Timeslice SLOs: 1 for a step with requests, 0 without."""
TILE_GOOD_MINUTES = "slo:good_minutes:tile1m"
PERIOD_TILES: Final = {
    TILE_REQUESTS: "slo:period_requests:tile1m",
    TILE_GOOD: "slo:period_good_requests:tile1m",
    TILE_MINUTES: "slo:period_minutes:tile1m",
    TILE_GOOD_MINUTES: "slo:period_good_minutes:tile1m",
}
"""Calendar SLOs: each tile again, labelled with the facility's month (or quarter) its minute
started in, so that a calendar window sums the current period's tiles only."""
CONFIG_INFO: Final = "vitalgate_config_info"
CONFIG_RELOADS: Final = "vitalgate_config_reloads_total"
CONFIG_LAST_RELOAD_OK: Final = "vitalgate_config_last_reload_successful"
CONFIG_LAST_RELOAD_SUCCESS: Final = "vitalgate_config_last_reload_success_timestamp_seconds"
WORKER_RESTARTS: Final = "vitalgate_worker_restarts_total"
ADMIN_SIGN_INS: Final = "vitalgate_admin_sign_ins_total"
"""Browser sign-ins on the admin listener, by ``result`` (``ok``, ``refused``)."""
ADMIN_SESSIONS: Final = "vitalgate_admin_sessions"
"""Browser sessions held by the admin listener now."""
FACILITY_PERIOD: Final = "vitalgate_facility_period_start_seconds"
"""Per facility, labelled with its current local ``month`` (2026-12) and ``quarter``
(2026-Q4): the start of that month in Unix seconds, from its time zone (DST included)."""
PERIOD_LABELS: Final = {"month": "month", "quarter": "quarter"}


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


def facility_uid_go_template(facility_ids: Iterable[str], label: str = "$labels." + FACILITY) -> str:
    """A Prometheus (Go) template printing the dashboard uid of the facility in ``label``."""
    plain = f"{FACILITY_UID_PREFIX}{{{{ {label} }}}}"
    hashed = hashed_facility_uids(facility_ids)
    if not hashed:
        return plain
    branches = "{{ else if ".join(f'eq {label} "{fid}" }}}}{uid}' for fid, uid in hashed.items())
    return f"{{{{ if {branches}{{{{ else }}}}{plain}{{{{ end }}}}"


def facility_uid_promql(expr: str, facility_ids: Iterable[str], label: str = "dashboard_uid") -> str:
    """``expr`` with a ``label`` naming each facility's dashboard uid (for Grafana data links)."""
    out = f'label_replace({expr}, "{label}", "{FACILITY_UID_PREFIX}$1", "{FACILITY}", "(.+)")'
    # Facility ids are slugs: as a (fully anchored) regex each matches itself only.
    for fid, uid in hashed_facility_uids(facility_ids).items():
        out = f'label_replace({out}, "{label}", "{uid}", "{FACILITY}", "{fid}")'
    return out
