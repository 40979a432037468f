"""The gateway's own metrics: one small family per concern, each declaring its metrics with
the registry it is given, as client_python's collectors do; the exposition never asks which
concern a family came from.

- ``storage``: where values live, this process's memory or prometheus_client's multiprocess
  files under ``--workers`` (the one seam, chosen once per process), and what ``/metrics``
  collects;
- ``requests``: the request histogram and active gauge, and the request path's other counts
  (cardinality folds, Bundle entries, URL leaks, uninspected responses, refused connections);
- ``telemetry``: what the telemetry outputs dropped or hold (drops, queue depths, span export
  failures, access-log write errors);
- ``facilities``: facility info and SLA gauges, and each facility's local calendar period;
- ``store``: the embedded store's errors and flush health;
- ``audit``: the audit trail's writes and its forwarding;
- ``upstreams``: upstream certificate expiry;
- ``spool``: response buffering's temporary files.

Collectors that expose state another object keeps live with that state: probes
(``gateway/probes.py``), reloads (``gateway/reload.py``), admin sessions
(``gateway/admin/session.py``), worker restarts (``gateway/workers.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from gateway.dataplane.metrics import duration_buckets_s
from gateway.metrics.audit import AuditMetrics, ForwardMetrics
from gateway.metrics.facilities import FacilityMetrics
from gateway.metrics.requests import RequestCounters
from gateway.metrics.spool import SpoolMetrics
from gateway.metrics.store import StoreMetrics
from gateway.metrics.telemetry import TelemetryMetrics
from gateway.metrics.upstreams import UpstreamMetrics


@dataclass(frozen=True)
class MetricFamilies:
    """Every family a gateway process declares at start, handed to the parts that count into
    them (a record of families, no counting of its own)."""

    buckets_s: tuple[float, ...]
    """The request histogram's buckets: OTel's and every SLO latency threshold."""
    telemetry: TelemetryMetrics
    requests: RequestCounters
    facilities: FacilityMetrics
    store: StoreMetrics
    audit: AuditMetrics
    forward: ForwardMetrics
    upstreams: UpstreamMetrics
    spool: SpoolMetrics


def declare_families(
    registry: CollectorRegistry,
    thresholds_s: list[float],
    facilities: dict[str, str] | None = None,
    slas: dict[str, float] | None = None,
) -> MetricFamilies:
    """The families of one gateway process, registered with ``registry`` (values where the
    process's ``MetricStorage`` keeps them)."""
    telemetry = TelemetryMetrics(registry)
    return MetricFamilies(
        buckets_s=duration_buckets_s(thresholds_s),
        telemetry=telemetry,
        requests=RequestCounters(registry),
        facilities=FacilityMetrics(registry, facilities or {}, slas or {}),
        store=StoreMetrics(registry),
        audit=AuditMetrics(registry, telemetry),
        forward=ForwardMetrics(registry),
        upstreams=UpstreamMetrics(registry),
        spool=SpoolMetrics(registry),
    )
