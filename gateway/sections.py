"""The sections of ``gateway.yaml``: one pydantic model per section, data only.

Each model says what a section may hold and checks a field on its own (a URL, a time zone, a
range); checks across sections run on the whole document (``gateway/config.py``), and what a
part of the gateway runs with is made from these models in one place, ``gateway/settings.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from core.configfile import DurationS, StrictModel
from slo.spec import PAPER_SIZES

FACILITY_ID_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def _within(low: float, high: float, zero: bool = False) -> Callable[[float], float]:
    """A duration between ``low`` and ``high`` seconds (or 0 for "no limit" when ``zero``)."""

    def check(v: float) -> float:
        if zero and v == 0:
            return v
        if not low <= v <= high:
            off = " (or 0: no limit)" if zero else ""
            raise ValueError(f"must be between {low:g} s and {high:g} s{off} (got {v:g} s)")
        return v

    return check


def _url_port(parts: SplitResult) -> None:
    """``parts.port`` raises for a port that is not a number from 0 to 65535: said here, so
    what ``check`` accepts, ``serve`` starts with."""
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port (got {parts.netloc!r}; a port is 1 to 65535)") from None
    if port == 0:
        raise ValueError("has port 0 (a port is 1 to 65535)")


class TimeoutConfig(StrictModel):
    # A zero timeout would fail every request (504); an enormous one overflows the loop's timers.
    connect: Annotated[DurationS, AfterValidator(_within(0.001, 600))] = 2.0
    read: Annotated[DurationS, AfterValidator(_within(0.001, 86400))] | None = None
    total: Annotated[DurationS, AfterValidator(_within(0.001, 86400))] = 30.0
    pool: Annotated[DurationS, AfterValidator(_within(0.001, 3600))] = 10.0
    """The longest a request waits for a free connection (all max_connections busy): then
    503 upstream_pool_exhausted."""


class UpstreamConfig(StrictModel):
    url: str
    timeout: TimeoutConfig = Field(default_factory=TimeoutConfig)
    ca_file: str | None = None
    max_connections: int = Field(default=100, ge=1, le=10000)
    host: Literal["client", "upstream"] = "client"
    """The ``Host`` sent upstream: the client's (as Envoy and Traefik do), or the upstream URL's."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL (got {v!r})")
        _url_port(parts)
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return v.rstrip("/")


class RouteConfig(StrictModel):
    prefix: str
    upstream: str
    kind: Literal["fhir", "generic"] = "generic"
    templates: list[str] = Field(default_factory=list)
    operations: list[str] = Field(default_factory=list)
    """Extra FHIR operation names (without ``$``) accepted as route labels."""
    query_parameters: list[str] = Field(default_factory=list)
    """Extra query parameter names (a server's own search parameters) recorded by name."""
    rewrite_max_bytes: int = Field(default=4 * 1024 * 1024, ge=0, le=256 * 1024 * 1024)
    """``kind: fhir``: FHIR JSON responses up to this size are inspected (Bundle links
    rewritten, batch entries counted); larger ones stream through untouched."""
    audit: bool | None = None
    """Record each request in the audit trail (``audit:``); default: on for ``kind: fhir``."""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/") or not v.endswith("/"):
            raise ValueError(f"must start and end with '/' (got {v!r})")
        return v

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        for t in v:
            if not t.startswith("/"):
                raise ValueError(f"templates must start with '/' (got {t!r})")
        return v


class FacilitySource(StrictModel):
    header: str | None = None
    path_segment: int | None = Field(default=None, ge=0, le=32)
    jwt_claim: str | None = None

    @model_validator(mode="after")
    def _one(self) -> FacilitySource:
        if sum(x is not None for x in (self.header, self.path_segment, self.jwt_claim)) != 1:
            raise ValueError("exactly one of 'header', 'path_segment' or 'jwt_claim' is required")
        return self


class MaintenanceConfig(StrictModel):
    start: datetime
    end: datetime
    reason: str = ""

    @model_validator(mode="after")
    def _order(self) -> MaintenanceConfig:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise ValueError("start and end must both have a UTC offset or both be local times")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class FacilityConfig(StrictModel):
    name: str
    timezone: str = "UTC"
    sla: float | None = None
    maintenance: list[MaintenanceConfig] = Field(default_factory=list)
    """Planned windows, excluded from budgets; times without an offset are the facility's local time."""
    paper: str | None = None
    """Paper size of its printed uptime reports: a4 or letter (unset: a4)."""

    @field_validator("paper")
    @classmethod
    def _paper(cls, v: str | None) -> str | None:
        if v is not None and v not in PAPER_SIZES:
            raise ValueError(f"must be one of {', '.join(PAPER_SIZES)} (got {v!r})")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r} (e.g. America/Chicago)") from None
        return v

    @field_validator("sla")
    @classmethod
    def _sla(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 100:
            raise ValueError(f"must be a percentage between 0 and 100 (got {v})")
        return v


class FacilitiesConfig(StrictModel):
    from_: list[FacilitySource] = Field(default_factory=list, alias="from")
    known: dict[str, FacilityConfig] = Field(default_factory=dict)

    @field_validator("known")
    @classmethod
    def _ids(cls, v: dict[str, FacilityConfig]) -> dict[str, FacilityConfig]:
        for key in v:
            if not re.fullmatch(FACILITY_ID_RE, key):
                raise ValueError(f"facility id {key!r} must be lowercase letters, digits, '-' or '_'")
        return v


class AccessLogConfig(StrictModel):
    path: str = "-"
    queue_size: int = Field(default=65536, ge=16)


class TracesConfig(StrictModel):
    otlp_endpoint: str | None = None
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    service_name: str = "vitalgate"
    queue_size: int = Field(default=8192, ge=16)
    export_timeout: Annotated[DurationS, AfterValidator(_within(0.01, 300))] = 5.0

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"must be an http:// or https:// base URL (got {v!r})")
            _url_port(parts)
            return v.rstrip("/")
        return v


