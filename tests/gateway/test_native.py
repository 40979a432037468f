"""The request path's build: compiled by mypyc as installed, and the same gateway from source.

Every other test runs whatever build is installed (`make test` compiles it, so CI tests the
compiled modules users run). These check that the build is what it says it is, and that the
pure-Python sources, which stay the fallback (`VITALGATE_PURE_PYTHON=1`, `make pure`), still
serve and count exactly.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import native
from gateway.dataplane import memscan
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import histogram_counts, read_log

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "slo", "alerts", "dashboards", "reports", "vitalgate")


def _version(cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vitalgate", "version"],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd)} if cwd else None,
        timeout=60,
    )


def test_version_says_which_build_runs() -> None:
    info = native.build()
    assert not info.stale
    out = _version()
    assert out.returncode == 0, out.stderr
    assert f"request path {info.kind}" in out.stdout
    if os.environ.get("VITALGATE_REQUIRE_COMPILED"):
        # CI: the suite must have run against the compiled request path, every module of it.
        assert info.compiled == native.HOT_PATH + tuple(name for name, _ in native.EXTENSIONS), info
        assert "request path compiled (mypyc)" in out.stdout


@given(st.binary(max_size=300), st.binary(max_size=12), st.integers(0, 300))
@settings(max_examples=300, deadline=None)
def test_memscan_answers_as_in_does(data: bytes, needle: bytes, at: int) -> None:
    """The body search (memmem when built) finds exactly what ``in`` finds, also planted."""
    planted = data[:at] + needle + data[at:]
    for haystack in (data, planted, needle, b""):
        assert memscan.contains(haystack, needle) is (needle in haystack)
    if os.environ.get("VITALGATE_REQUIRE_COMPILED"):
        assert memscan.contains is not memscan._contains


def _source_copy(tmp: Path) -> Path:
    """The packages' .py files alone (run with this as the working directory, first on the path):
    the gateway as pure Python."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp / package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return tmp


@pytest.mark.slow
def test_a_stale_extension_is_reported(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    plane = ROOT / "gateway" / "dataplane"
    compiled = sorted(plane.glob("proxy.*.so"))
    if not compiled:
        pytest.skip("the request path is not compiled here (make pure); CI runs the compiled build")
    for extension in [*plane.glob("*.so"), *ROOT.glob("vitalgate_native__mypyc*.so")]:
        shutil.copy2(extension, src / extension.relative_to(ROOT))
    later = compiled[0].stat().st_mtime + 10
    os.utime(src / "gateway" / "dataplane" / "proxy.py", (later, later))
    out = _version(src)
    assert out.returncode == 1
    assert "STALE: gateway.dataplane.proxy changed after compiling" in out.stdout
    assert out.stdout.count("STALE") == 1 and "request path compiled (mypyc)" in out.stdout


def test_pure_python_sources_serve_and_count_exactly(tmp_path: Path, peers: BackgroundPeers) -> None:
    src = _source_copy(tmp_path / "src")
    out = _version(src)
    assert out.returncode == 0 and "request path pure Python" in out.stdout, out

    sent: Counter[tuple[str, int]] = Counter()
    cfg = gateway_config(tmp_path, peers.upstream.port, peers.sink_port)
    gw = GatewayProcess(cfg, env={**os.environ, "PYTHONPATH": str(src)}, cwd=src)
    try:
        host = gw.proxy.removeprefix("http://")
        conn = http.client.HTTPConnection(host, timeout=10)
        for i in range(60):
            facility = ("st-marys", "riverside", "lakeside")[i % 3]
            headers = {"X-Facility-ID": facility}
            if i % 7 == 0:
                headers["X-Test-Fault"] = "500"
            conn.request("GET", f"/fhir/Observation/{i}?patient=Patient/{i}", headers=headers)
            resp = conn.getresponse()
            resp.read()
            sent[(facility, resp.status)] += 1
        conn.close()
        admin = http.client.HTTPConnection(gw.admin.removeprefix("http://"), timeout=10)
        admin.request("GET", "/metrics")
        metrics = admin.getresponse().read().decode()
        admin.close()
    finally:
        assert gw.terminate() == 0
    assert "request path pure Python" in gw.stderr_path.read_text()
    by_key = {
        (facility, int(status)): int(n)
        for (facility, _service, _route, _method, status), n in histogram_counts(metrics).items()
    }
    assert by_key == dict(sent)
    assert sent[("st-marys", 500)] > 0
    logged = Counter(
        (r["facility"], r["http.response.status_code"])
        for r in read_log(tmp_path / "access.log")
        if r["event"] == "request"
    )
    assert logged == sent
    spans = [s for s in peers.sink.spans if s.kind == "SERVER"]
    assert len(spans) == sum(sent.values())
