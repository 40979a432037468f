"""``vitalgate serve --workers N``: N proxy processes on one port, one supervisor.

Each worker is a full gateway process that binds the proxy port with
SO_REUSEPORT, so the kernel spreads incoming connections over the workers and
throughput scales with cores. What they record stays exact across them:

- metrics: every process writes prometheus_client's multiprocess files into
  one folder; the supervisor's ``/metrics`` sums counters and histograms over
  all of them (and over workers that died), takes the maximum of the
  facility info gauges, and the sum over live workers of active requests;
- the store: workers add to the same SQLite rows inside write transactions
  (``StoreWriter(shared=True)``); the supervisor replays and catches up before
  any worker starts, and only worker 0 compacts;
- the access log: every process appends whole lines with single ``write``
  calls to one ``O_APPEND`` file (or pipe), so lines never interleave.

The supervisor serves the admin listener, restarts a worker that dies (after a
second), and on SIGTERM passes the signal on and waits for every worker to
drain. Histogram exemplars are not kept in multiprocess mode
(prometheus_client does not support them there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from core import conventions as names
from core.configfile import split_listen
from gateway import native
from gateway.admin.api import AdminExtension
from gateway.config import Config, GatewayConfig
from gateway.probes import PROBE_TOKEN_ENV
from gateway.reload import (
    PREPARE_TIMEOUT_S,
    RELOAD_DECISION,
    RELOAD_GENERATION,
    Loader,
    ReloadResult,
    config_sha256,
    load_candidate,
    reload_report,
    restart_required,
    write_whole,
)
from gateway.roles import METRICS_DIR_ENV, WORKER_ENV, Role, ready_file
from gateway.server import Gateway
from gateway.startup import StartupError, reason, store_failure
from slo.store import StoreLock

log = logging.getLogger("vitalgate.supervisor")

RESTART_DELAY_S = 1.0


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """The proxy's address, held (bound with SO_REUSEPORT, not listening) so it stays ours: a
    configured port 0 becomes a real one, and an address another process holds is refused here,
    naming ``listen``, before any worker starts; raises StartupError."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise StartupError("listen", address, reason(exc)) from exc
    return sock, int(sock.getsockname()[1])


def _catch_up(config: Config[GatewayConfig]) -> None:
    store_cfg = config.gateway.telemetry.store
    if not store_cfg.enabled:
        return
    from slo.store import Store, catch_up  # noqa: PLC0415

    store = Store(config.resolve(store_cfg.path))
    try:
        catch_up(store, config.slos)
    finally:
        store.close()


class RestartCounts:
    """``vitalgate_worker_restarts_total{worker}``: workers the supervisor replaced after they
    died, counted in the supervisor (a dead worker cannot count its own death)."""

    def __init__(self, count: int) -> None:
        self.restarts = dict.fromkeys(range(count), 0)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(
            names.WORKER_RESTARTS.removesuffix("_total"),
            "Workers that died and were started again, by worker index.",
            labels=("worker",),
        )
        for index, n in sorted(self.restarts.items()):
            c.add_metric([str(index)], n)
        yield c


