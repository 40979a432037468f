"""The gateway as a process: SIGTERM drain, a collector that is down, bounded memory, TLS."""

import http.client
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import slos
from tests.support.cli import slo_status
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import counter_value, read_log
from tests.support.waiting import wait_ready, wait_until


def _get(
    url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30, context=context) as r:
        return int(r.status), r.read()


def test_sigterm_drains_in_flight_requests(tmp_path: Path, peers: BackgroundPeers) -> None:
    gw = GatewayProcess(gateway_config(tmp_path, peers.upstream.port, peers.sink_port, timeout_total="10s"))
    results: list[Any] = []

    def slow() -> None:
        results.append(_get(gw.proxy + "/fhir/Patient/1", {"X-Test-Fault": "slow", "X-Test-Sleep": "1.5"}))

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(lambda: bool(peers.upstream.seen), "the request in flight at the upstream")
    gw.proc.send_signal(15)
    wait_until(lambda: '"draining"' in gw.stderr_path.read_text(), "the gateway draining")
    with pytest.raises(OSError):  # no longer accepting
        _get(gw.proxy + "/fhir/Patient/2")
    thread.join(10)
    assert gw.terminate() == 0
    assert results == [(200, b'{"slow": true}')]
    log = read_log(tmp_path / "access.log")
    assert [r["http.response.status_code"] for r in log] == [200]
    server_spans = [s for s in peers.sink.spans if s.kind == "SERVER"]
    assert [s.trace_id for s in server_spans] == [log[0]["trace_id"]]  # flushed before exit
    # The gateway's own diagnostics: one JSON object per line, each with its level.
    events = [json.loads(line) for line in gw.stderr_path.read_text().splitlines()]
    assert all({"timestamp", "level", "logger", "message"} <= e.keys() for e in events), events
    said = [(e["level"], e.get("event")) for e in events]
    assert said[:1] == [("info", "listening")] and ("info", "draining") in said
    stopped = next(e for e in events if e.get("event") == "stopped")
    assert stopped["drain_s"] >= 1.0  # the slow request finished first


def test_collector_down_costs_only_dropped_spans(tmp_path: Path, peers: BackgroundPeers) -> None:
    closed_port = 1  # nothing listens there
    cfg = gateway_config(tmp_path, peers.upstream.port, closed_port)
    text = cfg.read_text().replace("sample_ratio: 1.0", "sample_ratio: 1.0\n    export_timeout: 500ms")
    cfg.write_text(text)
    gw = GatewayProcess(cfg)
    try:
        for i in range(50):
            assert _get(gw.proxy + f"/fhir/Patient/{i}")[0] == 200

        def dropped() -> float:
            return counter_value(_metrics(gw), "vitalgate_telemetry_dropped_total", signal="span")

        wait_until(lambda: dropped() >= 100, "the spans counted as dropped")
        assert dropped() == 100  # 50 SERVER + 50 CLIENT spans, each counted once
        metrics = _metrics(gw)
        assert counter_value(metrics, "vitalgate_telemetry_dropped_total", signal="log") == 0
        # Each failed batch by its reason: nothing listens, so the connection is refused.
        failures = counter_value(
            metrics, "vitalgate_span_export_failures_total", reason="upstream_connect_error"
        )
        assert 1 <= failures <= 100
        assert counter_value(metrics, "vitalgate_span_export_failures_total") == failures
        # (the depth gauge is read off the queue once a second: it may still show a batch)
        wait_until(
            lambda: counter_value(_metrics(gw), "vitalgate_telemetry_queue_depth", signal="span") == 0,
            "the span queue's depth gauge back to 0",
        )
    finally:
        assert gw.terminate() == 0
    assert len(read_log(tmp_path / "access.log")) == 50


