"""``gateway.yaml``: the whole document, validated and loaded.

The sections are their own models (``gateway/sections.py``, the admin and audit sections in
their packages); here they are put together (``GatewayConfig``), checked across sections on
the raw document, and loaded with the ``slos.yaml`` the file names. ``load_config`` reports
every problem of both files at once, each as ``file:line:column: field: message``. Paths inside
the file are relative to the file.
"""

from __future__ import annotations

import functools
import re
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator

from core.configfile import (
    ConfigError,
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
from gateway.sections import (
    FacilitiesConfig,
    LimitsConfig,
    ProbeConfig,
    RouteConfig,
    TelemetryConfig,
    TlsConfig,
    UpstreamConfig,
)
from slo.spec import NAME_RE, Facility, Maintenance, Slo, load_slos

# Label values the gateway itself uses: a configured facility must not take one.
RESERVED_FACILITY_IDS = frozenset({"unknown", "other", "*"})


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
