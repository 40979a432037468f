"""What the gateway learns of its upstreams outside requests: the certificate each https
upstream last presented (an expiry is alertable before it fails requests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from core import conventions as names


class UpstreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._cert_expiry = Gauge(
            names.UPSTREAM_CERT_EXPIRY,
            "notAfter of the TLS certificate each https upstream last presented.",
            ("upstream",),
            registry=registry,
            multiprocess_mode="livemin",
        )

    def certificate_expiry(self, upstream: str, not_after_s: float) -> None:
        self._cert_expiry.labels(upstream).set(not_after_s)