def test_large_bodies_stream_with_bounded_memory(tmp_path: Path, peers: BackgroundPeers) -> None:
    size = 50 * 1024 * 1024
    gw = GatewayProcess(gateway_config(tmp_path, peers.upstream.port, timeout_total="60s"))
    try:
        _get(gw.proxy + "/fhir/metadata")  # warm up
        baseline_kb = gw.rss_kb("VmRSS")
        # Upload 50 MB in chunks (chunked transfer encoding), as a client streaming a bundle.
        conn = http.client.HTTPConnection(gw.proxy.removeprefix("http://"), timeout=60)
        block = b"x" * (1 << 20)
        conn.request(
            "POST",
            "/fhir/Binary",
            body=iter([block] * 50),
            encode_chunked=True,
            headers={"Transfer-Encoding": "chunked"},
        )
        resp = conn.getresponse()
        assert json.loads(resp.read())["received_bytes"] == size
        conn.close()
        # Download 50 MB.
        status, body = _get(gw.proxy + "/fhir/Binary/1", {"X-Test-Stream-Bytes": str(size)})
        assert status == 200 and len(body) == size
        del body
        peak_kb = gw.rss_kb("VmHWM")
    finally:
        assert gw.terminate() == 0
    # The gateway never held a body: its peak stayed far below one body's size.
    print(f"gateway RSS {baseline_kb} kB before, peak {peak_kb} kB")
    assert peak_kb - baseline_kb < 20 * 1024, (baseline_kb, peak_kb)
    assert peers.upstream.seen[1]["body_size"] == size


def _make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.slow
def test_tls_listener_and_verified_https_upstream(tmp_path: Path) -> None:
    import asyncio

    from aiohttp import web

    from tests.support.peers import Upstream
    from vitalgate.peers import free_port

    cert, key = _make_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    upstream = Upstream()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = free_port()

    async def start() -> web.AppRunner:
        runner = web.AppRunner(upstream.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        cfg = gateway_config(
            tmp_path,
            port,
            extra={
                "tls": {"cert_file": "cert.pem", "key_file": "key.pem"},
                "upstreams": {
                    "fhir": {"url": f"https://127.0.0.1:{port}", "ca_file": "cert.pem"},
                    "scheduling": {"url": f"https://127.0.0.1:{port}"},  # system CAs: must refuse
                },
            },
        )
        gw = GatewayProcess(cfg)
        try:
            proxy = gw.proxy.replace("http://", "https://")
            client_ctx = ssl.create_default_context(cafile=str(cert))
            status, body = _get(proxy + "/fhir/Patient/1", context=client_ctx)
            assert status == 200
            assert json.loads(body)["path"] == "/fhir/Patient/1"
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(proxy + "/scheduling/appointments/1", context=client_ctx)
            assert err.value.code == 502
            assert json.loads(err.value.read())["error"] == "upstream_tls_error"
            # The certificate's end, as the upstream presented it (2 days: the self-alert's
            # 14-day threshold would fire on it).
            end = subprocess.run(
                ["openssl", "x509", "-enddate", "-noout", "-in", str(cert)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            not_after = ssl.cert_time_to_seconds(end.removeprefix("notAfter="))
            expiry = "vitalgate_upstream_certificate_expiry_timestamp_seconds"
            wait_until(
                lambda: counter_value(_metrics(gw), expiry, upstream="fhir") == not_after,
                "the certificate's expiry exported",
            )
            assert 0 < not_after - time.time() < 2 * 86400 + 60
            assert counter_value(_metrics(gw), expiry, upstream="scheduling") == 0  # never verified
        finally:
            assert gw.terminate() == 0
        log = read_log(tmp_path / "access.log")
        assert [(r["http.response.status_code"], r.get("error.type")) for r in log] == [
            (200, None),
            (502, "upstream_tls_error"),
        ]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def test_a_request_cut_at_the_shutdown_timeout_is_recorded(tmp_path: Path, peers: BackgroundPeers) -> None:
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        timeout_total="20s",
        slos=slos.AVAIL,
        extra={"limits": {"shutdown_timeout": "500ms"}},
    )
    gw = GatewayProcess(cfg)
    got: list[Any] = []

    def slow() -> None:
        try:
            got.append(_get(gw.proxy + "/fhir/Patient/1", {"X-Test-Fault": "slow", "X-Test-Sleep": "4"}))
        except Exception as exc:  # the cut connection: what the client sees
            got.append(exc)

    t = threading.Thread(target=slow)
    t.start()
    wait_until(lambda: bool(peers.upstream.seen), "the request with the upstream")
    assert gw.terminate() == 0
    t.join(10)
    assert len(got) == 1 and not isinstance(got[0], tuple)  # cut, never answered 200
    (line,) = read_log(tmp_path / "access.log")
    assert (line["http.response.status_code"], line["error.type"], line["service"]) == (
        503,
        "shutdown",
        "fhir",
    )
    rows = slo_status(cfg)
    assert (rows[("avail", "*")]["total"], rows[("avail", "*")]["good"]) == (1, 0)  # ours: bad


def test_log_lines_a_stalled_stdout_never_took_are_counted(tmp_path: Path, peers: BackgroundPeers) -> None:
    """stdout is a pipe nobody reads until the gateway exits: every request is either in the
    pipe or in the count of lines lost that the gateway prints at shutdown."""
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        extra={
            "telemetry": {"access_log": {"path": "-"}, "store": {"enabled": False}},
            "limits": {"shutdown_timeout": "1s"},
        },
    )
    settings = yaml.safe_load(cfg.read_text())
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitalgate", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr").open("w"),
    )
    try:
        wait_ready(f"http://{settings['admin']['listen']}/readyz", "gateway", proc)
        sent = 1500  # some 400 KB of lines: several times what a pipe holds
        for _ in range(sent):
            assert _get(f"http://{settings['listen']}/fhir/Patient/1")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        # Draining, the log's writer stuck on the full pipe gives the lines up; read only
        # once the gateway is gone (a read before would let the stuck write finish after
        # its lines were counted lost).
        proc.wait(30)
        written = proc.stdout.read().decode().count('"event":"request"')
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (tmp_path / "stderr").read_text()
    match = re.search(r"access log: (\d+) lines not written at shutdown", stderr)
    assert match is not None, stderr
    assert written + int(match.group(1)) == sent, (written, match.group(1))


