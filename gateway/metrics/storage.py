"""Where this process keeps its metric values: the one seam between one gateway process and
``--workers``, chosen once per process.

prometheus_client chooses its value store once, when it is first imported: this process's
memory, or, when ``PROMETHEUS_MULTIPROC_DIR`` names a folder, files in it that a collector
sums over processes (client_python's multiprocess mode). The gateway keeps to that contract
rather than switching the library's store afterwards: a ``--workers`` supervisor puts a fresh
folder in its environment before anything imports prometheus_client, and its workers inherit
it (``gateway.roles.prepare_metrics_dir``). ``MetricStorage`` carries the same choice to the
two things the gateway itself builds differently: the request histogram and active gauge
(the data plane's own, or prometheus_client's in the files) and what ``/metrics`` collects
(this process's registry, or every process's files). No metric family asks which.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway.dataplane.metrics import LocalGauges, LocalHistograms
from gateway.metrics.requests import LocalCollector, RequestMetrics, SharedGauges, SharedHistograms


@dataclass(frozen=True)
class MetricStorage:
    directory: str | None = None
    """prometheus_client's multiprocess folder (``--workers``: the supervisor and each worker),
    or None: this process's memory."""

    def request_metrics(self, registry: CollectorRegistry, buckets_s: tuple[float, ...]) -> RequestMetrics:
        """The request histogram and active gauge of a proxy process, registered with
        ``registry``: the data plane's own (a bisect and two additions a request, read at the
        scrape), or prometheus_client's, whose values must be in the files for the supervisor
        to sum."""
        if self.directory is not None:
            return RequestMetrics(SharedHistograms(registry, buckets_s), SharedGauges(registry))
        histograms, gauges = LocalHistograms(buckets_s), LocalGauges()
        registry.register(cast(Collector, LocalCollector(histograms, gauges)))
        return RequestMetrics(histograms, gauges)

    def exposed(self, registry: CollectorRegistry) -> Collector:
        """What ``/metrics`` collects of the declared families: ``registry`` itself, or, in
        the folder, every process's files with counters and histograms summed (a dead
        worker's included)."""
        if self.directory is None:
            return registry
        return cast(Collector, MultiProcessCollector(None, self.directory))  # type: ignore[no-untyped-call]


class Joined:
    """Several collectors as one, for one registry per scrape."""

    def __init__(self, *parts: Collector) -> None:
        self._parts = parts

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.collect()
