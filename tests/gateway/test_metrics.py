"""The gateway's own request histogram and active gauge expose exactly what prometheus_client's
would: the same samples, values, buckets, exemplars and the cardinality fold."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from gateway.metrics import ACTIVE, DURATION, LABELS, GatewayMetrics


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def _reference(local: GatewayMetrics) -> tuple[CollectorRegistry, Histogram]:
    """prometheus_client's own histogram with the gateway's buckets, in a registry of its own."""
    registry = CollectorRegistry()
    help_text = "Duration of HTTP server requests through the gateway."
    return registry, Histogram(DURATION, help_text, LABELS, buckets=local.buckets_s, registry=registry)


def test_local_histogram_exposes_what_prometheus_client_would() -> None:
    rng = random.Random(7)
    local = GatewayMetrics(CollectorRegistry(), [0.3, 0.0125], max_label_sets=1000)
    reference_registry, reference = _reference(local)
    active_reference = Gauge(
        ACTIVE, "Number of active HTTP server requests.", ("facility", "service"), registry=reference_registry
    )
    # Values on bucket bounds, between them, beyond the last, and zero.
    values = [*local.buckets_s, 0.0, 11.0, 1e-9, *(rng.expovariate(20) for _ in range(3000))]
    for i, v in enumerate(values):
        facility = ("st-marys", "riverside")[i % 2]
        status = (200, 404, 503)[i % 3]
        child, _key = local.request_child(facility, "fhir", "/fhir/Patient/{id}", "GET", status)
        child.observe(v)
        reference.labels(facility, "fhir", "/fhir/Patient/{id}", "GET", str(status)).observe(v)
    for facility, n in (("st-marys", 3), ("riverside", 1)):
        gauge, ref = local.active_child(facility, "fhir"), active_reference.labels(facility, "fhir")
        for _ in range(n + 2):
            gauge.inc()
            ref.inc()
        for _ in range(2):
            gauge.dec()
            ref.dec()

    ours = _without_created(generate_latest(local.registry))
    theirs = _without_created(generate_latest(reference_registry))
    # The reference registry holds only these two metrics; ours holds the others too.
    mine = (
        DURATION,
        ACTIVE,
        *(f"# {kind} {name}" for kind in ("HELP", "TYPE") for name in (DURATION, ACTIVE)),
    )
    assert [line for line in ours if line.startswith(mine)] == theirs
    assert any(f'le="{0.0125}"' in line for line in ours)
    created = [
        line
        for line in generate_latest(local.registry).decode().splitlines()
        if line.startswith(f"{DURATION}_created")
    ]
    assert len(created) == 6 and all(math.isfinite(float(line.split()[-1])) for line in created)


def test_exemplars_and_openmetrics_match_prometheus_client() -> None:
    local = GatewayMetrics(CollectorRegistry(), [], max_label_sets=1000)
    reference_registry, reference = _reference(local)
    for v, trace in ((0.004, "a" * 32), (0.2, "b" * 32), (0.3, None), (30.0, "c" * 32)):
        child, _key = local.request_child("lakeside", "fhir", "/fhir/Observation", "POST", 201)
        ref = reference.labels("lakeside", "fhir", "/fhir/Observation", "POST", "201")
        exemplar = {"trace_id": trace} if trace else None
        child.observe(v, exemplar)
        ref.observe(v, exemplar)

    def lines(registry: CollectorRegistry) -> list[str]:
        # Exemplar timestamps differ by when each was taken: compare up to them.
        out = []
        for line in _without_created(generate_openmetrics(registry)):  # type: ignore[no-untyped-call]
            if line.startswith(DURATION):
                out.append(line.rsplit(" ", 1)[0] if " # {" in line else line)
        return out

    ours = lines(local.registry)
    assert ours == lines(reference_registry)
    assert sum(" # {trace_id=" in line for line in ours) == 3


def test_cardinality_fold_with_local_histograms() -> None:
    local = GatewayMetrics(CollectorRegistry(), [], max_label_sets=3)
    for i in range(5):
        child, key = local.request_child("riverside", "fhir", f"/fhir/T{i}", "GET", 200)
        child.observe(0.01)
    text = generate_latest(local.registry).decode()
    assert 'http_route="other"' in text
    assert (
        f'{DURATION}_count{{facility="riverside",http_request_method="GET",http_response_status_code="200",http_route="other",service="fhir"}} 2.0'
        in text
    )
    assert 'vitalgate_cardinality_overflow_total{metric="http_server_request_duration_seconds"} 2.0' in text
    assert key[2] == "other"
