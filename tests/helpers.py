"""Transition only: the test helpers moved to ``tests.support`` (one module per job; see its
docstring). This module re-exports them under their old names so that test modules written
before the move keep importing; new code imports from ``tests.support.*``, and this module goes
once no test imports it."""

from tests.support.cli import slo_status, vitalgate
from tests.support.gateway import FACILITIES, GatewayProcess, flushed, gateway_config, running_gateway
from tests.support.outcomes import make_outcome
from tests.support.peers import SEARCHSET, BackgroundPeers, Upstream, Webhook, start_sink
from tests.support.readers import (
    assert_period_gauges,
    counter_value,
    fetch,
    fetch_text,
    histogram_counts,
    live_total,
    read_log,
)
from tests.support.services import (
    AlertmanagerProcess,
    PrometheusProcess,
    ServiceProcess,
    VictoriaMetricsProcess,
    VmagentProcess,
    VmalertProcess,
    firing,
    require_binary,
)
from tests.support.waiting import wait_ready
from tests.support.waiting import wait_until as eventually

__all__ = [
    "FACILITIES",
    "SEARCHSET",
    "AlertmanagerProcess",
    "BackgroundPeers",
    "GatewayProcess",
    "PrometheusProcess",
    "ServiceProcess",
    "Upstream",
    "VictoriaMetricsProcess",
    "VmagentProcess",
    "VmalertProcess",
    "Webhook",
    "assert_period_gauges",
    "counter_value",
    "eventually",
    "fetch",
    "fetch_text",
    "firing",
    "flushed",
    "gateway_config",
    "histogram_counts",
    "live_total",
    "make_outcome",
    "read_log",
    "require_binary",
    "running_gateway",
    "slo_status",
    "start_sink",
    "vitalgate",
    "wait_ready",
]
