"""Reloading the configuration in a running gateway (SIGHUP, ``vitalgate reload``,
``POST /api/v1/reload``) without closing a listener or failing a request.

A reload is validate, prepare, commit:

- validate: the config is loaded and checked as ``vitalgate check`` does; any problem keeps the
  running config in force, and the reload is counted as failed with every problem at its
  ``file:line:column``;
- prepare: what requests will use is built beside what they use now (routes, facility
  resolution, upstream pools; a pool whose settings did not change is kept, with its open
  connections), so nothing that can fail happens after the switch;
- commit: one synchronous swap on the event loop. A request reads the routes, the facility
  resolver and the upstream pools once, when it starts, so in-flight requests finish on the
  old ones and every later request uses the new ones; a pool that is no longer configured
  is closed once its last exchange is over.

With ``--workers`` the supervisor validates, then every worker prepares; only when all of
them have prepared the same file do they all commit, else all discard what they prepared
(``gateway.workers``). Counters are never reset: a series that appears starts at zero, one
that is no longer fed stops.

Settings that a running process cannot take on (the listeners, TLS, limits, the store, the
access log, span export, audit, the latency buckets, the worker count) keep their running
values; a reload that changes one applies the rest and names each in its log line and its
result (``restart_required``), like nginx's and Envoy's listener settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core import conventions as names
from core.configfile import ConfigError
from gateway.config import Config, GatewayConfig
from slo.spec import latency_thresholds_s

log = logging.getLogger("vitalgate.reload")

Loader = Callable[[], Config[Any]]
"""Loads and validates the configuration from its file (the composition root's loader, with
every section's checks); raises ConfigError."""


RESTART_ONLY: tuple[str, ...] = (
    "listen",
    "admin.listen",
    "tls",
    "limits",
    "trusted_proxies",
    "telemetry.access_log",
    "telemetry.store",
    "telemetry.metrics",
    "telemetry.traces.otlp_endpoint",
    "telemetry.traces.queue_size",
    "telemetry.traces.export_timeout",
    "telemetry.traces.service_name",
    "audit",
)
"""The settings of gateway.yaml a running process keeps until a restart (dotted paths): one
list, from which a reload both names what it did not apply and keeps the running values."""
BUCKETS = "latency thresholds (histogram buckets)"
"""The SLOs' latency thresholds: the request histogram's buckets, fixed at start."""


def _get(model: Any, path: str) -> Any:
    for part in path.split("."):
        model = getattr(model, part)
    return model


def _with(model: Any, path: str, value: Any) -> Any:
    """``model`` with the setting at ``path`` replaced (the models are frozen: copied)."""
    head, _, rest = path.partition(".")
    inner = _with(getattr(model, head), rest, value) if rest else value
    return model.model_copy(update={head: inner})


def restart_required(old: Config[GatewayConfig], new: Config[GatewayConfig]) -> list[str]:
    """The settings ``new`` changes that only a restart applies."""
    changed = [p for p in RESTART_ONLY if _get(old.gateway, p) != _get(new.gateway, p)]
    if latency_thresholds_s(old.slos) != latency_thresholds_s(new.slos):
        changed.append(BUCKETS)
    return changed


def effective(started: Config[GatewayConfig], new: Config[Any]) -> Config[Any]:
    """``new`` as this process runs it: the settings only a restart changes keep the values it
    started with, so that what reads the config later (a drain's timeout, the store's path)
    reads what is really in force."""
    gateway = new.gateway
    for path in RESTART_ONLY:
        gateway = _with(gateway, path, _get(started.gateway, path))
    return Config(new.path, gateway, new.slos)


def config_sha256(config: Config[Any]) -> str:
    """The SHA-256 of gateway.yaml and the slos.yaml it names, as loaded from disk now."""
    digest = hashlib.sha256()
    files = [config.path] + ([config.resolve(config.gateway.slos)] if config.gateway.slos else [])
    for path in files:
        # A file gone since it was loaded hashes as empty: the hash still changes.
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class ReloadResult:
    """One reload's outcome, as logged, counted and answered to ``vitalgate reload``."""

    ok: bool
    errors: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    sha256: str = ""
    workers: int = 0
    """With ``--workers``: how many workers took the new config (all of them, or none)."""

    def as_json(self) -> dict[str, object]:
        return {
            "result": "success" if self.ok else "failure",
            "errors": self.errors,
            "restart_required": self.restart_required,
            "sha256": self.sha256,
            "workers": self.workers,
        }


def load_candidate(load: Loader) -> tuple[Config[Any] | None, list[str]]:
    """The new config, or the problems that keep the old one in force."""
    try:
        return load(), []
    except ConfigError as exc:
        return None, [str(p) for p in exc.problems]
    except (OSError, ValueError) as exc:
        # A file that vanished or cannot be read between the signal and the load.
        return None, [str(exc)]


class ReloadCounts:
    """The reload metrics of the process that decides reloads (the gateway, or the workers'
    supervisor): ``vitalgate_config_reloads_total{result}``,
    ``vitalgate_config_last_reload_successful`` and
    ``vitalgate_config_last_reload_success_timestamp_seconds`` (as Prometheus exports its own),
    and ``vitalgate_config_info{sha256}`` of the config in force."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        self.counts = {"success": 0, "failure": 0}
        self.last_ok = True
        self.last_success_s = time.time()
        self.lock = asyncio.Lock()
        """Held for a whole reload: a second signal waits for the first to finish."""

    def record(self, result: ReloadResult) -> None:
        self.counts["success" if result.ok else "failure"] += 1
        self.last_ok = result.ok
        if result.ok:
            self.last_success_s = time.time()
            self.sha256 = result.sha256
        fields = result.as_json()
        if result.ok:
            text = f"config reloaded ({result.sha256[:12]})"
            if result.restart_required:
                text += "; these keep their running values until a restart: " + ", ".join(
                    result.restart_required
                )
            log.log(
                logging.WARNING if result.restart_required else logging.INFO,
                text,
                extra={"event": "config_reloaded", **fields},
            )
        else:
            log.error(
                "config reload failed; the running config stays in force:\n  %s",
                "\n  ".join(result.errors),
                extra={"event": "config_reload_failed", **fields},
            )

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            names.CONFIG_RELOADS.removesuffix("_total"),
            "Configuration reloads, by result (failure: the running config stayed in force).",
            labels=("result",),
        )
        for result, n in self.counts.items():
            c.add_metric([result], n)
        yield c
        yield GaugeMetricFamily(
            names.CONFIG_LAST_RELOAD_OK,
            "Whether the last configuration reload succeeded (1) or failed (0).",
            value=1 if self.last_ok else 0,
        )
        yield GaugeMetricFamily(
            names.CONFIG_LAST_RELOAD_SUCCESS,
            "When the configuration in force was loaded (start-up or the last successful reload).",
            value=self.last_success_s,
        )
        g = GaugeMetricFamily(
            names.CONFIG_INFO, "The loaded configuration (1), by its SHA-256.", labels=("sha256",)
        )
        g.add_metric([self.sha256], 1)
        yield g


class Reloadable(Protocol):
    """A proxy process's side of a reload (``gateway.server.Gateway``)."""

    async def prepare_reload(self, new: Config[GatewayConfig]) -> object: ...

    async def commit_reload(self, new: Config[GatewayConfig], routing: Any) -> None: ...

    async def discard_reload(self, routing: Any) -> None: ...


class WorkerReloads:
    """A worker's half of a reload: prepare on SIGHUP, commit or discard on SIGUSR1, each
    answered in a file of the metrics folder (``_Workers.reload`` is the other half)."""

    def __init__(self, gateway: Reloadable, metrics_dir: str, index: int, load: Loader) -> None:
        self._gateway = gateway
        self._load = load
        self._dir = metrics_dir
        self._index = index
        self._handled = 0
        self._pending: tuple[int, Config[GatewayConfig], object] | None = None

    async def prepare(self) -> None:
        gen = _read_generation(Path(self._dir) / RELOAD_GENERATION)
        if gen <= self._handled:
            log.warning(
                "worker %d: SIGHUP ignored: workers reload when their supervisor (pid %d) is sent"
                " SIGHUP or `vitalgate reload` is run",
                self._index,
                os.getppid(),
                extra={"event": "sighup_ignored", "worker": self._index},
            )
            return
        self._handled = gen
        await self._drop_pending()
        new, errors = load_candidate(self._load)
        sha = ""
        if new is not None:
            try:
                routing = await self._gateway.prepare_reload(new)
            except (OSError, ssl.SSLError, ValueError) as exc:
                errors = [f"{new.path}: {exc}"]
            else:
                sha = config_sha256(new)
                self._pending = (gen, new, routing)
        report = {"ok": not errors, "errors": errors, "sha256": sha}
        write_whole(reload_report(self._dir, self._index, gen, "prepared"), json.dumps(report))

    async def decide(self) -> None:
        gen_text, _, decision = (Path(self._dir) / RELOAD_DECISION).read_text().partition(" ")
        gen = int(gen_text)
        pending = self._pending
        if pending is None or pending[0] != gen:
            if gen == self._handled:  # this worker failed to prepare: nothing to commit
                write_whole(reload_report(self._dir, self._index, gen, "done"), "{}")
            return
        self._pending = None
        _, new, routing = pending
        if decision == "commit":
            await self._gateway.commit_reload(new, routing)
            log.info("worker %d: config reloaded", self._index, extra={"event": "worker_reloaded"})
        else:
            await self._gateway.discard_reload(routing)
        write_whole(reload_report(self._dir, self._index, gen, "done"), "{}")

    async def _drop_pending(self) -> None:
        if self._pending is not None:
            _, _, routing = self._pending
            self._pending = None
            await self._gateway.discard_reload(routing)


RELOAD_GENERATION = "reload.generation"
RELOAD_DECISION = "reload.decision"
PREPARE_TIMEOUT_S = 15.0


def reload_report(metrics_dir: str, index: int, gen: int, phase: str) -> Path:
    return Path(metrics_dir) / f"worker-{index}.reload-{gen}.{phase}"


def write_whole(path: Path, text: str) -> None:
    """Whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_generation(path: Path) -> int:
    try:
        return int(path.read_text())
    except FileNotFoundError:
        return 0
