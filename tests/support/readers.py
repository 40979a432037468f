"""Reading what a gateway produced: its access log, its metrics, its HTTP answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import FACILITIES


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def histogram_counts(metrics_text: str) -> dict[tuple[str, ...], float]:
    """``_count`` of the request histogram per (facility, service, route, method, status)."""
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "http_server_request_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_count"):
                    key = tuple(
                        s.labels[k]
                        for k in (
                            "facility",
                            "service",
                            "http_route",
                            "http_request_method",
                            "http_response_status_code",
                        )
                    )
                    out[key] = s.value
    return out


def counter_value(metrics_text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def live_total(admin: str, slo: str, facility: str) -> int:
    """The requests a running gateway's store holds of ``slo`` for ``facility`` (``*``: all)."""
    with urllib.request.urlopen(admin + "/api/v1/slo", timeout=5) as r:
        rows = json.loads(r.read())["slos"]
    return int(next((r["total"] for r in rows if r["slo"] == slo and r["facility"] == facility), 0))


def fetch(url: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> int:
    """GET through real HTTP; the status, whether 2xx or not (the body is read and dropped)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)


def assert_period_gauges(metrics_text: str) -> None:
    """Each configured facility's current local month and quarter, once, valued with the month's
    start (what the rules' calendar windows read)."""
    samples = [
        s
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == "vitalgate_facility_period_start_seconds"
    ]
    assert {s.labels["facility"] for s in samples} == set(FACILITIES)
    for s in samples:
        local = datetime.now(ZoneInfo(str(FACILITIES[s.labels["facility"]]["timezone"])))
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        assert s.labels["month"] == f"{local.year}-{local.month:02d}"
        assert s.labels["quarter"] == f"{local.year}-Q{(local.month - 1) // 3 + 1}"
        assert s.value == start.timestamp()


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
    return body.decode()