def test_a_full_disk_never_leaves_a_torn_log_line(tmp_path: Path, peers: BackgroundPeers) -> None:
    """The log file may grow by 100 bytes more (RLIMIT_FSIZE on the running gateway): the next
    write is cut short and the rest fails, as on a full disk. The part written is cut off
    again, the lines are counted as dropped, and after the limit is lifted the log goes on."""
    cfg = gateway_config(tmp_path, peers.upstream.port, extra={"telemetry": {"store": {"enabled": False}}})
    gw = GatewayProcess(cfg)
    log_path = tmp_path / "access.log"
    try:
        for _ in range(5):
            assert _get(gw.proxy + "/fhir/Patient/1")[0] == 200
        wait_until(lambda: _log_and_dropped(gw, log_path) == 5, "5 lines written")
        size = log_path.stat().st_size
        subprocess.run(["prlimit", f"--pid={gw.proc.pid}", f"--fsize={size + 100}:unlimited"], check=True)
        for _ in range(3):
            assert _get(gw.proxy + "/fhir/Patient/1")[0] == 200  # the proxy is unaffected
        wait_until(lambda: _log_and_dropped(gw, log_path) == 8, "3 more lines written or dropped")
        subprocess.run(["prlimit", f"--pid={gw.proc.pid}", "--fsize=unlimited:unlimited"], check=True)
        for _ in range(4):
            assert _get(gw.proxy + "/fhir/Patient/1")[0] == 200
        wait_until(lambda: _log_and_dropped(gw, log_path) == 12, "4 more lines written")
        metrics = _metrics(gw)
        dropped = counter_value(metrics, "vitalgate_telemetry_dropped_total", signal="log")
        write_errors = counter_value(metrics, "vitalgate_access_log_write_errors_total")
    finally:
        assert gw.terminate() == 0
    assert 1 <= write_errors <= dropped  # each failed write counted, with its lines
    lines = log_path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every line whole JSON
    assert len(records) + dropped == 12 and dropped >= 1


def _metrics(gw: GatewayProcess) -> str:
    return _get(gw.admin + "/metrics")[1].decode()


def _log_and_dropped(gw: GatewayProcess, log_path: Path) -> float:
    """Whole lines in the access log plus the lines counted as dropped."""
    whole = log_path.read_bytes().count(b"\n")
    return whole + counter_value(_metrics(gw), "vitalgate_telemetry_dropped_total", signal="log")
