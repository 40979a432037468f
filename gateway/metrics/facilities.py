"""The configured facilities as series: their display names and contractual SLAs (for
dashboards and alerts to show beside the SLO), and each facility's current local calendar
period (for the rules' calendar windows)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from core import conventions as names


class FacilityMetrics:
    """``vitalgate_facility_info`` and ``vitalgate_facility_sla_ratio``, kept to the config in
    force."""

    def __init__(
        self, registry: CollectorRegistry, facilities: dict[str, str], slas: dict[str, float]
    ) -> None:
        self._info = Gauge(
            names.FACILITY_INFO,
            "Configured facilities (1 each): the display name for dashboards and alerts.",
            (names.FACILITY, names.FACILITY_NAME),
            registry=registry,
            multiprocess_mode="max",  # with --workers: 1, not one per process
        )
        self._sla = Gauge(
            names.FACILITY_SLA,
            "Contractual availability per facility (0..1), for dashboards beside the SLO objective.",
            (names.FACILITY,),
            registry=registry,
            multiprocess_mode="max",
        )
        self._names: dict[str, str] = {}
        self._slas: dict[str, float] = {}
        self.set_facilities(facilities, slas)

    def set_facilities(self, facilities: dict[str, str], slas: dict[str, float]) -> None:
        """The configured facilities' info and SLA gauges (again after a reload: a facility no
        longer configured loses its series, a renamed one changes its name label)."""
        for fid, name in self._names.items():
            if facilities.get(fid) != name:
                self._info.remove(fid, name)
        for fid, name in facilities.items():
            self._info.labels(fid, name).set(1)
        for fid in self._slas.keys() - slas.keys():
            self._sla.remove(fid)
        for fid, value in slas.items():
            self._sla.labels(fid).set(value)
        self._names, self._slas = dict(facilities), dict(slas)


class FacilityPeriods:
    """``vitalgate_facility_period_start_seconds{facility, month, quarter}``: each facility's
    current local month and quarter, computed at the scrape from its time zone (zoneinfo: DST
    included), valued with the month's start. The rules' calendar windows take the period
    from it, so that they count the facility's own month, as ``slo status`` does."""

    def __init__(self, zones: dict[str, str]) -> None:
        self._zones = {fid: ZoneInfo(tz) for fid, tz in zones.items()}

    def set_zones(self, zones: dict[str, str]) -> None:
        self._zones = {fid: ZoneInfo(tz) for fid, tz in zones.items()}

    def describe(self) -> list[Metric]:
        """Nothing: a registry then takes the collector without collecting it once to learn its
        names (it is registered afresh for each scrape)."""
        return []

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            names.FACILITY_PERIOD,
            "Start of each facility's current local calendar month (Unix seconds), labelled with"
            " the month and quarter.",
            labels=(names.FACILITY, "month", "quarter"),
        )
        now = time.time()
        for fid, tz in self._zones.items():
            local = datetime.fromtimestamp(now, tz)
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            quarter = f"{local.year}-Q{(local.month - 1) // 3 + 1}"
            g.add_metric([fid, f"{local.year}-{local.month:02d}", quarter], start.timestamp())
        yield g
