"""What ``vitalgate demo`` reads from the gateway's ``/metrics``: per facility, requests,
server errors and the latency histogram, for its live table and its closing summary."""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from core import conventions as names


@dataclass
class Snapshot:
    total: dict[str, float]
    errors: dict[str, float]
    buckets: dict[str, dict[float, float]]


def read_snapshot(metrics_text: str) -> Snapshot:
    total: dict[str, float] = defaultdict(float)
    errors: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(metrics_text):
        if family.name != names.REQUEST_DURATION:
            continue
        for s in family.samples:
            fac = s.labels.get(names.FACILITY, "")
            if s.name.endswith("_count"):
                total[fac] += s.value
                if s.labels.get(names.STATUS, "").startswith("5"):
                    errors[fac] += s.value
            elif s.name.endswith("_bucket"):
                buckets[fac][float(s.labels["le"])] += s.value
    return Snapshot(total, errors, buckets)


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative bucket counts."""
    les = sorted(cumulative)
    if not les or cumulative[les[-1]] <= 0:
        return None
    rank = q * cumulative[les[-1]]
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = cumulative[le]
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0.0)
        prev_le, prev_c = le, c
    return les[-1]


async def scrape(session: aiohttp.ClientSession, admin: str) -> str | None:
    """The gateway's /metrics text; None (said on stderr, as it happens) when it is gone: the
    traffic fails from then on, and the table keeps the last figures read."""
    try:
        async with session.get(f"{admin}/metrics") as r:
            return await r.text()
    except aiohttp.ClientError as exc:
        print(f"vitalgate demo: {admin}/metrics: {exc}", file=sys.stderr, flush=True)
        return None
