"""The gateway's own request histogram and active gauge expose exactly what prometheus_client's
would: the same samples, values, buckets, exemplars and the cardinality fold."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from core.conventions import ACTIVE_REQUESTS as ACTIVE
from core.conventions import REQUEST_DURATION as DURATION
from core.conventions import REQUEST_LABELS as LABELS
from gateway.dataplane.metrics import LabelBudget
from gateway.metrics import MetricFamilies, declare_families
from gateway.metrics.requests import RequestMetrics
from gateway.metrics.storage import MetricStorage
from tests.support.outcomes import make_outcome


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def _one_process(thresholds_s: list[float]) -> tuple[CollectorRegistry, MetricFamilies, RequestMetrics]:
    """A single gateway process's registry: every family declared, and the request metrics of
    the storage it uses (its own memory)."""
    registry = CollectorRegistry()
    families = declare_families(registry, thresholds_s)
    return registry, families, MetricStorage().request_metrics(registry, families.buckets_s)


def _reference(local: MetricFamilies) -> tuple[CollectorRegistry, Histogram]:
    """prometheus_client's own histogram with the gateway's buckets, in a registry of its own."""
    registry = CollectorRegistry()
    help_text = "Duration of HTTP server requests through the gateway."
    return registry, Histogram(DURATION, help_text, LABELS, buckets=local.buckets_s, registry=registry)


def test_local_histogram_exposes_what_prometheus_client_would() -> None:
    rng = random.Random(7)
    registry, local, own = _one_process([0.3, 0.0125])
    reference_registry, reference = _reference(local)
    active_reference = Gauge(
        ACTIVE, "Number of active HTTP server requests.", ("facility", "service"), registry=reference_registry
    )
    # Values on bucket bounds, between them, beyond the last, and zero.
    values = [*local.buckets_s, 0.0, 11.0, 1e-9, *(rng.expovariate(20) for _ in range(3000))]
    for i, v in enumerate(values):
        facility = ("st-marys", "riverside")[i % 2]
        status = (200, 404, 503)[i % 3]
        own.histogram.request(make_outcome(facility, "fhir", "/fhir/Patient/{id}", "GET", status, v))
        reference.labels(facility, "fhir", "/fhir/Patient/{id}", "GET", str(status)).observe(v)
    for facility, n in (("st-marys", 3), ("riverside", 1)):
        gauge, ref = own.active.child(facility, "fhir"), active_reference.labels(facility, "fhir")
        for _ in range(n + 2):
            gauge.inc()
            ref.inc()
        for _ in range(2):
            gauge.dec()
            ref.dec()

    ours = _without_created(generate_latest(registry))
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
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(f"{DURATION}_created")
    ]
    assert len(created) == 6 and all(math.isfinite(float(line.split()[-1])) for line in created)


def test_exemplars_and_openmetrics_match_prometheus_client() -> None:
    registry, local, own = _one_process([])
    reference_registry, reference = _reference(local)
    # Sampled requests a second apart carry an exemplar each; an unsampled one none.
    for i, (v, trace) in enumerate(((0.004, "a" * 32), (0.2, "b" * 32), (0.3, None), (30.0, "c" * 32))):
        outcome = make_outcome(
            "lakeside",
            "fhir",
            "/fhir/Observation",
            "POST",
            201,
            v,
            started=1e9 + i,
            trace_id=trace or "d" * 32,
            sampled=trace is not None,
        )
        own.histogram.request(outcome)
        ref = reference.labels("lakeside", "fhir", "/fhir/Observation", "POST", "201")
        ref.observe(v, {"trace_id": trace} if trace else None)

    def lines(registry: CollectorRegistry) -> list[str]:
        # Exemplar timestamps differ by when each was taken: compare up to them.
        out = []
        for line in _without_created(generate_openmetrics(registry)):  # type: ignore[no-untyped-call]
            if line.startswith(DURATION):
                out.append(line.rsplit(" ", 1)[0] if " # {" in line else line)
        return out

    ours = lines(registry)
    assert ours == lines(reference_registry)
    assert sum(" # {trace_id=" in line for line in ours) == 3


def test_exemplars_are_at_most_one_a_second_per_label_set() -> None:
    registry, _families, own = _one_process([])
    # Each request in a bucket of its own, so every exemplar attached stays visible.
    times = (0.0, 0.5, 0.99, 1.0, 1.2, 2.5)
    durations = (0.001, 0.007, 0.02, 0.04, 0.06, 0.09)
    for i, (t, d) in enumerate(zip(times, durations, strict=True)):
        outcome = make_outcome(duration_s=d, started=1e9 + t, trace_id=f"{i + 1:032x}", sampled=True)
        own.histogram.request(outcome)
    unsampled = make_outcome(duration_s=3.0, started=1e9 + 9, trace_id=f"{7:032x}", sampled=False)
    own.histogram.request(unsampled)
    text = generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    attached = {
        int(line.split('trace_id="')[1][:32], 16) for line in text.splitlines() if "trace_id=" in line
    }
    # 0.5 and 0.99 come too soon after 0.0, 1.2 too soon after 1.0; unsampled never attaches.
    assert attached == {1, 4, 6}


def test_cardinality_fold_with_local_histograms() -> None:
    registry, local, own = _one_process([])
    budget = LabelBudget(3, local.requests.folded)
    for i in range(5):
        key = budget.key("riverside", "fhir", f"/fhir/T{i}", "GET", 200)
        own.histogram.request(make_outcome("riverside", "fhir", f"/fhir/T{i}", "GET", 200, key_route=key[2]))
    text = generate_latest(registry).decode()
    assert 'http_route="other"' in text
    assert (
        f'{DURATION}_count{{facility="riverside",http_request_method="GET",http_response_status_code="200",http_route="other",service="fhir"}} 2.0'
        in text
    )
    assert 'vitalgate_cardinality_overflow_total{metric="http_server_request_duration_seconds"} 2.0' in text
    assert key[2] == "other"
