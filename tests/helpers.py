"""Test peers: a real upstream server, a gateway on real sockets, and readers for its outputs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.dataplane.outcome import Outcome
from gateway.dataplane.spans import NonRecordingSpan, SpanContext
from gateway.server import Gateway
from vitalgate.config import load_config
from vitalgate.otlpsink import OtlpSink
from vitalgate.peers import UpstreamPeer, free_port, reset


class Upstream(UpstreamPeer):
    """A clinical upstream for tests. ``X-Test-Fault`` picks a misbehaviour:
    ``500``, ``reset`` (close without answering), ``slow`` (sleep past the gateway's
    timeout), ``midbody`` (headers, part of the body, then close), ``status:N``."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        fault = request.headers.get("X-Test-Fault", "")
        size = 0
        if request.can_read_body:
            async for chunk in request.content.iter_any():
                size += len(chunk)
        self.seen.append(
            {
                "method": request.method,
                "path_qs": request.path_qs,
                "headers": dict(request.headers),
                "body_size": size,
            }
        )
        if fault == "500":
            return web.json_response({"resourceType": "OperationOutcome"}, status=500)
        if fault == "reset":
            return reset(request)
        if fault == "slow":
            await asyncio.sleep(float(request.headers.get("X-Test-Sleep", "5")))
        if fault.startswith("status:"):
            return web.Response(status=int(fault.split(":")[1]))
        if fault == "redirect":
            return web.Response(status=302, headers={"Location": "/fhir/metadata"})
        if fault == "gzip":
            return web.Response(body=b"\x1f\x8b" + b"\x00" * 20, headers={"Content-Encoding": "gzip"})
        if fault == "midbody":
            resp = web.StreamResponse(headers={"Content-Length": "100000"})
            await resp.prepare(request)
            await resp.write(b"x" * 1000)
            assert request.transport is not None
            request.transport.close()
            return resp
        if "X-Test-Stream-Bytes" in request.headers:
            n = int(request.headers["X-Test-Stream-Bytes"])
            resp = web.StreamResponse(headers={"Content-Type": "application/fhir+json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            block = b"0" * 65536
            sent = 0
            while sent < n:
                part = block[: min(len(block), n - sent)]
                await resp.write(part)
                sent += len(part)
            await resp.write_eof()
            return resp
        if fault == "slow":
            return web.json_response({"slow": True})
        if fault == "searchset":  # two patients, and an Observation about a third
            return web.json_response(SEARCHSET, content_type="application/fhir+json")
        return web.json_response(
            {"resourceType": "Bundle", "received_bytes": size, "path": request.path},
            headers={"X-Upstream": "yes", "Set-Cookie": "a=1"},
        )


SEARCHSET = {
    "resourceType": "Bundle",
    "type": "searchset",
    "entry": [
        {"resource": {"resourceType": "Patient", "id": "p-smith-1", "name": [{"family": "Smithfield"}]}},
        {"resource": {"resourceType": "Patient", "id": "p-jones-2", "name": [{"family": "Jonesworth"}]}},
        {
            "resource": {
                "resourceType": "Observation",
                "id": "o1",
                "subject": {"reference": "Patient/p-lee-3"},
            }
        },
    ],
}
"""A FHIR search result naming three patients (``X-Test-Fault: searchset``)."""


async def start_sink(sink: OtlpSink) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(sink.app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


FACILITIES = {
    "st-marys": {"name": "St Mary's", "timezone": "America/Chicago", "sla": 99.9},
    "riverside": {"name": "Riverside", "timezone": "America/New_York", "sla": 99.5},
    "lakeside": {"name": "Lakeside", "timezone": "America/Denver", "sla": 99.5},
}


def gateway_config(
    tmp: Path,
    upstream_port: int,
    otlp_port: int | None = None,
    *,
    timeout_total: str = "2s",
    extra: dict[str, Any] | None = None,
    slos: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a gateway.yaml (and slos.yaml) for tests into ``tmp``; returns its path."""
    cfg: dict[str, Any] = {
        "version": 1,
        "listen": f"127.0.0.1:{free_port()}",
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "upstreams": {
            "fhir": {
                "url": f"http://127.0.0.1:{upstream_port}",
                "timeout": {"connect": "1s", "total": timeout_total},
            },
            "scheduling": {"url": f"http://127.0.0.1:{upstream_port}"},
        },
        "routes": [
            {"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir"},
            {
                "prefix": "/scheduling/",
                "upstream": "scheduling",
                "templates": ["/scheduling/appointments/{id}"],
            },
        ],
        "facilities": {
            "from": [{"header": "X-Facility-ID"}, {"jwt_claim": "facility"}],
            "known": FACILITIES,
        },
        "telemetry": {
            "access_log": {"path": "access.log"},
            "traces": {"otlp_endpoint": f"http://127.0.0.1:{otlp_port}", "sample_ratio": 1.0}
            if otlp_port
            else {},
            "store": {"path": "store.db"},
        },
        "limits": {"shutdown_timeout": "10s"},
    }
    if slos is not None:
        cfg["slos"] = "slos.yaml"
        (tmp / "slos.yaml").write_text(yaml.safe_dump({"version": 1, "slos": slos}))
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


async def flushed(gw: Gateway, timeout_s: float = 10.0) -> None:
    """Hand the store's writer what the recorder holds and wait until it is written: the counts
    of every request answered before the call are then in the store."""
    assert gw.dataplane is not None and gw.dataplane.store_writer is not None
    writer = gw.dataplane.store_writer
    writer.flush()
    target = writer.handed_over
    deadline = time.monotonic() + timeout_s
    while writer.flushes < target:
        assert time.monotonic() < deadline, f"{writer.flushes} of {target} batches written"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running_gateway(config_path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(load_config(config_path))
    await gw.start()
    try:
        yield gw
    finally:
        if not gw.lifecycle.draining:
            await gw.stop()


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def histogram_counts(metrics_text: str) -> dict[tuple[str, ...], float]:
    """``_count`` of the request histogram per (facility, service, route, method, status)."""
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "http_server_request_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_count"):
                    key = tuple(
                        s.labels[k]
                        for k in (
                            "facility",
                            "service",
                            "http_route",
                            "http_request_method",
                            "http_response_status_code",
                        )
                    )
                    out[key] = s.value
    return out


def counter_value(metrics_text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


class BackgroundPeers:
    """A test upstream and an OTLP sink on their own event loop thread, for synchronous tests."""

    def __init__(self) -> None:
        self.upstream = Upstream()
        self.sink = OtlpSink(keep_raw=True)
        self.sink_port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._sink_runner: web.AppRunner | None = None

    def __enter__(self) -> BackgroundPeers:
        self._thread.start()

        async def start() -> None:
            await self.upstream.start()
            self._sink_runner, self.sink_port = await start_sink(self.sink)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the peers' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self.upstream.stop()
            if self._sink_runner is not None:
                await self._sink_runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class GatewayProcess:
    """``vitalgate serve`` as a child process, as a user runs it."""

    def __init__(
        self,
        config_path: Path,
        workers: int = 1,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        open_files: int | None = None,
        file_size: int | None = None,
    ) -> None:
        """``open_files``: the child's RLIMIT_NOFILE (as ``ulimit -n`` would set it);
        ``file_size``: its RLIMIT_FSIZE in bytes (a write past it fails with EFBIG)."""
        cfg = yaml.safe_load(config_path.read_text())
        self.proxy = "http://" + cfg["listen"]
        self.admin = "http://" + cfg["admin"]["listen"]
        self.stderr_path = config_path.parent / "gateway.stderr"
        self._stderr = self.stderr_path.open("w")
        limits = [f"--nofile={open_files}"] if open_files is not None else []
        limits += [f"--fsize={file_size}"] if file_size is not None else []
        limit = ["prlimit", *limits, "--"] if limits else []
        self.proc = subprocess.Popen(
            [
                *limit,
                sys.executable,
                "-m",
                "vitalgate",
                "serve",
                "--config",
                str(config_path),
                "--workers",
                str(workers),
            ],
            stdout=self._stderr,
            stderr=self._stderr,
            env=env,
            cwd=cwd,
        )
        self.wait_ready()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The gateway's diagnostics (JSON lines on stderr) of one ``event``, in order."""
        lines = self.stderr_path.read_text().splitlines()
        return [e for e in (json.loads(line) for line in lines) if e.get("event") == name]

    def bound_proxy(self) -> str:
        """The proxy's URL from the ``listening`` event (a configured port 0 is known only then)."""
        (listening,) = self.events("listening")
        return "http://" + str(listening["proxy"])

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        try:
            wait_ready(self.admin + "/readyz", "gateway", self.proc, timeout_s)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.stderr_path.read_text()}") from exc

    def rss_kb(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def terminate(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self._stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def require_binary(name: str) -> str:
    """Path of a binary a test needs (prometheus, promtool, amtool, alertmanager, nginx, chromium,
    pdftotext). Missing: skip, or fail when VITALGATE_REQUIRE_PROMETHEUS is set (CI sets it, so
    every test that needs one of them runs there; tests/conftest.py also fails any other skip)."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        if os.environ.get("VITALGATE_REQUIRE_PROMETHEUS"):
            pytest.fail(f"{name} is required (VITALGATE_REQUIRE_PROMETHEUS=1) but not installed")
        pytest.skip(f"{name} not installed (make test installs it)")
    return path


def wait_ready(url: str, what: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what} not ready at {url}")


class ServiceProcess:
    """A server binary from Debian's packages, on a loopback port, logging to a file."""

    def __init__(self, name: str, cmd: list[str], log: Path, port: int, ready_path: str = "/-/ready") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        wait_ready(self.url + ready_path, name, self.proc)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query of the Prometheus API (Prometheus, VictoriaMetrics)."""
        with urllib.request.urlopen(
            f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=10
        ) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class PrometheusProcess(ServiceProcess):
    """A real Prometheus scraping the given targets every second."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        extra_args: list[str] | None = None,
        rule_files: list[Path] | None = None,
        alertmanager: str | None = None,
    ) -> None:
        cfg: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "vitalgate", "static_configs": [{"targets": targets}]}],
        }
        if rule_files:
            cfg["rule_files"] = [str(p) for p in rule_files]
        if alertmanager:
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        port = free_port()
        cmd = [
            require_binary("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            *(extra_args or []),
        ]
        super().__init__("prometheus", cmd, workdir / "prometheus.log", port)


def _scrape_config(path: Path, targets: list[str]) -> Path:
    """A Prometheus-style scrape config for VictoriaMetrics' own scraper or vmagent: the
    targets every second."""
    cfg = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "vitalgate", "static_configs": [{"targets": targets}]}],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class VictoriaMetricsProcess(ServiceProcess):
    """A real single-node VictoriaMetrics (Debian's ``victoria-metrics``) scraping the given
    targets every second itself, queried through its Prometheus API."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        port = free_port()
        cmd = [
            require_binary("victoria-metrics"),
            f"-promscrape.config={_scrape_config(workdir / 'vmscrape.yml', targets)}",
            f"-storageDataPath={workdir / 'vmdata'}",
            f"-httpListenAddr=127.0.0.1:{port}",
            # Samples are queryable at once (the default hides the last 30 s), and no response
            # is answered from a cache of an earlier, shorter history.
            "-search.latencyOffset=0s",
            "-search.disableCache",
        ]
        super().__init__("victoria-metrics", cmd, workdir / "victoria-metrics.log", port, "/health")


class VmagentProcess(ServiceProcess):
    """Debian's ``vmagent`` scraping the given targets every second and sending every sample to
    a VictoriaMetrics by remote write (as Prometheus' remote_write would)."""

    def __init__(self, workdir: Path, targets: list[str], remote_write: str) -> None:
        port = free_port()
        cmd = [
            require_binary("vmagent"),
            f"-promscrape.config={_scrape_config(workdir / 'vmagent.yml', targets)}",
            f"-remoteWrite.url={remote_write}/api/v1/write",
            f"-remoteWrite.tmpDataPath={workdir / 'vmagent-queue'}",
            "-remoteWrite.flushInterval=200ms",
            f"-httpListenAddr=127.0.0.1:{port}",
        ]
        super().__init__("vmagent", cmd, workdir / "vmagent.log", port, "/health")


class VmalertProcess(ServiceProcess):
    """Debian's ``vmalert`` evaluating rule files against a VictoriaMetrics, writing recording
    rules and alert state back to it and notifying an Alertmanager."""

    def __init__(
        self,
        workdir: Path,
        rule_files: list[Path],
        datasource: str,
        alertmanager: str,
        lookback_s: float = 3.0,
    ) -> None:
        port = free_port()
        cmd = [
            require_binary("vmalert"),
            *(f"-rule={p}" for p in rule_files),
            f"-datasource.url={datasource}",
            f"-remoteWrite.url={datasource}",
            f"-notifier.url=http://{alertmanager}",
            "-evaluationInterval=1s",
            # Query a few seconds in the past: VictoriaMetrics makes a new series searchable a
            # moment after it ingests it (longer on a loaded machine), and a tile evaluated before
            # then misses the series' birth (the default -search.latencyOffset=30s, turned off
            # here, covers the same delay).
            f"-datasource.lookback={lookback_s:g}s",
            f"-httpListenAddr=127.0.0.1:{port}",
        ]
        super().__init__("vmalert", cmd, workdir / "vmalert.log", port, "/health")

    def groups(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/rules", timeout=10) as r:
            body = json.loads(r.read())
        groups: list[dict[str, Any]] = body["data"]["groups"]
        return groups


class AlertmanagerProcess(ServiceProcess):
    """A real Alertmanager (Debian's prometheus-alertmanager), clustering off."""

    def __init__(self, workdir: Path, config: Path) -> None:
        port = free_port()
        cmd = [
            shutil.which("prometheus-alertmanager") or require_binary("alertmanager"),
            f"--config.file={config}",
            f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ]
        super().__init__("alertmanager", cmd, workdir / "alertmanager.log", port)

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as r:
            result: list[dict[str, Any]] = json.loads(r.read())
        return result


def firing(prom: ServiceProcess, name: str, **labels: str) -> list[dict[str, str]]:
    """The label sets of alert ``name`` firing now (Prometheus' ALERTS series)."""
    sel = "".join(f', {k}="{v}"' for k, v in labels.items())
    return [a["metric"] for a in prom.query(f'ALERTS{{alertname="{name}", alertstate="firing"{sel}}}')]


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Wait for ``check`` to hold (polled every 50 ms); fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)


def live_total(admin: str, slo: str, facility: str) -> int:
    """The requests a running gateway's store holds of ``slo`` for ``facility`` (``*``: all)."""
    with urllib.request.urlopen(admin + "/api/v1/slo", timeout=5) as r:
        rows = json.loads(r.read())["slos"]
    return int(next((r["total"] for r in rows if r["slo"] == slo and r["facility"] == facility), 0))


def fetch(url: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> int:
    """GET through real HTTP; the status, whether 2xx or not (the body is read and dropped)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)


def slo_status(config: Path, *extra: str) -> dict[tuple[str, str], dict[str, Any]]:
    """`vitalgate slo status --format json` as a user runs it, keyed by (slo, facility)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitalgate",
            "slo",
            "status",
            "--config",
            str(config),
            "--format",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return {(r["slo"], r["facility"]): r for r in json.loads(proc.stdout)["slos"]}


class Webhook:
    """Collects Alertmanager webhook notifications, on the BackgroundPeers loop."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{receiver}", self._post)
        return app

    async def _post(self, request: web.Request) -> web.Response:
        self.received.append((request.match_info["receiver"], await request.json()))
        return web.Response(text="ok")

    def alerts(self) -> list[tuple[str, dict[str, str]]]:
        """(receiver path, labels) of every firing alert delivered."""
        return [
            (r, a["labels"])
            for r, body in list(self.received)
            for a in body["alerts"]
            if a["status"] == "firing"
        ]


def vitalgate(
    *args: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `vitalgate` command as a user would; text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "vitalgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env=env,
    )


def make_outcome(
    facility: str = "st-marys",
    service: str = "fhir",
    route: str = "/fhir/Patient/{id}",
    method: str = "GET",
    status: int = 200,
    duration_s: float = 0.01,
    *,
    started: float = 1_800_000_000.0,
    error_type: str | None = None,
    upstream_ms: float | None = None,
    trace_id: str = "ab" * 16,
    span_id: str = "cd" * 8,
    sampled: bool = False,
    key_route: str | None = None,
) -> Outcome:
    """A finished request as the proxy hands it to its sinks (``key_route``: its route after
    the cardinality budget, when folded)."""
    ctx = SpanContext(int(trace_id, 16), int(span_id, 16), sampled, 0x01 if sampled else 0x00)
    key = (facility, service, route if key_route is None else key_route, method, status)
    return Outcome(
        started,
        duration_s,
        facility,
        service,
        route,
        method,
        status,
        error_type,
        upstream_ms,
        key,
        NonRecordingSpan(ctx),
    )


def assert_period_gauges(metrics_text: str) -> None:
    """Each configured facility's current local month and quarter, once, valued with the month's
    start (what the rules' calendar windows read)."""
    samples = [
        s
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
        if s.name == "vitalgate_facility_period_start_seconds"
    ]
    assert {s.labels["facility"] for s in samples} == set(FACILITIES)
    for s in samples:
        local = datetime.now(ZoneInfo(str(FACILITIES[s.labels["facility"]]["timezone"])))
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        assert s.labels["month"] == f"{local.year}-{local.month:02d}"
        assert s.labels["quarter"] == f"{local.year}-Q{(local.month - 1) // 3 + 1}"
        assert s.value == start.timestamp()


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        body: bytes = r.read()
    return body.decode()
