"""The ``dashboards:`` section of gateway.yaml: datasources and folder permissions."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from core.configfile import Problem, Source, StrictModel, mapping_at


def _http_url(value: str) -> str:
    if not re.match(r"https?://[^\s/]+", value):
        example = "http://prometheus:9090"
        raise ValueError(f"must be an http:// or https:// URL, such as {example} (got {value!r})")
    return value


class DashboardsConfig(StrictModel):
    datasource_uid: str = "prometheus"
    datasource_name: str = Field("Prometheus", min_length=1)
    """The provisioned datasource's name: Grafana refuses two datasources of one name, so a
    Grafana that already has a "Prometheus" needs another one here."""
    datasource_url: Annotated[str, AfterValidator(_http_url)] = "http://127.0.0.1:9090"
    """Where Grafana's server reaches Prometheus (or any PromQL API: VictoriaMetrics, Thanos,
    Mimir), as seen from Grafana, not from the gateway."""
    trace_datasource_uid: str = "tempo"
    folder_teams: dict[str, str] = Field(default_factory=dict)
    """Facility id -> Grafana team that alone may view that facility's folder."""


def dashboards_problems(data: Any, source: Source, known: dict[str, Any]) -> list[Problem]:
    """Folder teams name configured facilities (on the raw document)."""
    return [
        source.problem(("dashboards", "folder_teams", fid), f"unknown facility {fid!r}", at_key=True)
        for fid in mapping_at(mapping_at(data, "dashboards"), "folder_teams")
        if fid not in known
    ]
