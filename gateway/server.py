"""Running one gateway process: the proxy listener over the data plane (assembled by
``gateway/assembly.py``), the admin listener (``gateway/admin/api.py``), shutdown.

SIGTERM (or SIGINT) drains: the proxy stops accepting, ``/readyz`` turns 503,
in-flight requests finish (up to ``limits.shutdown_timeout``), then the access
log and the span queue are flushed and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import sqlite3
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import native, settings
from gateway.admin.api import AdminApi, AdminExtension, Lifecycle
from gateway.admin.listener import AdminRunner
from gateway.assembly import DataPlane, Routing, audit_trail
from gateway.audit.trail import AuditTrail
from gateway.config import Config, GatewayConfig
from gateway.dataplane.accesslog import AccessLog
from gateway.dataplane.httpserver import HttpServer
from gateway.dataplane.proxy import Proxy
from gateway.metrics import declare_families
from gateway.metrics.storage import MetricStorage
from gateway.probes import ProbeMetrics, Prober
from gateway.reload import (
    Loader,
    ReloadResult,
    WorkerReloads,
    config_sha256,
    effective,
    load_candidate,
    restart_required,
)
from gateway.roles import Role, mark_ready
from gateway.startup import StartupError, reason
from slo.spec import latency_thresholds_s
from slo.store import StoreError

log = logging.getLogger("vitalgate.gateway")
SWITCH_INTERVAL_S = 0.0005
"""Adds routes to the admin app (the composition root adds the status pages and reports)."""


# Descriptors kept free of client connections: the admin listener and its clients, the store,
# the log, span export, the listening sockets (upstream pools are added per upstream).
_RESERVED_FDS = 64
_REFUSED_LOG_EVERY_S = 10.0


class Gateway:
    """One gateway process: build with a Config, ``start``, later ``stop``."""

    def __init__(
        self,
        config: Config[GatewayConfig],
        admin_extensions: Sequence[AdminExtension] = (),
        role: Role = Role(),
    ) -> None:
        self.config = config
        self.started_config = config
        """What the process started with: the settings only a restart changes keep its values."""
        self.role = role
        cfg = config.gateway
        # Made once: a reload changes none of these (``gateway.reload.RESTART_ONLY``), except the
        # upstream pools' sizes, which are read only when the listener starts.
        self.listener = settings.listener_settings(config, role)
        self.registry = CollectorRegistry()
        self.storage = MetricStorage(role.metrics_dir)
        self.lifecycle = Lifecycle()
        self.metrics = declare_families(
            self.registry,
            latency_thresholds_s(config.slos),
            settings.facility_names(cfg.facilities),
            settings.sla_ratios(cfg.facilities),
        )
        self.access_log = AccessLog(
            settings.access_log_target(config),
            cfg.telemetry.access_log.queue_size,
            lambda n: self.metrics.telemetry.drop("log", n),
            self.metrics.telemetry.access_log_error,
        )
        self._host, self._port = self.listener.host, self.listener.port
        self._admin_host, self._admin_port = self.listener.admin_host, self.listener.admin_port
        # A --workers supervisor proxies nothing: it builds no data plane.
        self.dataplane: DataPlane | None = None
        if role.kind != "supervisor":
            self.dataplane = DataPlane(
                config, role, self.registry, self.storage, self.metrics, self.access_log, self._port
            )
        exposed = self.storage.exposed(self.registry)
        self.admin = AdminApi(config, role, exposed, self.access_log, self.lifecycle, list(admin_extensions))
        self._audit_reads: AuditTrail | None = None
        if self.dataplane is not None and self.dataplane.audit is not None:
            self.admin.audit = self.dataplane.audit
        elif role.kind == "supervisor" and config.gateway.audit is not None:
            # The workers each write a chain of their own; the supervisor serves the admin API,
            # and records the reads of the trail there in one more chain.
            self._audit_reads = audit_trail(
                config, config.gateway.audit, self.metrics.audit, self.access_log, None, "supervisor"
            )
            self.admin.audit = self._audit_reads
        self._refused_logged_at = -_REFUSED_LOG_EVERY_S
        self._server: HttpServer | None = None
        self.prober: Prober | None = None
        self._admin_runner: web.AppRunner | None = None
        self.proxy_port = 0
        self.admin_port = 0

    def _client_connection_cap(self) -> int:
        """``limits.max_client_connections``, or what the open-file limit leaves once the
        upstream pools and the gateway's own descriptors are set aside: a flood of client
        connections then meets a clear 503 instead of starving the admin listener and the
        upstreams of descriptors."""
        reserved = _RESERVED_FDS + self.listener.upstream_connections
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = max(16, soft - reserved) if soft != resource.RLIM_INFINITY else 1_000_000
        wanted = self.listener.max_client_connections
        if wanted is None:
            return room
        if wanted > room:
            log.warning(
                "limits.max_client_connections is %d but the open-file limit (%d) leaves room for"
                " %d once the upstream pools and the gateway's own files are set aside; raise"
                " the limit (ulimit -n) or expect accept errors",
                wanted,
                soft,
                room,
            )
        return wanted

    def _refused(self, held: int) -> None:
        self.metrics.requests.connections_refused()
        now = time.monotonic()
        if now - self._refused_logged_at >= _REFUSED_LOG_EVERY_S:
            self._refused_logged_at = now
            log.warning(
                "client connection limit reached: %d connections held; new ones get 503 and are"
                " closed (vitalgate_client_connections_refused_total counts them)",
                held,
            )

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.listener.tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert, key = self.listener.tls
        for setting, path in (("tls.cert_file", cert), ("tls.key_file", key)):
            try:
                path.open("rb").close()  # (which of the two is missing: the ssl call does not say)
            except OSError as exc:
                raise StartupError(setting, str(path), reason(exc)) from exc
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise StartupError("tls.cert_file", f"{cert} (key {key})", reason(exc)) from exc
        return ctx

    async def prepare_reload(self, new: Config[GatewayConfig]) -> Routing | None:
        """Build what ``new`` changes beside what runs (None for a supervisor: it proxies
        nothing); raises when a part cannot be built (a CA file, a TLS context)."""
        if self.dataplane is None:
            return None
        return self.dataplane.prepare(effective(self.started_config, new))

    async def commit_reload(self, new: Config[GatewayConfig], routing: Routing | None) -> None:
        self.config = effective(self.started_config, new)
        if self.dataplane is not None and routing is not None:
            await self.dataplane.commit(routing)
        if self.prober is not None:
            self.prober.start(settings.probe_targets(self.config))
        self.admin.apply(self.config)

    async def discard_reload(self, routing: Routing | None) -> None:
        """A prepared reload that will not be committed (another worker failed to prepare)."""
        if self.dataplane is not None and routing is not None:
            await self.dataplane.discard(routing)

    async def reload(self, load: Loader) -> ReloadResult:
        """One process's reload: load and validate, prepare, commit; counted and logged."""
        async with self.admin.reloads.lock:
            new, errors = load_candidate(load)
            result = ReloadResult(False, errors)
            if new is not None:
                try:
                    routing = await self.prepare_reload(new)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    result = ReloadResult(False, [f"{new.path}: {exc}"])
                else:
                    await self.commit_reload(new, routing)
                    result = ReloadResult(
                        True, [], restart_required(self.started_config, new), config_sha256(new)
                    )
            self.admin.reloads.record(result)
            return result

    @property
    def proxy(self) -> Proxy:
        assert self.dataplane is not None, "a supervisor has no proxy"
        return self.dataplane.proxy

    async def start(self) -> None:
        if self.dataplane is None:
            self.access_log.start()
            if self._audit_reads is not None:
                await self._audit_reads.start()
            await self._start_admin()
            self.lifecycle.ready = False  # until every worker is up (gateway.workers)
            return
        await self.dataplane.start()
        self.access_log.start()
        listener = self.listener
        self._server = HttpServer(
            self.proxy.handle,
            max_header_size=listener.max_header_size,
            on_error=lambda: log.exception("proxy handler failed"),
            trusted_proxies=listener.trusted_proxies,
            header_timeout_s=listener.header_timeout_s,
            body_timeout_s=listener.body_timeout_s,
            write_timeout_s=listener.write_timeout_s,
            max_connections=self._client_connection_cap(),
            on_reject=self.proxy.rejected,
            on_refuse=self._refused,
        )
        context = self._ssl_context()
        try:
            self.proxy_port = await self._server.start(
                self._host, self._port, ssl=context, reuse_port=self.role.kind == "worker"
            )
        except OSError as exc:
            raise StartupError("listen", _address(self._host, self._port), reason(exc)) from exc
        self.proxy.bound(self._host, self.proxy_port)
        if self.role.kind == "single" or self.role.index == 0:
            scheme = "https" if self.listener.tls else "http"
            assert self.dataplane is not None
            self.prober = Prober(
                ProbeMetrics(self.registry), self.dataplane.probe_token, scheme, self._host, self.proxy_port
            )
            self.prober.start(settings.probe_targets(self.config))
        if self.role.kind == "worker":
            self.lifecycle.ready = True
            return
        await self._start_admin()

    async def _start_admin(self) -> None:
        self._admin_runner = AdminRunner(self.admin.app(), access_log=None, handle_signals=False)
        await self._admin_runner.setup()
        try:
            await web.TCPSite(self._admin_runner, self._admin_host, self._admin_port).start()
        except OSError as exc:
            address = _address(self._admin_host, self._admin_port)
            raise StartupError("admin.listen", address, reason(exc)) from exc
        self.admin_port = _bound_port(self._admin_runner)
        self.lifecycle.ready = True

    async def stop(self) -> None:
        """Drain and flush; safe to call once after start."""
        self.lifecycle.draining = True
        if self.prober is not None:
            await self.prober.stop()
        if self._server is not None:
            await self._server.stop_accepting()  # open connections finish their requests
        timeout_s = self.listener.shutdown_timeout_s
        if self.dataplane is not None:
            try:
                await asyncio.wait_for(self.proxy.idle.wait(), timeout_s)
            except TimeoutError:
                # Cut by the close below, each recorded as 503 error.type shutdown (counted bad).
                log.warning(
                    "%d requests still running at limits.shutdown_timeout (%g s) are cut",
                    self.proxy.in_flight,
                    timeout_s,
                    extra={"event": "shutdown_cut", "requests": self.proxy.in_flight},
                )
        if self._server is not None:
            await self._server.close()
        if self.dataplane is not None:
            await self.dataplane.close()
        loop = asyncio.get_running_loop()
        if self._audit_reads is not None:
            await self._audit_reads.close()
        # The log's writer gets as long as requests did to finish (up to 10 s); what a stalled
        # output still holds then is counted as dropped.
        log_s = max(1.0, min(10.0, timeout_s))
        await loop.run_in_executor(None, self.access_log.close, log_s)
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bound_port(runner: web.BaseRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            return int(addr[1])
    return 0


async def serve(
    config: Config[GatewayConfig],
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
    admin_extensions: Sequence[AdminExtension] = (),
    role: Role = Role(),
    load: Loader | None = None,
) -> int:
    """Run until SIGTERM or SIGINT, then drain; SIGHUP reloads the config with ``load`` (a
    worker's reloads are run by its supervisor, ``gateway.workers``). Returns the exit code."""
    gateway = Gateway(config, admin_extensions, role)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks: set[asyncio.Task[object]] = set()

    def later(make: Callable[[], Awaitable[object]]) -> None:
        task: asyncio.Task[object] = loop.create_task(make())  # type: ignore[arg-type]
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    if load is not None and role.kind == "single":
        reload_with = load
        loop.add_signal_handler(signal.SIGHUP, lambda: later(lambda: gateway.reload(reload_with)))
        gateway.admin.reload_hook = lambda: gateway.reload(reload_with)
    elif load is not None and role.kind == "worker":
        assert role.metrics_dir is not None
        reloads = WorkerReloads(gateway, role.metrics_dir, role.index, load)
        loop.add_signal_handler(signal.SIGHUP, lambda: later(reloads.prepare))
        loop.add_signal_handler(signal.SIGUSR1, lambda: later(reloads.decide))
    try:
        await gateway.start()
    except StartupError as exc:
        log.error("cannot start: %s", exc, extra={"event": "start_failed", "setting": exc.setting})
        return 1
    except (StoreError, sqlite3.Error, OSError) as exc:
        log.error("cannot start: %s", exc, extra={"event": "start_failed"})
        return 1
    if role.kind == "worker":
        assert role.metrics_dir is not None
        mark_ready(role.metrics_dir, role.index)
    else:
        _announce(config, gateway)
    if on_ready is not None:
        await on_ready(gateway)
    # Everything allocated at start-up (config, routes, metric children, SDK objects) lives
    # forever: move it out of the collector's way, so collections stay short under load.
    gc.collect()
    gc.freeze()
    # The telemetry threads (span encoding, log formatting, store writes) share the GIL with
    # the event loop; by default a waiting thread gets it after 5 ms, which would show as
    # request latency. Half a millisecond keeps the loop's waits short.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    await stop.wait()
    t0 = time.monotonic()
    who = {"worker": role.index} if role.kind == "worker" else {}
    log.info("draining", extra={"event": "draining", **who})
    await gateway.stop()
    drain_s = round(time.monotonic() - t0, 3)
    log.info("stopped after %.2fs drain", drain_s, extra={"event": "stopped", "drain_s": drain_s, **who})
    return 0


def _announce(config: Config[GatewayConfig], gateway: Gateway) -> None:
    proxy = f"{config.gateway.listen.rsplit(':', 1)[0]}:{gateway.proxy_port}"
    admin = f"{config.gateway.admin.listen.rsplit(':', 1)[0]}:{gateway.admin_port}"
    build = native.build().describe()
    fields = {"event": "listening", "proxy": proxy, "admin": admin, "build": build}
    log.info("proxy on %s, admin (metrics) on %s, %s", proxy, admin, build, extra=fields)
    if not config.gateway.admin.tokens:
        log.warning("no admin tokens configured; admin API is open", extra={"event": "admin_open"})


def run(
    config: Config[GatewayConfig],
    admin_extensions: Sequence[AdminExtension] = (),
    role: Role = Role(),
    load: Loader | None = None,
) -> int:
    """Run the gateway on uvloop when it is installed."""
    main = serve(config, admin_extensions=admin_extensions, role=role, load=load)
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))
