"""Where a config section becomes settings: the one place.

The config models (``gateway/sections.py``, the document in ``gateway/config.py``, the admin
and audit sections in their packages) are data: what the file says, validated, with defaults.
What a part of the gateway runs with is made from them here, and only here: the frozen
settings of the compiled request path (``gateway/dataplane/settings.py``), the listeners', the
telemetry outputs', the audit trail's and the probes' targets. Paths are resolved against the
config file's folder here too. The composition root (``gateway/assembly.py``,
``gateway/server.py``) calls these functions and hands each part its own values. (The SLO
engine's view of the facilities is the loaded document's own, ``Config.facilities``: every
generator reads it, not only the gateway.)
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from core.configfile import split_listen
from core.conventions import UNKNOWN_FACILITY
from gateway.audit.config import AuditConfig, ForwardConfig, retention_s
from gateway.audit.forward import ForwardSettings
from gateway.audit.identity import IdentitySettings
from gateway.audit.writer import TrailSettings
from gateway.config import Config, GatewayConfig
from gateway.dataplane import settings as dp
from gateway.roles import Role
from gateway.sections import (
    FacilitiesConfig,
    ProbeConfig,
    RouteConfig,
    TimeoutConfig,
    TracesConfig,
    UpstreamConfig,
)

# The request path's own settings (gateway/dataplane/settings.py).


def timeouts(cfg: TimeoutConfig) -> dp.Timeouts:
    return dp.Timeouts(cfg.connect, cfg.read, cfg.total, cfg.pool)


def upstream_settings(cfg: UpstreamConfig) -> dp.UpstreamSettings:
    return dp.UpstreamSettings(cfg.url, timeouts(cfg.timeout), cfg.ca_file, cfg.max_connections, cfg.host)


def route_settings(cfg: RouteConfig) -> dp.RouteSettings:
    return dp.RouteSettings(
        cfg.prefix,
        cfg.upstream,
        cfg.kind,
        tuple(cfg.templates),
        tuple(cfg.operations),
        tuple(cfg.query_parameters),
        cfg.rewrite_max_bytes,
        cfg.kind == "fhir" if cfg.audit is None else cfg.audit,
    )


def facility_settings(cfg: FacilitiesConfig) -> dp.FacilitySettings:
    return dp.FacilitySettings(
        tuple(dp.FacilitySource(f.header, f.path_segment, f.jwt_claim) for f in cfg.from_),
        frozenset(cfg.known),
    )


def trace_settings(cfg: TracesConfig) -> dp.TraceSettings:
    return dp.TraceSettings(
        cfg.otlp_endpoint, cfg.sample_ratio, cfg.service_name, cfg.queue_size, cfg.export_timeout
    )


def upstream_ca(config: Config[GatewayConfig], name: str) -> str | None:
    """The upstream's CA file, resolved against the config file's folder (None: the system's)."""
    ca_file = config.gateway.upstreams[name].ca_file
    return str(config.resolve(ca_file)) if ca_file else None


def pools(config: Config[GatewayConfig]) -> dict[str, tuple[dp.UpstreamSettings, str | None]]:
    """Upstream name -> what its pool is built from: a reload keeps a pool whose pair is equal."""
    return {
        name: (upstream_settings(u), upstream_ca(config, name))
        for name, u in config.gateway.upstreams.items()
    }


SPOOL_MEMORY_BYTES = 256 * 1024
"""What one response a client is behind on may hold in memory before its temporary file (as the
upstream client's own read buffer: a slow client costs no more memory than a fast one)."""


def spool_settings(config: Config[GatewayConfig]) -> dp.SpoolSettings | None:
    """Response buffering's settings (its directory, ``limits.temp_path``, resolved); None when
    off (``limits.max_temp_file_size: 0``)."""
    limits = config.gateway.limits
    if limits.max_temp_file_size == 0:
        return None
    directory = config.resolve(limits.temp_path)
    return dp.SpoolSettings(str(directory), limits.max_temp_file_size, SPOOL_MEMORY_BYTES)


# The gateway's facilities, as its metrics show them.


def facility_names(cfg: FacilitiesConfig) -> dict[str, str]:
    """Facility id -> its name, for the info gauge."""
    return {fid: f.name for fid, f in cfg.known.items()}


def sla_ratios(cfg: FacilitiesConfig) -> dict[str, float]:
    """Facility id -> its contractual availability (0..1), for those that have one."""
    return {fid: f.sla / 100.0 for fid, f in cfg.known.items() if f.sla is not None}


# The listeners and the telemetry outputs.


@dataclass(frozen=True)
class ListenerSettings:
    """The proxy and admin listeners of one process, and the limits they hold clients to."""

    host: str
    port: int
    admin_host: str
    admin_port: int
    tls: tuple[Path, Path] | None
    """The certificate and key files (``tls.cert_file``, ``tls.key_file``), resolved."""
    trusted_proxies: tuple[str, ...]
    max_header_size: int
    header_timeout_s: float
    body_timeout_s: float
    write_timeout_s: float
    max_client_connections: int | None
    """As configured (None: what the open-file limit leaves, decided at start)."""
    upstream_connections: int
    """Every upstream pool's ``max_connections`` together: descriptors kept for them."""
    shutdown_timeout_s: float


def listener_settings(config: Config[GatewayConfig], role: Role) -> ListenerSettings:
    cfg = config.gateway
    host, port = split_listen(cfg.listen)
    admin_host, admin_port = split_listen(cfg.admin.listen)
    limits = cfg.limits
    tls = None if cfg.tls is None else (config.resolve(cfg.tls.cert_file), config.resolve(cfg.tls.key_file))
    return ListenerSettings(
        host,
        port if role.port is None else role.port,
        admin_host,
        admin_port,
        tls,
        tuple(cfg.trusted_proxies),
        limits.max_header_size,
        limits.header_timeout,
        limits.client_body_timeout,
        limits.client_write_timeout,
        limits.max_client_connections,
        sum(u.max_connections for u in cfg.upstreams.values()),
        limits.shutdown_timeout,
    )


def access_log_target(config: Config[GatewayConfig]) -> str | Path:
    """Where the access log goes: ``"-"`` (standard output) or its file, resolved."""
    path = config.gateway.telemetry.access_log.path
    return path if path == "-" else config.resolve(path)


@dataclass(frozen=True)
class StoreSettings:
    """The embedded store's file and how it is kept (``telemetry.store``)."""

    path: Path
    flush_interval_s: float
    minute_days: int
    hour_days: int


def store_settings(config: Config[GatewayConfig]) -> StoreSettings | None:
    """None when the store is not kept (``telemetry.store.enabled: false``)."""
    store = config.gateway.telemetry.store
    if not store.enabled:
        return None
    return StoreSettings(
        config.resolve(store.path),
        store.flush_interval,
        int(store.minute_retention // 86400),
        int(store.hour_retention // 86400),
    )


# The audit trail.


def identity_settings(config: Config[GatewayConfig], audit: AuditConfig) -> IdentitySettings | None:
    ident = audit.identity
    if ident is None:
        return None
    if ident.header is not None:
        return IdentitySettings(header=True, trusted_sources=tuple(ident.trusted_sources))
    return IdentitySettings(
        issuer=ident.issuer,
        audience=ident.audience,
        jwks_file=config.resolve(ident.jwks_file) if ident.jwks_file else None,
        jwks_url=ident.jwks_url,
        refresh_s=ident.refresh,
    )


def trail_settings(config: Config[GatewayConfig], audit: AuditConfig, chain: str) -> TrailSettings:
    """One chain of the trail: the trail's folder, or its ``chain`` sub-folder (``--workers``)."""
    root = config.resolve(audit.path)
    return TrailSettings(
        directory=root / chain if chain else root,
        flush_interval_s=audit.flush_interval,
        checkpoint_interval_s=audit.checkpoint_interval,
        retention_s=retention_s(audit.retention),
        max_queue=audit.max_queue,
        max_patients=audit.max_patients,
        upstream_addresses={name: u.url for name, u in config.gateway.upstreams.items()},
        chain=chain,
        root=root,
        strict=audit.durability == "strict",
    )


def data_key_paths(config: Config[GatewayConfig], audit: AuditConfig) -> tuple[Path, ...]:
    """The data key files (``key_file``, or ``key_files`` during a rotation), resolved."""
    names = [audit.key_file] if audit.key_file is not None else list(audit.key_files or [])
    return tuple(config.resolve(k) for k in names)


def audit_key_files(config: Config[GatewayConfig], audit: AuditConfig) -> tuple[tuple[Path, ...], Path]:
    """The data key files and the signing key file, resolved."""
    return data_key_paths(config, audit), config.resolve(audit.signing_key_file)


def forward_settings(config: Config[GatewayConfig], fwd: ForwardConfig) -> ForwardSettings:
    """Reads the token file (raises OSError when it cannot)."""
    token = config.resolve(fwd.token_file).read_text().strip() if fwd.token_file else None
    return ForwardSettings(
        url=fwd.url,
        batch_size=fwd.batch_size,
        interval_s=fwd.interval,
        timeout_s=fwd.timeout,
        ca_file=str(config.resolve(fwd.ca_file)) if fwd.ca_file else None,
        authorization=f"Bearer {token}" if token else None,
    )


def audit_user_header(config: Config[GatewayConfig]) -> str:
    """The request header that names the user (lower case), or "" when none is trusted."""
    audit = config.gateway.audit
    identity = audit.identity if audit is not None else None
    return (identity.header or "").lower() if identity is not None else ""


# The probes.


@dataclass(frozen=True)
class Target:
    """One probe request: an upstream, for one facility."""

    upstream: str
    facility: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    interval_s: float
    timeout_s: float
    expect: frozenset[int]


def probe_path(probe: ProbeConfig, routes: list[RouteConfig]) -> str:
    """The probe's ``request.path``, or ``{prefix}metadata`` of its upstream's FHIR route."""
    if probe.request.path is not None:
        return probe.request.path
    prefix = next(r.prefix for r in routes if r.upstream == probe.upstream and r.kind == "fhir")
    return prefix.rstrip("/") + "/metadata"


def probe_targets(config: Config[GatewayConfig]) -> list[Target]:
    """Every probe request ``config`` asks for, each facility carried the way the first
    facility source reads it (a header, a path segment, or a JWT claim)."""
    cfg = config.gateway
    out = []
    for probe in cfg.probes:
        base_path = probe_path(probe, cfg.routes)
        for facility in probe.facilities or [UNKNOWN_FACILITY]:
            out.append(_target(config, probe, base_path, facility))
    return out


def _target(config: Config[GatewayConfig], probe: ProbeConfig, path: str, facility: str) -> Target:
    headers = dict(probe.request.headers)
    sources = config.gateway.facilities.from_
    source = sources[0] if sources else None
    if facility != UNKNOWN_FACILITY and source is not None:
        if source.header is not None:
            headers[source.header] = facility
        elif source.path_segment is not None:
            parts = path.split("/")
            parts.insert(source.path_segment + 1, facility)
            path = "/".join(parts)
        elif source.jwt_claim is not None:
            headers["Authorization"] = "Bearer " + _unsigned_jwt(source.jwt_claim, facility)
    return Target(
        probe.upstream,
        facility,
        probe.request.method,
        path,
        tuple(headers.items()),
        probe.interval,
        probe.timeout,
        frozenset(probe.expect),
    )


def _unsigned_jwt(claim: str, value: str) -> str:
    """A bearer token that only names the facility (the gateway reads the claim unverified, for
    attribution only; it grants nothing)."""

    def part(obj: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({claim: value})}."
