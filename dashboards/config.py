"""The ``dashboards:`` section of gateway.yaml: datasources and folder permissions."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from core.configfile import Problem, Source, StrictModel, mapping_at


class DashboardsConfig(StrictModel):
    datasource_uid: str = "prometheus"
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
