"""The composition root of one proxy process's data plane: config in, the request path out.

Everything the compiled request path (``gateway/dataplane/``) is given is decided here, once,
from the settings ``gateway/settings.py`` makes of the config: the upstream pools, the sinks
each request's outcome goes to (spans when traces are exported, the request histogram of
this process or of the workers' shared files, the store recorder when the store is kept, with
its writer thread beside the data plane, the access log). A ``--workers`` supervisor builds
none of it: it proxies nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from core.conventions import UNKNOWN_FACILITY
from gateway import settings
from gateway.audit.config import AuditConfig, ForwardConfig
from gateway.audit.forward import ForwardCounters, Forwarder
from gateway.audit.keys import Keyring, read_signing_key
from gateway.audit.store import CHECKPOINT_EVENT, CHECKPOINT_SPAN
from gateway.audit.trail import AuditCounters, AuditTrail
from gateway.audit.writer import WriterSpec
from gateway.config import Config, GatewayConfig
from gateway.dataplane.accesslog import AccessLog
from gateway.dataplane.facility import FacilityResolver
from gateway.dataplane.metrics import LabelBudget
from gateway.dataplane.outcome import EntrySink, RequestSink, SpanSink
from gateway.dataplane.proxy import Outputs, Proxy
from gateway.dataplane.recorder import Recorder
from gateway.dataplane.routes import Router
from gateway.dataplane.settings import RecorderSettings, UpstreamSettings
from gateway.dataplane.spool import Spool
from gateway.dataplane.tracing import Tracing
from gateway.dataplane.upstream import Upstream
from gateway.metrics import MetricFamilies
from gateway.metrics.spool import SpoolMetrics
from gateway.metrics.storage import MetricStorage
from gateway.metrics.store import StoreHealth
from gateway.probes import PROBE_TOKEN_ENV
from gateway.roles import Role
from gateway.startup import store_failure
from gateway.storewriter import StoreWriterSettings, StoreWriterThread
from slo.spec import Slo
from slo.store import EXEMPLARS_PER_HOUR, StoreError

log = logging.getLogger("vitalgate.gateway")
HEALTH_INTERVAL_S = 1.0
"""How often the health gauges are read off the queues, the store and the pools."""


def response_spool(config: Config[GatewayConfig], metrics: SpoolMetrics) -> Spool | None:
    """Response buffering (None when ``limits.max_temp_file_size`` is 0); its directory is
    made ready when the data plane starts (``prepare_spool``)."""
    spool = settings.spool_settings(config)
    return Spool(spool, metrics) if spool is not None else None


def prepare_spool(spool: Spool) -> None:
    """Make the spool directory and clean what a crashed process left in it; raises OSError
    naming ``limits.temp_path`` when no file can be made there."""
    try:
        removed = spool.prepare()
    except OSError as exc:
        raise OSError(
            f"limits.temp_path: cannot keep temporary files in {spool.directory}: {exc.strerror}"
        ) from exc
    if removed:
        log.info(
            "removed %d temporary files a stopped gateway process left in %s",
            removed,
            spool.directory,
            extra={"event": "spool_cleaned", "directory": spool.directory, "files": removed},
        )


def instance_id(role: Role) -> str:
    """OpenTelemetry's service.instance.id: this process among the gateway's processes."""
    suffix = f"/worker-{role.index}" if role.kind == "worker" else ""
    return f"{socket.gethostname()}:{os.getpid()}{suffix}"


class DataPlane:
    """The request path of one proxy process (one gateway, or one worker)."""

    def __init__(
        self,
        config: Config[GatewayConfig],
        role: Role,
        registry: CollectorRegistry,
        storage: MetricStorage,
        metrics: MetricFamilies,
        access_log: AccessLog,
        port: int,
    ) -> None:
        cfg = config.gateway
        self.request_metrics = storage.request_metrics(registry, metrics.buckets_s)
        self.tracing = Tracing(
            settings.trace_settings(cfg.telemetry.traces),
            lambda n: metrics.telemetry.drop("span", n),
            instance=instance_id(role),
            on_failure=metrics.telemetry.span_export_failed,
        )
        for service in cfg.upstreams:  # every service has series from start-up: silence is visible
            self.request_metrics.active.child(UNKNOWN_FACILITY, service)
        self.upstreams: dict[str, Upstream] = {}
        self._upstream_keys: dict[str, tuple[UpstreamSettings, str | None]] = {}
        first = self.prepare(config)  # (built as a reload builds it: nothing runs yet to keep)
        self.router, self.facilities = first.router, first.facilities
        self.upstreams, self._upstream_keys = first.upstreams, first.keys
        store = settings.store_settings(config)
        self.recorder: Recorder | None = None
        self.store_writer: StoreWriterThread | None = None
        self._store_path = "" if store is None else str(store.path)
        if store is not None:
            self.recorder = Recorder(RecorderSettings(metrics.buckets_s, EXEMPLARS_PER_HOUR))
            self.store_writer = store_writer(store, config.slos, role, self.recorder, metrics)
        # Spans first (their end time is the closest to the response), then the histogram, the
        # store (when kept) and the log.
        sinks: list[RequestSink] = [SpanSink()] if self.tracing.enabled else []
        sinks.append(self.request_metrics.histogram)
        entry_sinks: list[EntrySink] = [metrics.requests]
        if self.recorder is not None:
            sinks.append(self.recorder)
            entry_sinks.append(self.recorder)
        sinks.append(access_log)
        self.audit: AuditTrail | None = None
        self.forwarder: Forwarder | None = None
        if cfg.audit is not None:
            chain = "" if role.kind == "single" else f"worker-{role.index}"
            self.audit = audit_trail(config, cfg.audit, metrics.audit, access_log, self.tracing, chain)
            sinks.append(self.audit)
            if cfg.audit.forward is not None:
                self.forwarder = forwarder(config, cfg.audit, cfg.audit.forward, self.audit, metrics.forward)
        self.probe_token = os.environ.get(PROBE_TOKEN_ENV) or secrets.token_hex(16)
        self.spool = response_spool(config, metrics.spool)
        outputs = Outputs(
            self.tracing.tracer,
            LabelBudget(cfg.telemetry.metrics.max_label_sets, metrics.requests.folded),
            self.request_metrics.active,
            metrics.requests,
            tuple(sinks),
            tuple(entry_sinks),
            audit=self.audit is not None,
            audit_user_header=settings.audit_user_header(config),
            audit_gate=self.audit if cfg.audit is not None and cfg.audit.durability == "strict" else None,
            probe_token=self.probe_token,
            spool=self.spool,
        )
        scheme = "https" if cfg.tls else "http"
        self.proxy = Proxy(self.router, self.facilities, self.upstreams, outputs, scheme, port)
        self._metrics, self._access_log = metrics, access_log
        self._retiring: set[asyncio.Task[None]] = set()
        self._health: asyncio.Task[None] | None = None
        self._store_health: StoreHealth | None = None
        if self.store_writer is not None and store is not None:
            self._store_health = StoreHealth(registry, store.flush_interval_s)

    def _observe(self) -> None:
        """The gauges of the gateway's own health that are read off its parts: queue depths,
        the store's last flush, the upstreams' certificates."""
        telemetry = self._metrics.telemetry
        telemetry.queue_depth("log", self._access_log.depth)
        if self.tracing.processor is not None:
            telemetry.queue_depth("span", self.tracing.processor.depth)
        if self.store_writer is not None and self._store_health is not None:
            telemetry.queue_depth("store", self.store_writer.depth)
            self._store_health.flushed(
                self.store_writer.last_flush_s, self.store_writer.last_flush_duration_s
            )
        if self.audit is not None:
            telemetry.queue_depth("audit", self.audit.depth)
        for name, u in self.upstreams.items():
            if u.certificate_expiry_s:
                self._metrics.upstreams.certificate_expiry(name, u.certificate_expiry_s)

    async def _observe_loop(self) -> None:
        while True:
            self._observe()
            await asyncio.sleep(HEALTH_INTERVAL_S)

    def prepare(self, config: Config[GatewayConfig]) -> Routing:
        """What requests will use under ``config``, built beside what they use now; raises
        (OSError, ssl.SSLError, ValueError) when a part cannot be built, nothing switched. An
        upstream whose settings did not change keeps its running pool (and its connections)."""
        cfg = config.gateway
        facilities = FacilityResolver(settings.facility_settings(cfg.facilities))
        router = Router([settings.route_settings(r) for r in cfg.routes], facilities.path_segment)
        keys = settings.pools(config)
        upstreams: dict[str, Upstream] = {}
        for name, (pool, ca_file) in keys.items():
            old = self.upstreams.get(name)
            if old is not None and self._upstream_keys.get(name) == (pool, ca_file):
                upstreams[name] = old
            else:
                upstreams[name] = Upstream(name, pool, ca_file, cfg.limits.max_upstream_header_size)
        return Routing(config, router, facilities, upstreams, keys)

    async def commit(self, routing: Routing) -> None:
        """Switch to ``routing`` (one step on the event loop: a request started before it keeps
        what it read), then close the pools no longer used once their exchanges are over."""
        for u in routing.upstreams.values():
            if u is not self.upstreams.get(u.name):
                await u.start()
        cfg = routing.config.gateway
        retired = [u for name, u in self.upstreams.items() if routing.upstreams.get(name) is not u]
        self.router, self.facilities, self.upstreams = routing.router, routing.facilities, routing.upstreams
        self._upstream_keys = routing.keys
        self.proxy.router, self.proxy.facilities, self.proxy.upstreams = (
            routing.router,
            routing.facilities,
            routing.upstreams,
        )
        for service in cfg.upstreams:
            self.request_metrics.active.child(UNKNOWN_FACILITY, service)
        self._metrics.facilities.set_facilities(
            settings.facility_names(cfg.facilities), settings.sla_ratios(cfg.facilities)
        )
        self.tracing.tracer.set_sample_ratio(cfg.telemetry.traces.sample_ratio)
        grace_s = cfg.limits.shutdown_timeout
        for u in retired:
            task = asyncio.get_running_loop().create_task(_retire(u, grace_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def discard(self, routing: Routing) -> None:
        """A prepared ``routing`` that will not be used (another worker failed to prepare)."""
        for u in routing.upstreams.values():
            if u is not self.upstreams.get(u.name):
                await u.close()

    async def start(self) -> None:
        """Ready the spool directory, open the store (raises StartupError naming
        telemetry.store.path if it cannot), start span export and the upstream pools."""
        if self.spool is not None:
            prepare_spool(self.spool)
        if self.store_writer is not None:
            try:
                self.store_writer.start()
            except (StoreError, sqlite3.Error, OSError) as exc:
                raise store_failure(self._store_path, exc) from exc
        if self.audit is not None:
            await self.audit.start()
        if self.forwarder is not None:
            self.forwarder.start()
        await self.tracing.start()
        for u in self.upstreams.values():
            await u.start()
        self._health = asyncio.get_running_loop().create_task(self._observe_loop())

    async def close(self) -> None:
        """After the last request: close the pools, flush the store, then the spans."""
        for task in list(self._retiring):
            task.cancel()
        if self._health is not None:
            self._health.cancel()
        for u in self.upstreams.values():
            await u.close()
        if self.store_writer is not None:
            self.store_writer.flush()
            await asyncio.get_running_loop().run_in_executor(None, self.store_writer.close)
        if self.forwarder is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.forwarder.close)
        if self.audit is not None:
            await self.audit.close()
        await self.tracing.shutdown()


def store_writer(
    store: settings.StoreSettings, slos: list[Slo], role: Role, recorder: Recorder, metrics: MetricFamilies
) -> StoreWriterThread:
    """The thread that writes what ``recorder`` counts to the embedded store: with
    ``--workers`` every worker writes its own counts (added to the others'), the supervisor has
    caught the store up before they start, and worker 0 alone compacts and purges."""
    writer = StoreWriterSettings(
        store.path,
        tuple(slos),
        metrics.buckets_s,
        flush_interval_s=store.flush_interval_s,
        minute_days=store.minute_days,
        hour_days=store.hour_days,
        shared=role.kind == "worker",
        maintenance=role.index == 0,
    )
    return StoreWriterThread(
        recorder, writer, lambda n: metrics.telemetry.drop("store", n), metrics.store.error
    )


@dataclass(frozen=True)
class Routing:
    """What a request reads once when it starts: routes, facility resolution, upstream pools;
    prepared by ``DataPlane.prepare`` for a reload."""

    config: Config[GatewayConfig]
    router: Router
    facilities: FacilityResolver
    upstreams: dict[str, Upstream]
    keys: dict[str, tuple[UpstreamSettings, str | None]]


async def _retire(upstream: Upstream, grace_s: float) -> None:
    """Close a pool a reload left behind once no exchange holds or waits for one of its
    connections (at most ``grace_s``, the drain time of a shutdown: past it what is still
    running is cut, as a shutdown would)."""
    deadline = time.monotonic() + grace_s
    # Polled: a pool has no event for its last exchange ending, and a reload is rare.
    while upstream.busy and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await upstream.close()


def audit_trail(
    config: Config[GatewayConfig],
    audit: AuditConfig,
    metrics: AuditCounters,
    access_log: AccessLog,
    tracing: Tracing | None,
    chain: str = "",
) -> AuditTrail:
    """The audit sink: its keys loaded (``vitalgate check`` has checked them), checkpoints
    published outside the audit store: in the access log, and as a span when traces are
    exported."""
    trail = settings.trail_settings(config, audit, chain)
    key_files, signing_key_file = settings.audit_key_files(config, audit)
    # Read here too, so that a key the writer could not read stops the gateway's start with
    # the key's own error; the writer process reads its own copy.
    keyring = Keyring.load(key_files)
    read_signing_key(signing_key_file)
    spec = WriterSpec(trail, key_files, signing_key_file, settings.identity_settings(config, audit))

    def publish(checkpoint: dict[str, Any]) -> None:
        access_log.event(time.time(), CHECKPOINT_EVENT, {"checkpoint": checkpoint})
        if tracing is not None:
            tracing.event_span(
                CHECKPOINT_SPAN, {f"vitalgate.audit.checkpoint.{k}": v for k, v in checkpoint.items()}
            )

    return AuditTrail(trail, keyring, spec, metrics, publish)


def forwarder(
    config: Config[GatewayConfig],
    audit: AuditConfig,
    fwd: ForwardConfig,
    trail: AuditTrail,
    metrics: ForwardCounters,
) -> Forwarder:
    forward = settings.forward_settings(config, fwd)
    return Forwarder(forward, trail.settings.directory, trail.keyring, lambda: trail.durable_size, metrics)
