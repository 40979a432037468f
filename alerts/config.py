"""The ``alerting:`` section of gateway.yaml: where alerts go and what they link to."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from core.configfile import DurationS, Problem, Source, StrictModel, items_of, mapping_at


class ReceiverConfig(StrictModel):
    webhook_url: str | None = None
    pagerduty_routing_key: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ReceiverConfig:
        if self.webhook_url is None and self.pagerduty_routing_key is None:
            raise ValueError("needs webhook_url or pagerduty_routing_key")
        return self


class AlertingConfig(StrictModel):
    runbook_url: str | None = None
    """Runbook for every alert; ``{slo}`` and ``{facility}`` are filled in. An SLO's own wins."""
    dashboard_url: str | None = None
    """Grafana base URL: alerts link to the facility's dashboard."""
    receivers: dict[str, ReceiverConfig] = Field(default_factory=dict)
    default_receiver: str | None = None
    facility_receivers: dict[str, list[str]] = Field(default_factory=dict)
    watchdog_receiver: str | None = None
    """Gets the always-firing Watchdog every minute (a dead man's switch service); without
    one the Watchdog goes nowhere, never to the people on call."""
    group_wait: DurationS = 30.0
    group_interval: DurationS = 300.0
    repeat_interval: DurationS = 4 * 3600.0


def alerting_problems(data: Any, source: Source, known: dict[str, Any]) -> list[Problem]:
    """Alert routing names configured receivers and facilities (on the raw document)."""
    problems = []
    alerting = mapping_at(data, "alerting")
    receivers = mapping_at(alerting, "receivers")
    for key in ("default_receiver", "watchdog_receiver"):
        value = alerting.get(key)
        if isinstance(value, str) and value not in receivers:
            problems.append(source.problem(("alerting", key), f"unknown receiver {value!r}"))
    for fid, names in mapping_at(alerting, "facility_receivers").items():
        if fid not in known:
            problems.append(
                source.problem(
                    ("alerting", "facility_receivers", fid), f"unknown facility {fid!r}", at_key=True
                )
            )
        for j, name in items_of(names):
            if name not in receivers:
                problems.append(
                    source.problem(("alerting", "facility_receivers", fid, j), f"unknown receiver {name!r}")
                )
    return problems
