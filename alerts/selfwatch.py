"""Alerts on the gateway itself (``vitalgate-self``): what it counts when it fails to record,
store, audit or forward, turned into alerts, and a watchdog that always fires so that
Alertmanager's silence about it (a dead man's switch) says the alerting path is broken.

Each failure counter alerts on any increase over its window. A counter's label set that
first appears with a failure (no sample of it before) counts too: ``increase()`` alone cannot
see the first increment of a series born at 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alerts.yamlout import dump
from core import conventions as names
from core.durations import format_duration

GROUP = names.RULE_GROUP_PREFIX + "self"
WATCHDOG = "Watchdog"


@dataclass(frozen=True)
class SelfAlert:
    name: str
    metric: str
    """The counter, without ``_total``."""
    by: tuple[str, ...]
    window_s: float
    severity: str
    summary: str
    description: str
    matchers: str = ""
    at_least: int = 1
    """Failures in the window that fire."""


SELF_ALERTS: tuple[SelfAlert, ...] = (
    SelfAlert(
        "VitalgateTelemetryDropped",
        names.TELEMETRY_DROPPED,
        ("instance", "signal"),
        600,
        "ticket",
        "The gateway is dropping telemetry",
        "Log lines, spans, store rows or audit records were dropped (queue full, exporter or"
        " writer failing): what happened is no longer all on record.",
    ),
    SelfAlert(
        "VitalgateStoreWriteFailing",
        names.STORE_ERRORS,
        ("instance",),
        600,
        "ticket",
        "The embedded store's writes are failing",
        "Writes are retried until they succeed; until then status and reports lag behind.",
        'operation="write"',
    ),
    SelfAlert(
        "VitalgateCompactionFailing",
        names.STORE_ERRORS,
        ("instance",),
        3600,
        "ticket",
        "The embedded store's compaction is failing",
        "Hourly rollups and expiry are not being written: the store grows and long windows slow down.",
        'operation="compaction"',
    ),
    SelfAlert(
        "VitalgateAuditWriteFailing",
        names.AUDIT_WRITE_ERRORS,
        ("instance",),
        600,
        "page",
        "The audit trail cannot be written",
        "AuditEvents, checkpoints or expiries failed to reach the disk: who touched which record"
        " may not be on record. Strict durability refuses requests meanwhile.",
    ),
    SelfAlert(
        "VitalgateAuditForwardFailing",
        names.AUDIT_FORWARD_FAILURES,
        ("instance", "reason"),
        900,
        "ticket",
        "The audit repository is not accepting AuditEvents",
        "Records wait on disk (vitalgate_audit_forward_lag_records) until the repository accepts them.",
    ),
    SelfAlert(
        "VitalgateWorkerRestarting",
        names.WORKER_RESTARTS.removesuffix("_total"),
        ("instance", "worker"),
        900,
        "page",
        "A gateway worker keeps dying",
        "The supervisor replaced the same worker 3 times in 15 minutes: a crash loop, with its"
        " share of connections refused or reset each time. Its log says why (worker_exited).",
        at_least=3,
    ),
    SelfAlert(
        "VitalgateSpanExportFailing",
        names.SPAN_EXPORT_FAILURES,
        ("instance", "reason"),
        600,
        "ticket",
        "The trace collector is not taking spans",
        "Span batches failed to export (their spans are counted in vitalgate_telemetry_dropped_total"
        '{signal="span"}): traces of this period are missing.',
    ),
    SelfAlert(
        "VitalgateAccessLogWriteFailing",
        names.ACCESS_LOG_WRITE_ERRORS,
        ("instance",),
        600,
        "ticket",
        "The access log cannot be written",
        "Writes of the access log failed (a full disk, a closed pipe): its lines are dropped and"
        " counted; what the gateway did is missing from the log.",
    ),
    SelfAlert(
        "VitalgateCardinalityOverflow",
        names.CARDINALITY_OVERFLOW,
        ("instance", "metric"),
        3600,
        "ticket",
        "Label sets are being folded into route 'other'",
        "The cardinality budget is spent: new routes are no longer told apart in metrics.",
    ),
)


@dataclass(frozen=True)
class StateAlert:
    """An alert on a state the gateway exports (a gauge), with its promtool fixtures."""

    name: str
    expr: str
    severity: str
    summary: str
    description: str
    series: tuple[tuple[str, str, str], ...]
    """(metric, values when failing, values when healthy), each per ``instance``, 1 m apart."""
    for_s: float = 0


STATE_ALERTS: tuple[StateAlert, ...] = (
    StateAlert(
        "VitalgateStoreFlushStale",
        # The age at the scrape itself (the sample's timestamp less its value), so that the
        # scrape interval does not add to it.
        f"(timestamp({names.STORE_LAST_FLUSH}) - {names.STORE_LAST_FLUSH})"
        f" > 3 * {names.STORE_FLUSH_INTERVAL}",
        "ticket",
        "The embedded store has not flushed for 3 flush intervals",
        "Requests counted in memory are not reaching the store (a stuck or failing writer):"
        " status, pages and reports read from it are behind, and a crash would lose them.",
        (
            (names.STORE_LAST_FLUSH, "600+0x30", "0+60x30"),
            (names.STORE_FLUSH_INTERVAL, "10+0x30", "10+0x30"),
        ),
    ),
    StateAlert(
        "VitalgateUpstreamCertificateExpiring",
        f"(min by (instance, upstream) ({names.UPSTREAM_CERT_EXPIRY}) - time()) < 14 * 86400",
        "ticket",
        "An upstream's TLS certificate expires within 14 days",
        "Once it expires the gateway refuses the upstream (502 upstream_tls_error) and every"
        " facility behind it is down: renew it.",
        ((names.UPSTREAM_CERT_EXPIRY + '{upstream="fhir"}', "864000+0x30", "8640000+0x30"),),
    ),
    StateAlert(
        "VitalgateProbesFailingWithoutTraffic",
        # The night-time outage: nobody calls, so only the probes can tell.
        f"(max by (instance, upstream, {names.FACILITY}) ({names.PROBE_SUCCESS}) == 0)"
        f" unless on (upstream, {names.FACILITY}) label_replace(sum by ({names.FACILITY}, {names.SERVICE})"
        f' (rate({names.REQUEST_DURATION}_count{{{names.ROUTE}!~"probe .*"}}[10m])) > 0,'
        f' "upstream", "$1", "{names.SERVICE}", "(.*)")',
        "ticket",
        "Probes of an upstream fail while no client is calling",
        "The gateway's synthetic probes of this upstream for this facility fail and there is no"
        " client traffic to show it otherwise: the service is likely down for the facility's"
        " next user.",
        ((names.PROBE_SUCCESS + '{upstream="fhir", facility="clinic"}', "0+0x30", "1+0x30"),),
        for_s=120,
    ),
    StateAlert(
        "VitalgateConfigReloadFailed",
        f"max by (instance) ({names.CONFIG_LAST_RELOAD_OK}) == 0",
        "ticket",
        "The last configuration reload failed",
        "The gateway runs the config it had before: the change on disk is not in force. Its log"
        " (config_reload_failed) and `vitalgate check` name each problem at file:line:column.",
        ((names.CONFIG_LAST_RELOAD_OK, "0+0x30", "1+0x30"),),
    ),
)


def _state_labels(metric: str) -> dict[str, str]:
    rest = metric.partition("{")[2]
    pairs = (m.split("=", 1) for m in rest.rstrip("}").split(",") if m.strip())
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def _grew(a: SelfAlert, scale: float) -> str:
    sel = f"{a.metric}_total{{{a.matchers}}}"
    window = format_duration(max(1.0, a.window_s / scale))
    by = ", ".join(a.by)
    born = f"({sel} unless {sel} offset {window})"
    n = a.at_least - 1
    return f"(sum by ({by}) (increase({sel}[{window}])) > {n}) or (sum by ({by}) ({born}) > {n})"


def self_rules(time_scale: float = 1.0) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {
            "alert": a.name,
            "expr": _grew(a, time_scale),
            "labels": {"severity": a.severity, "component": "vitalgate"},
            "annotations": {"summary": a.summary, "description": a.description},
        }
        for a in SELF_ALERTS
    ]
    rules += [
        {
            "alert": a.name,
            "expr": a.expr,
            **({"for": format_duration(max(1.0, a.for_s / time_scale))} if a.for_s else {}),
            "labels": {"severity": a.severity, "component": "vitalgate"},
            "annotations": {"summary": a.summary, "description": a.description},
        }
        for a in STATE_ALERTS
    ]
    rules.append(
        {
            "alert": WATCHDOG,
            "expr": "vector(1)",
            "labels": {"severity": "none", "component": "vitalgate"},
            "annotations": {
                "summary": "Always firing: the alerting pipeline works",
                "description": "Routed to alerting.watchdog_receiver (a dead man's switch): when it"
                " stops arriving, Prometheus, the rules or Alertmanager are down.",
            },
        }
    )
    return {"name": GROUP, "rules": rules}


SELF_TEST_MINUTES = 30
"""How long the synthetic series of the self-alert tests run; each alert is judged 5 minutes
before their end."""

Series = dict[str, str]
Check = dict[str, Any]


def _counter_alert_tests() -> tuple[list[Series], list[Check]]:
    """Per counter alert: ``failing`` (its counter grows), ``born`` (its label set appears with
    a failure) and ``healthy`` (present, never growing); only the first two fire."""
    minutes = SELF_TEST_MINUTES
    inputs = []
    expected = []
    for a in SELF_ALERTS:
        extra = dict(m.split("=", 1) for m in a.matchers.split(",") if m)
        extra = {k: v.strip('"') for k, v in extra.items()}
        fixed = {k: "x" for k in a.by if k != "instance"} | extra
        for instance, values in (
            ("failing", f"0+0x10 1+1x{minutes - 10}"),
            ("born", f"_x19 {a.at_least}x{minutes - 19}"),
            ("healthy", f"0+0x{minutes}"),
        ):
            labels = {"instance": instance, **fixed}
            inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
            inputs.append({"series": f"{a.metric}_total{{{inner}}}", "values": values})
            if instance != "healthy":
                expected.append((a, {k: v for k, v in labels.items() if k in a.by}))
    checks = [
        {
            "alertname": a.name,
            "eval_time": f"{minutes - 5}m",
            "exp_alerts": [
                {
                    "exp_labels": {**labels, "severity": a.severity, "component": "vitalgate"},
                    "exp_annotations": {"summary": a.summary, "description": a.description},
                }
                for b, labels in expected
                if b.name == a.name
            ],
        }
        for a in SELF_ALERTS
    ]
    return inputs, checks


def _state_alert_tests() -> tuple[list[Series], list[Check]]:
    """Per state alert: ``failing`` fires, ``healthy`` does not."""
    inputs: list[Series] = []
    checks: list[Check] = []
    for st in STATE_ALERTS:
        found: dict[str, str] = {}
        for metric, failing, healthy in st.series:
            name = metric.partition("{")[0]
            fixed = _state_labels(metric)
            found |= fixed
            for instance, values in (("failing", failing), ("healthy", healthy)):
                inner = ", ".join(f'{k}="{v}"' for k, v in {"instance": instance, **fixed}.items())
                inputs.append({"series": f"{name}{{{inner}}}", "values": values})
        checks.append(
            {
                "alertname": st.name,
                "eval_time": f"{SELF_TEST_MINUTES - 5}m",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "instance": "failing",
                            **found,
                            "severity": st.severity,
                            "component": "vitalgate",
                        },
                        "exp_annotations": {"summary": st.summary, "description": st.description},
                    }
                ],
            }
        )
    return inputs, checks


def _watchdog_check() -> Check:
    """The watchdog fires from the first evaluation on, always."""
    return {
        "alertname": WATCHDOG,
        "eval_time": "1m",
        "exp_alerts": [
            {
                "exp_labels": {"severity": "none", "component": "vitalgate"},
                "exp_annotations": self_rules()["rules"][-1]["annotations"],
            }
        ],
    }


def build_self_tests(rules_file: str) -> dict[str, Any]:
    """promtool tests of every self-alert: the counter alerts, the state alerts, the watchdog."""
    counter_inputs, counter_checks = _counter_alert_tests()
    state_inputs, state_checks = _state_alert_tests()
    return {
        "rule_files": [rules_file],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "vitalgate-self: each failure counter that grows alerts, a healthy one does not",
                "interval": "1m",
                "input_series": counter_inputs + state_inputs,
                "alert_rule_test": [*counter_checks, *state_checks, _watchdog_check()],
            }
        ],
    }


def render_tests(doc: dict[str, Any], source: str) -> str:
    return (
        f"# Generated by `vitalgate alerts generate` from {source}: promtool unit tests of the\n"
        "# gateway's self-alerts. Do not edit.\n" + dump(doc)
    )