class StoreConfig(StrictModel):
    enabled: bool = True
    path: str = "var/vitalgate.db"
    flush_interval: DurationS = 10.0
    minute_retention: Annotated[DurationS, AfterValidator(_within(86400, 3660 * 86400))] = 35 * 86400.0
    hour_retention: Annotated[DurationS, AfterValidator(_within(86400, 3660 * 86400))] = 400 * 86400.0

    @field_validator("flush_interval")
    @classmethod
    def _flush(cls, v: float) -> float:
        if not 0.1 <= v <= 60:
            raise ValueError("must be between 100ms and 60s")
        return v

    @field_validator("minute_retention", "hour_retention")
    @classmethod
    def _days(cls, v: float) -> float:
        if v < 86400 * 4:
            raise ValueError("must be at least 4d")
        return v


class MetricsConfig(StrictModel):
    max_label_sets: int = Field(default=20000, ge=10)
    """Cardinality limit of the request histogram; new label sets past it fold into 'other'."""


class TelemetryConfig(StrictModel):
    access_log: AccessLogConfig = Field(default_factory=AccessLogConfig)
    traces: TracesConfig = Field(default_factory=TracesConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


class TlsConfig(StrictModel):
    cert_file: str
    key_file: str


class LimitsConfig(StrictModel):
    max_header_size: int = Field(default=16384, ge=1024, le=1048576)
    shutdown_timeout: Annotated[DurationS, AfterValidator(_within(0.1, 3600))] = 30.0
    header_timeout: Annotated[DurationS, AfterValidator(_within(0.1, 3600))] = 30.0
    """A request head must arrive whole within this long of its first byte (nginx:
    client_header_timeout); past it the client gets 408 header_timeout."""
    client_body_timeout: Annotated[DurationS, AfterValidator(_within(0.1, 3600, zero=True))] = 60.0
    """The longest a request body may pause between two reads (nginx: client_body_timeout);
    past it 408 client_timeout, charged to the client."""
    max_client_connections: int | None = Field(default=None, ge=1, le=1_000_000)
    """Client connections held at once; a connection past it gets 503 and is closed. Default:
    the open-file limit less what the upstream pools, the admin listener and the store need."""
    client_write_timeout: Annotated[DurationS, AfterValidator(_within(0.1, 3600, zero=True))] = 60.0
    """The longest a response may wait for a client to read (nginx: send_timeout); past it the
    client is cut (408 client_timeout) and the upstream connection freed."""
    max_upstream_header_size: int = Field(default=65536, ge=1024, le=16 * 1048576)
    """The longest response head an upstream may send; a longer one is 502 upstream_protocol_error."""
    max_temp_file_size: int = Field(default=1 << 30, ge=0, le=1 << 40)
    """Response buffering (nginx: proxy_max_temp_file_size): what a client has not taken yet is
    held (256 KiB in memory, then an encrypted temporary file of at most this many bytes) so the
    upstream connection is freed when the upstream is done. 0: no spooling, a slow client holds
    its upstream connection as it reads."""
    temp_path: str = "var/spool"
    """Where the temporary files go (created 0700 if missing; cleaned at start)."""


class ProbeRequestConfig(StrictModel):
    method: Literal["GET", "HEAD", "OPTIONS"] = "GET"
    """Probes only read: a synthetic request must never write to a clinical system."""
    path: str | None = None
    """Default: ``{prefix}metadata`` of the upstream's ``kind: fhir`` route (the CapabilityStatement)."""
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with /")
        return v


class ProbeConfig(StrictModel):
    """A synthetic request sent every ``interval`` through the gateway's own listener, per
    listed facility (or once, as facility ``unknown``): evidence when no client is calling."""

    upstream: str
    interval: Annotated[DurationS, AfterValidator(_within(1.0, 86400))] = 30.0
    timeout: Annotated[DurationS, AfterValidator(_within(0.1, 600))] = 10.0
    facilities: list[str] = Field(default_factory=list)
    request: ProbeRequestConfig = Field(default_factory=ProbeRequestConfig)
    expect: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=lambda: [200])
