"""The gateway under test: a gateway.yaml written for a test, the gateway in this process
(``running_gateway``) or as ``vitalgate serve`` in a child process (``GatewayProcess``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from gateway.server import Gateway
from tests.support.waiting import wait_ready, wait_until_async
from vitalgate.config import load_config
from vitalgate.peers import free_port

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
    await wait_until_async(lambda: writer.flushes >= target, f"{target} store batches written", timeout_s)


@asynccontextmanager
async def running_gateway(config_path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway(load_config(config_path))
    await gw.start()
    try:
        yield gw
    finally:
        if not gw.lifecycle.draining:
            await gw.stop()


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

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait for ``/readyz`` (every worker serving). A gateway that never gets there is
        stopped before the error is raised: the test holds no handle to it yet, and it must
        not outlive the test."""
        try:
            wait_ready(self.admin + "/readyz", "gateway", self.proc, timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}: {self.stderr_path.read_text()}") from exc

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop it whatever its state, for clean-up: SIGTERM, then SIGKILL for it and its
        workers if it has not exited within ``timeout_s``. (A test that checks how the gateway
        stops calls ``terminate()`` and asserts on its exit code.)"""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the supervisor takes its workers with it
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                # Stuck: SIGKILL, its workers first (they would outlive it).
                pid = self.proc.pid
                for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

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


StartGateway = Callable[..., GatewayProcess]
"""The ``gateway_process`` fixture: starts ``vitalgate serve`` (arguments as ``GatewayProcess``)
and stops it when the test ends."""
