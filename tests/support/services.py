"""Debian's server binaries as the tests run them: Prometheus, Alertmanager, VictoriaMetrics,
vmagent and vmalert, each on a loopback port, logging to a file in the test's folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.waiting import wait_ready
from vitalgate.peers import free_port


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
