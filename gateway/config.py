"""``gateway.yaml``: the validated gateway configuration.

Paths inside the file are relative to the file. ``load_config`` reports every
problem of the gateway file and of the ``slos.yaml`` it names at once, each as
``file:line:column: field: message``.
"""

from __future__ import annotations

import functools
import re
import ssl
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from core.configfile import (
    ConfigError,
    DurationS,
    ListenAddr,
    Loc,
    Networks,
    Problem,
    Source,
    StrictModel,
    items_of,
    mapping_at,
    read_yaml,
    validate,
)
from gateway.admin.config import AdminConfig
from gateway.audit import config as audit_config
from gateway.dataplane import settings as settings_
from slo.spec import NAME_RE, PAPER_SIZES, Facility, Maintenance, Slo, load_slos

FACILITY_ID_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# Label values the gateway itself uses: a configured facility must not take one.
RESERVED_FACILITY_IDS = frozenset({"unknown", "other", "*"})


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

    def settings(self) -> settings_.Timeouts:
        return settings_.Timeouts(self.connect, self.read, self.total, self.pool)


class UpstreamConfig(StrictModel):
    url: str
    timeout: TimeoutConfig = Field(default_factory=TimeoutConfig)
    ca_file: str | None = None
    max_connections: int = Field(default=100, ge=1, le=10000)
    host: Literal["client", "upstream"] = "client"
    """The ``Host`` sent upstream: the client's (as Envoy and Traefik do), or the upstream URL's."""

    def settings(self) -> settings_.UpstreamSettings:
        return settings_.UpstreamSettings(
            self.url, self.timeout.settings(), self.ca_file, self.max_connections, self.host
        )

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

    def settings(self) -> settings_.RouteSettings:
        return settings_.RouteSettings(
            self.prefix,
            self.upstream,
            self.kind,
            tuple(self.templates),
            tuple(self.operations),
            tuple(self.query_parameters),
            self.rewrite_max_bytes,
            self.kind == "fhir" if self.audit is None else self.audit,
        )

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

    def settings(self) -> settings_.FacilitySettings:
        return settings_.FacilitySettings(
            tuple(settings_.FacilitySource(f.header, f.path_segment, f.jwt_claim) for f in self.from_),
            frozenset(self.known),
        )

    def display_names(self) -> dict[str, str]:
        """Facility id -> its name, for the info gauge."""
        return {fid: f.name for fid, f in self.known.items()}

    def sla_ratios(self) -> dict[str, float]:
        """Facility id -> its contractual availability (0..1), for those that have one."""
        return {fid: f.sla / 100.0 for fid, f in self.known.items() if f.sla is not None}

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

    def settings(self) -> settings_.TraceSettings:
        return settings_.TraceSettings(
            self.otlp_endpoint, self.sample_ratio, self.service_name, self.queue_size, self.export_timeout
        )

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
    """Cardinality budget of the request histogram; new label sets past it fold into 'other'."""