class _Workers:
    """The worker processes of one supervisor: spawned, watched (a dead one is replaced after
    RESTART_DELAY_S), and drained."""

    def __init__(
        self, config_path: str, count: int, port: int, metrics_dir: str, stop: asyncio.Event
    ) -> None:
        self._config_path = config_path
        self._count = count
        self._port = port
        self._metrics_dir = metrics_dir
        self._stop = stop
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.counts = RestartCounts(count)
        self._generation = 0

    async def spawn(self, index: int) -> None:
        env = dict(os.environ, **{WORKER_ENV: f"{index}/{self._count}/{self._port}"})
        ready_file(self._metrics_dir, index).unlink(missing_ok=True)
        self.procs[index] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vitalgate", "serve", "--config", self._config_path, env=env
        )

    async def watch(self, index: int) -> None:
        while True:
            proc = self.procs[index]
            code = await proc.wait()
            _mark_dead(proc.pid, self._metrics_dir)
            if self._stop.is_set():
                return
            log.error(
                "worker %d (pid %d) exited with %s; restarting",
                index,
                proc.pid,
                code,
                extra={"event": "worker_exited", "worker": index, "pid": proc.pid, "exit_code": code},
            )
            await asyncio.sleep(RESTART_DELAY_S)
            if self._stop.is_set():
                return
            await self.spawn(index)
            self.counts.restarts[index] += 1

    async def all_ready(self, timeout_s: float) -> bool:
        """Whether every worker said it is ready within ``timeout_s`` (none exited meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while not all(_is_ready(self._metrics_dir, i, p.pid) for i, p in self.procs.items()):
            if time.monotonic() > deadline or any(p.returncode is not None for p in self.procs.values()):
                return False
            await asyncio.sleep(0.05)
        return True

    async def reload(self, gateway: Gateway, load: Loader) -> ReloadResult:
        """Every ready worker reloads, or none does: validated here first, then each worker
        prepares (SIGHUP) and says so in a file; all commit only when all prepared the same
        config, else all discard (SIGUSR1 with the decision in a file)."""
        async with gateway.admin.reloads.lock:
            new, errors = load_candidate(load)
            if new is None:
                result = ReloadResult(False, errors)
            else:
                result = await self._two_phase(gateway, new)
            gateway.admin.reloads.record(result)
            return result

    async def _two_phase(self, gateway: Gateway, new: Config[GatewayConfig]) -> ReloadResult:
        sha = config_sha256(new)
        self._generation += 1
        gen = self._generation
        write_whole(Path(self._metrics_dir) / RELOAD_GENERATION, str(gen))
        ready = {
            i: p
            for i, p in self.procs.items()
            if p.returncode is None and _is_ready(self._metrics_dir, i, p.pid)
        }
        signalled = _signal(ready, signal.SIGHUP)
        reports = await self._reports(gen, "prepared", signalled, PREPARE_TIMEOUT_S)
        problems: list[str] = []
        for i in sorted(signalled):
            report = reports.get(i)
            if report is None:
                problems.append(f"worker {i} did not prepare within {PREPARE_TIMEOUT_S:.0f} s")
            elif not report["ok"]:
                problems.extend(f"worker {i}: {e}" for e in report["errors"])
            elif report["sha256"] != sha:
                problems.append(f"worker {i} read another version of the files (changed during the reload)")
        decision = "abort" if problems else "commit"
        write_whole(Path(self._metrics_dir) / RELOAD_DECISION, f"{gen} {decision}")
        _signal({i: self.procs[i] for i in signalled}, signal.SIGUSR1)
        # Confirmations from those that prepared (a worker that did not answer may be stalled:
        # waiting for it again would only delay the answer).
        prepared = [i for i in signalled if i in reports]
        done = await self._reports(gen, "done", prepared, PREPARE_TIMEOUT_S)
        if problems:
            return ReloadResult(False, problems, sha256=sha)
        missing = sorted(set(signalled) - set(done))
        if missing:
            # Told to commit but not heard from since (it may have died: its replacement loads
            # the new files at start). The reload stands; the gap is said.
            log.error(
                "workers %s did not confirm the reload", missing, extra={"event": "config_reload_unconfirmed"}
            )
        await gateway.commit_reload(new, None)
        return ReloadResult(True, [], restart_required(gateway.started_config, new), sha, workers=len(done))

    async def _reports(
        self, gen: int, phase: str, workers: Sequence[int], timeout_s: float
    ) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        found: dict[int, dict[str, Any]] = {}
        while True:
            for i in workers:
                if i not in found:
                    path = reload_report(self._metrics_dir, i, gen, phase)
                    if path.exists():
                        found[i] = json.loads(path.read_text())
                        path.unlink()
            if len(found) == len(workers) or time.monotonic() > deadline:
                return found
            if any(self.procs[i].returncode is not None for i in workers if i not in found):
                return found  # a worker died: it will not answer
            await asyncio.sleep(0.02)

    async def drain(self, grace_s: float) -> list[int]:
        """SIGTERM to every worker, then their exit codes (killed after ``grace_s``)."""
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # it exited since: nothing to signal
                    proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs.values():
            try:
                codes.append(await asyncio.wait_for(proc.wait(), grace_s))
            except TimeoutError:
                log.error(
                    "worker pid %d did not drain within %g s; killed (what it held is lost)",
                    proc.pid,
                    grace_s,
                    extra={"event": "worker_killed", "pid": proc.pid},
                )
                proc.kill()
                codes.append(await proc.wait())
        return codes


async def _lock_and_catch_up(config: Config[GatewayConfig]) -> StoreLock | None:
    """The store's lock (held while the workers run: they share the file, no other gateway may),
    after replaying and catching up; raises if either fails."""
    lock: StoreLock | None = None
    try:
        if config.gateway.telemetry.store.enabled:
            lock = StoreLock(config.resolve(config.gateway.telemetry.store.path))
        await asyncio.get_running_loop().run_in_executor(None, _catch_up, config)
    except BaseException:
        # Not handled here: the lock is let go whatever stopped the catch-up (cancellation
        # included), and the error goes on to the caller, which reports it.
        if lock is not None:
            lock.release()
        raise
    return lock


async def supervise(
    config: Config[GatewayConfig],
    config_path: str,
    count: int,
    admin_extensions: Sequence[AdminExtension] = (),
    load: Loader | None = None,
) -> int:
    """Run ``count`` workers and the admin listener until SIGTERM or SIGINT; returns the exit code."""
    metrics_dir = os.environ[METRICS_DIR_ENV]
    # One probe token for all workers: worker 0 probes, and any worker may take its connection.
    os.environ.setdefault(PROBE_TOKEN_ENV, secrets.token_hex(16))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = split_listen(config.gateway.listen)
    try:
        reserved, port = _reserve_port(host, port)
    except StartupError as exc:
        log.error("cannot start: %s", exc, extra={"event": "start_failed", "setting": exc.setting})
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1
    try:
        lock = await _lock_and_catch_up(config)
    except Exception as exc:
        # Whatever the store did, the gateway does not start: logged with its traceback as a
        # start_failed event, and the process exits 1 (no metrics exist yet to count it in).
        failure = store_failure(str(config.resolve(config.gateway.telemetry.store.path)), exc)
        log.error(
            "cannot start: %s",
            failure,
            exc_info=exc,
            extra={"event": "start_failed", "setting": failure.setting},
        )
        reserved.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1
    gateway = Gateway(
        config, admin_extensions, Role("supervisor", count=count, port=port, metrics_dir=metrics_dir)
    )
    try:
        await gateway.start()
    except StartupError as exc:
        log.error("cannot start: %s", exc, extra={"event": "start_failed", "setting": exc.setting})
        if lock is not None:
            lock.release()
        reserved.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1
    gateway.proxy_port = port
    workers = _Workers(config_path, count, port, metrics_dir, stop)
    gateway.admin.add_collector(workers.counts)
    for i in range(count):
        await workers.spawn(i)
    if not await workers.all_ready(60.0):
        log.error("cannot start: a worker did not come up", extra={"event": "start_failed"})
        stop.set()
    watchers = [loop.create_task(workers.watch(i)) for i in range(count)]
    if load is not None:
        _hook_reloads(workers, gateway, load)
    if not stop.is_set():
        gateway.lifecycle.ready = True
        _announce(config, f"{host}:{port}", count, gateway.admin_port)
    await stop.wait()
    t0 = time.monotonic()
    log.info("draining", extra={"event": "draining"})
    gateway.lifecycle.draining = True
    codes = await workers.drain(config.gateway.limits.shutdown_timeout + 60)
    for w in watchers:
        w.cancel()
    await gateway.stop()
    if lock is not None:
        lock.release()
    reserved.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    drain_s = round(time.monotonic() - t0, 3)
    log.info("stopped after %.2fs drain", drain_s, extra={"event": "stopped", "drain_s": drain_s})
    return 0 if all(c == 0 for c in codes) and gateway.lifecycle.ready else 1


def _hook_reloads(workers: _Workers, gateway: Gateway, load: Loader) -> None:
    """SIGHUP and the admin API's reload run every worker's reload. The running reloads are
    held in a set the signal handler keeps (a task nothing refers to may be collected)."""
    loop = asyncio.get_running_loop()
    reloading: set[asyncio.Task[ReloadResult]] = set()

    def on_sighup() -> None:
        task = loop.create_task(workers.reload(gateway, load))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    gateway.admin.reload_hook = lambda: workers.reload(gateway, load)


def _announce(config: Config[GatewayConfig], proxy: str, count: int, admin_port: int) -> None:
    admin = f"{config.gateway.admin.listen.rsplit(':', 1)[0]}:{admin_port}"
    build = native.build().describe()
    fields = {"event": "listening", "proxy": proxy, "workers": count, "admin": admin, "build": build}
    text = "proxy on %s (%d workers), admin (metrics) on %s, %s"
    log.info(text, proxy, count, admin, build, extra=fields)


def _signal(procs: dict[int, asyncio.subprocess.Process], sig: signal.Signals) -> list[int]:
    """The workers that were sent ``sig`` (one that exited since is not)."""
    sent = []
    for i, proc in procs.items():
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            continue  # it exited since: its replacement loads the files at start
        sent.append(i)
    return sent


def _is_ready(metrics_dir: str, index: int, pid: int) -> bool:
    try:
        return ready_file(metrics_dir, index).read_text() == str(pid)
    except OSError:
        return False


def _mark_dead(pid: int, metrics_dir: str) -> None:
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


def run_workers(
    config: Config[GatewayConfig],
    config_path: str,
    count: int,
    admin_extensions: Sequence[AdminExtension] = (),
    load: Loader | None = None,
) -> int:
    """Run ``count`` worker processes under a supervisor."""
    main = supervise(config, config_path, count, admin_extensions, load)
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(main)
    return int(uvloop.run(main))
