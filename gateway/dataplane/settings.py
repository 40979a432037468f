"""What the data plane is told: plain frozen values, built once by the composition root.

The data plane reads these, never the config schema (``gateway/config.py``, pydantic): the
compiled request path has no validation library in it, and a newcomer reads here exactly
what the request path depends on. No defaults: those live once, in the config schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float | None
    total: float
    pool: float


@dataclass(frozen=True)
class UpstreamSettings:
    url: str
    timeout: Timeouts
    ca_file: str | None
    max_connections: int
    host: Literal["client", "upstream"]


@dataclass(frozen=True)
class RouteSettings:
    prefix: str
    upstream: str
    kind: Literal["fhir", "generic"]
    templates: tuple[str, ...]
    operations: tuple[str, ...]
    query_parameters: tuple[str, ...]
    rewrite_max_bytes: int
    audit: bool
    """Each request on the route is recorded in the audit trail (when one is configured)."""


@dataclass(frozen=True)
class FacilitySource:
    header: str | None
    path_segment: int | None
    jwt_claim: str | None


@dataclass(frozen=True)
class FacilitySettings:
    sources: tuple[FacilitySource, ...]
    known: frozenset[str]


@dataclass(frozen=True)
class TraceSettings:
    otlp_endpoint: str | None
    sample_ratio: float
    service_name: str
    queue_size: int
    export_timeout: float


@dataclass(frozen=True)
class SpoolSettings:
    """Response buffering (``gateway/dataplane/spool.py``); none when ``max_file_bytes`` is 0."""

    directory: str
    max_file_bytes: int
    memory_bytes: int
    """What one response may hold in memory, past what the client's socket took, before its file."""


@dataclass(frozen=True)
class RecorderSettings:
    """What the store's per-request counter needs: the latency bucket bounds (the request
    histogram's, so both count a request in the same bucket) and how many of the slowest
    requests it keeps per series and minute (the store's exemplars)."""

    bounds_s: tuple[float, ...]
    exemplars: int