class TelemetryConfig(StrictModel):
    access_log: AccessLogConfig = Field(default_factory=AccessLogConfig)
    traces: TracesConfig = Field(default_factory=TracesConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


class TlsConfig(StrictModel):
    cert_file: str
    key_file: str


SPOOL_MEMORY_BYTES = 256 * 1024
"""What one response a client is behind on may hold in memory before its temporary file (as the
upstream client's own read buffer: a slow client costs no more memory than a fast one)."""


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

    def spool(self, directory: Path) -> settings_.SpoolSettings | None:
        """Response buffering's settings (``directory``: ``temp_path`` resolved); None when off."""
        if self.max_temp_file_size == 0:
            return None
        return settings_.SpoolSettings(str(directory), self.max_temp_file_size, SPOOL_MEMORY_BYTES)


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

    def resolved_path(self, routes: Sequence[RouteConfig]) -> str:
        if self.request.path is not None:
            return self.request.path
        prefix = next(r.prefix for r in routes if r.upstream == self.upstream and r.kind == "fhir")
        return prefix.rstrip("/") + "/metadata"


class GatewayConfig(StrictModel):
    version: Literal[1]
    listen: ListenAddr = "127.0.0.1:8080"
    trusted_proxies: Networks = Field(default_factory=list)
    """Peers whose X-Forwarded-* and Forwarded headers are believed (a load balancer in front)."""
    tls: TlsConfig | None = None
    admin: AdminConfig = Field(default_factory=AdminConfig)
    upstreams: dict[str, UpstreamConfig]
    routes: list[RouteConfig]
    facilities: FacilitiesConfig = Field(default_factory=FacilitiesConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    slos: str | None = None
    audit: audit_config.AuditConfig | None = None
    """The audit trail (``gateway/audit``); none unless configured."""
    probes: list[ProbeConfig] = Field(default_factory=list)

    @field_validator("upstreams")
    @classmethod
    def _names(cls, v: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for key in v:
            if not re.fullmatch(NAME_RE, key) or key == "none":
                raise ValueError(f"upstream name {key!r} must be lowercase letters, digits or '-'")
        return v


Doc_co = TypeVar("Doc_co", bound=GatewayConfig, covariant=True)
"""The validated document: the gateway's sections, or the whole product's (a subclass with the
sections of alerting and dashboards, assembled by ``vitalgate.config``)."""


class Config(Generic[Doc_co]):
    """A loaded gateway config: the validated file, its directory, and its SLOs."""

    def __init__(self, path: Path, gateway: Doc_co, slos: list[Slo]) -> None:
        self.path = path
        self.base_dir = path.parent
        self._doc = gateway
        self.slos = slos

    @property
    def gateway(self) -> Doc_co:
        return self._doc

    def facilities(self) -> list[Facility]:
        """The known facilities as the SLO engine sees them (maintenance times made aware)."""
        out = []
        for fid, f in self.gateway.facilities.known.items():
            tz = ZoneInfo(f.timezone)
            windows = tuple(
                Maintenance(
                    m.start if m.start.tzinfo else m.start.replace(tzinfo=tz),
                    m.end if m.end.tzinfo else m.end.replace(tzinfo=tz),
                    m.reason,
                )
                for m in f.maintenance
            )
            sla = None if f.sla is None else f.sla / 100.0
            out.append(Facility(fid, f.name, f.timezone, sla, windows, paper=f.paper))
        return out

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(relative)
        return p if p.is_absolute() else self.base_dir / p


def _cross_check(data: Any, source: Source, base: Path) -> list[Problem]:
    """Checks across fields, on the raw document so they run even when other fields are wrong."""
    if not isinstance(data, dict):
        return []
    upstreams = mapping_at(data, "upstreams")
    known = mapping_at(mapping_at(data, "facilities"), "known")
    problems = [
        source.problem(("facilities", "known", fid), f"facility id {fid!r} is reserved", at_key=True)
        for fid in known
        if fid in RESERVED_FACILITY_IDS
    ]
    problems += _route_problems(data, source, upstreams)
    problems += _facility_references(data, source, known)
    problems += _probe_problems(data, source, upstreams, known)
    admin = mapping_at(data, "admin")
    if admin.get("listen", "127.0.0.1:9464") == data.get("listen", "127.0.0.1:8080"):
        problems.append(source.problem(("admin", "listen"), "must differ from the proxy's listen address"))
    problems += audit_config.file_problems(mapping_at(data, "audit"), source, base)
    return problems + _file_problems(data, source, base, upstreams)


def _unknown_upstream(source: Source, loc: Loc, up: Any, upstreams: dict[str, Any]) -> list[Problem]:
    if not isinstance(up, str) or up in upstreams:
        return []
    names = ", ".join(sorted(upstreams)) or "none"
    return [source.problem(loc, f"unknown upstream {up!r} (known: {names})")]


def _route_problems(data: dict[str, Any], source: Source, upstreams: dict[str, Any]) -> list[Problem]:
    """Routes name known upstreams, prefixes are unique, templates lie under their prefix."""
    problems = []
    prefixes: set[str] = set()
    for i, route in items_of(data.get("routes")):
        if not isinstance(route, dict):
            continue
        problems += _unknown_upstream(source, ("routes", i, "upstream"), route.get("upstream"), upstreams)
        prefix = route.get("prefix")
        if isinstance(prefix, str):
            if prefix in prefixes:
                problems.append(source.problem(("routes", i, "prefix"), f"duplicate prefix {prefix!r}"))
            prefixes.add(prefix)
            for j, t in items_of(route.get("templates")):
                if isinstance(t, str) and not t.startswith(prefix):
                    problems.append(
                        source.problem(
                            ("routes", i, "templates", j),
                            f"template {t!r} is not under prefix {prefix!r}",
                        )
                    )
    return problems


def _probe_problems(
    data: dict[str, Any], source: Source, upstreams: dict[str, Any], known: dict[str, Any]
) -> list[Problem]:
    """Probes name known upstreams and facilities; one without a path needs a FHIR route."""
    problems = []
    routes = [r for _, r in items_of(data.get("routes")) if isinstance(r, dict)]
    for i, probe in items_of(data.get("probes")):
        if not isinstance(probe, dict):
            continue
        up = probe.get("upstream")
        problems += _unknown_upstream(source, ("probes", i, "upstream"), up, upstreams)
        for j, fid in items_of(probe.get("facilities")):
            if fid not in known:
                problems.append(source.problem(("probes", i, "facilities", j), f"unknown facility {fid!r}"))
        request = probe.get("request")
        has_path = isinstance(request, dict) and request.get("path") is not None
        fhir_route = any(r.get("upstream") == up and r.get("kind") == "fhir" for r in routes)
        if isinstance(up, str) and up in upstreams and not has_path and not fhir_route:
            problems.append(
                source.problem(
                    ("probes", i, "upstream"),
                    f"upstream {up!r} has no kind: fhir route to probe {{prefix}}metadata on;"
                    " give request.path",
                )
            )
    return problems


def _facility_references(data: dict[str, Any], source: Source, known: dict[str, Any]) -> list[Problem]:
    """Admin tokens name configured facilities."""
    problems = []
    for i, tok in items_of(mapping_at(data, "admin").get("tokens")):
        for j, fid in items_of(tok.get("facilities") if isinstance(tok, dict) else None):
            if fid not in known:
                problems.append(
                    source.problem(("admin", "tokens", i, "facilities", j), f"unknown facility {fid!r}")
                )
    return problems


def _file_problems(
    data: dict[str, Any], source: Source, base: Path, upstreams: dict[str, Any]
) -> list[Problem]:
    """Certificate and CA files exist and load (relative to the config file)."""
    problems = []
    files: list[tuple[Loc, Any]] = []
    tls = data.get("tls")
    if isinstance(tls, dict):
        files += [(("tls", k), tls.get(k)) for k in ("cert_file", "key_file")]
    files += [
        (("upstreams", name, "ca_file"), u.get("ca_file"))
        for name, u in upstreams.items()
        if isinstance(u, dict)
    ]
    for loc, rel in files:
        if isinstance(rel, str) and not (base / rel).is_file():
            problems.append(source.problem(loc, f"file not found: {rel}"))
        elif isinstance(rel, str) and loc[-1] == "ca_file":
            load_ca = functools.partial(ssl.create_default_context, cafile=str(base / rel))
            problems.extend(_pem_problem(source, loc, load_ca))
    if isinstance(tls, dict) and all(isinstance(tls.get(k), str) for k in ("cert_file", "key_file")):
        cert, key = base / tls["cert_file"], base / tls["key_file"]
        if cert.is_file() and key.is_file():
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            problems.extend(
                _pem_problem(source, ("tls", "cert_file"), lambda: server.load_cert_chain(cert, key))
            )
    return problems


def _pem_problem(source: Source, loc: Loc, load: Callable[[], object]) -> list[Problem]:
    """What loading a certificate (or a key) reports, at the field that names it: found by
    ``check``, not by the first TLS handshake after ``serve`` started."""
    try:
        load()
    except ssl.SSLError as exc:
        return [source.problem(loc, f"not a usable PEM certificate (or key): {exc.reason or exc}")]
    except OSError as exc:
        return [source.problem(loc, f"cannot read: {exc.strerror}")]
    return []


SectionCheck = Callable[[Any, Source, dict[str, Any]], list[Problem]]
"""A check across fields of one section: (the raw document, its source, the known facilities)."""
D = TypeVar("D", bound=GatewayConfig)


def load_config(path: str | Path, model: type[D], checks: Sequence[SectionCheck] = ()) -> Config[D]:
    """Load gateway.yaml as ``model`` and the slos.yaml it names; raise ConfigError with every
    problem, each at its ``file:line:column`` (the sections' own ``checks`` included)."""
    p = Path(path)
    source = read_yaml(p)
    problems: list[Problem] = []
    cfg: D | None = None
    try:
        cfg = validate(model, source)
    except ConfigError as exc:
        problems.extend(exc.problems)
    problems.extend(_cross_check(source.data, source, p.parent))
    known = mapping_at(mapping_at(source.data, "facilities"), "known")
    for check in checks:
        problems.extend(check(source.data, source, known))
    slos: list[Slo] = []
    data = source.data if isinstance(source.data, dict) else {}
    slos_file = data.get("slos")
    if isinstance(slos_file, str):
        ups = data.get("upstreams")
        services = set(ups) if isinstance(ups, dict) else None
        slo_path = Path(slos_file) if Path(slos_file).is_absolute() else p.parent / slos_file
        try:
            slos = load_slos(slo_path, services=services)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems or cfg is None:
        raise ConfigError(sorted(problems, key=lambda q: (q.file != str(p), q.file, q.line, q.column)))
    return Config(p, cfg, slos)
