"""The small commands around the gateway, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import slos
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.waiting import wait_until
from vitalgate.peers import free_port

SLOS = [slos.availability("fhir-availability", 99.9, window="30d")]


def test_otlpsink_receives_the_gateways_spans(tmp_path: Path, peers: BackgroundPeers) -> None:
    port = free_port()
    out = tmp_path / "traces.jsonl"
    sink = subprocess.Popen(
        [sys.executable, "-m", "vitalgate.otlpsink", "--port", str(port), "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stderr is not None
        assert "receiving OTLP/HTTP traces" in sink.stderr.readline()
        gw = GatewayProcess(gateway_config(tmp_path, peers.upstream.port, port))
        try:
            req = urllib.request.Request(gw.proxy + "/fhir/Patient/1", headers={"X-Facility-ID": "riverside"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
        finally:
            assert gw.terminate() == 0  # flushes the spans
        wait_until(lambda: out.exists() and out.read_text().count("\n") >= 2, "two spans written")
        spans = [json.loads(line) for line in out.read_text().splitlines()]
        assert {(s["kind"], s["name"]) for s in spans} == {
            ("SERVER", "GET /fhir/Patient/{id}"),
            ("CLIENT", "GET /fhir/Patient/{id}"),
        }
    finally:
        sink.terminate()
        assert sink.wait(10) == 0


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    cfg = gateway_config(tmp_path, free_port(), slos=SLOS)
    line = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 60)),
        "event": "request",
        "facility": "riverside",
        "service": "fhir",
        "http.route": "/fhir/Patient/{id}",
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "duration_ms": 3.0,
    }
    (tmp_path / "old.log").write_text(json.dumps(line) + "\n")
    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitalgate",
            "store",
            "import",
            "--config",
            str(cfg),
            "--access-log",
            str(tmp_path / "old.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes (as `| head` does, early)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vitalgate", "slo", "status", "--config", str(cfg), "--format", "json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 141
