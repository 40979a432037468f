"""Response buffering: clients that never read do not hold the upstream's connections; what
they have not taken waits in encrypted temporary files that leave nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess, gateway_config, running_gateway
from tests.support.readers import counter_value, read_log
from vitalgate.peers import AppPeer

RECORD = (
    b'{"resourceType": "Patient", "name": [{"family": "Smithfield-Okafor"}], "birthDate": "1961-04-02"},\n'
)
"""Synthetic PHI, the unit of every large body here (a spool file must not show it)."""
BIG = 50 * 1024 * 1024


def body_of(size: int) -> bytes:
    """``size`` bytes of numbered records: a part out of order or lost changes its hash."""
    count = size // (8 + len(RECORD)) + 1
    return b"".join(b"%08d" % n + RECORD for n in range(count))[:size]


class BigAnswers(AppPeer):
    """``/fhir/Binary/{size}`` answers ``size`` bytes (Content-Length, sent as fast as the
    gateway takes them); anything else a small Patient. Counts the answers it finished."""

    def __init__(self) -> None:
        self.bodies: dict[int, bytes] = {}
        self.finished = 0
        self.seen = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/fhir/Binary/{size}", self.binary)
        app.router.add_get("/fhir/Patient/{id}", self.patient)
        return app

    async def binary(self, request: web.Request) -> web.StreamResponse:
        self.seen += 1
        size = int(request.match_info["size"])
        body = self.bodies.get(size)
        if body is None:
            body = self.bodies[size] = body_of(size)
        resp = web.StreamResponse(headers={"Content-Type": "application/fhir+json"})
        resp.content_length = size
        await resp.prepare(request)
        view = memoryview(body)
        try:
            for at in range(0, size, 1 << 20):
                await resp.write(view[at : at + (1 << 20)])
            await resp.write_eof()
        except ConnectionError:
            return resp  # the gateway cut it (killed, or its client left unspooled): not finished
        self.finished += 1
        return resp

    async def patient(self, request: web.Request) -> web.Response:
        self.seen += 1
        return web.json_response({"resourceType": "Patient", "id": request.match_info["id"]})


@pytest.fixture
async def big() -> AsyncIterator[BigAnswers]:
    peer = BigAnswers()
    await peer.start()
    yield peer
    await peer.stop()


def _config(tmp: Path, port: int, **limits: Any) -> Path:
    upstreams = {
        "fhir": {
            "url": f"http://127.0.0.1:{port}",
            "max_connections": 4,
            "timeout": {"connect": "1s", "total": "5s"},
        }
    }
    return gateway_config(
        tmp,
        port,
        extra={"upstreams": upstreams, "limits": {"shutdown_timeout": "5s", "temp_path": "spool", **limits}},
    )


async def _stalled(port: int, path: str) -> asyncio.StreamWriter:
    """A client that asks for ``path`` and reads nothing (its receive buffer kept small)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    _reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nX-Facility-ID: riverside\r\n\r\n".encode())
    await writer.drain()
    return writer


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def _spool_fds(pid: int, directory: Path) -> list[Path]:
    """The gateway's open spool files (unlinked: ``/proc`` still reaches them)."""
    fds = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed while listed
        if target.startswith(str(directory) + "/vitalgate-spool-"):
            fds.append(fd)
    return fds


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    async with session.get(url, headers={"X-Facility-ID": "riverside"}) as r:
        body = await r.json(content_type=None)
        return r.status, body, time.monotonic() - t0


@pytest.mark.slow
async def test_clients_that_never_read_do_not_hold_the_upstream(tmp_path: Path, big: BigAnswers) -> None:
    spool = tmp_path / "spool"
    big.bodies[BIG] = body_of(BIG)  # made now, not while the upstream should be answering
    cfg = _config(tmp_path, big.port)
    gw = GatewayProcess(cfg)
    pid = gw.proc.pid
    port = int(gw.proxy.rpartition(":")[2])
    try:
        t0 = time.monotonic()
        stalled = [await _stalled(port, f"/fhir/Binary/{BIG}") for _ in range(4)]
        # The upstream finishes all four answers: the gateway took them, not the clients.
        await _until(lambda: big.finished == 4, "the upstream sent all four answers")
        held = _spool_fds(pid, spool)
        assert len(held) == 4
        assert os.listdir(spool) == []  # unlinked from the start: only the descriptors hold them
        async with aiohttp.ClientSession() as s:
            # A fifth request finds the pool free (the four connections went back to it).
            status, body, elapsed = await _get(s, gw.proxy + "/fhir/Patient/5")
            assert status == 200 and body["id"] == "5"
            assert elapsed < 5 + 1  # the route's total timeout bounds every wait (not timeout.pool)
            # A spool file read raw: nothing of the body in the clear.
            raw = held[0].read_bytes()
            assert len(raw) > 10 * 1024 * 1024
            assert b"Smithfield" not in raw and b"1961-04-02" not in raw and b"resourceType" not in raw
            # At 10 s (past timeout.pool's default), the four still connected: still served.
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - t0)))
            assert all(not w.is_closing() for w in stalled)
            status, body, _ = await _get(s, gw.proxy + "/fhir/Patient/6")
            assert status == 200 and body["id"] == "6"
            async with s.get(gw.admin + "/metrics") as r:
                metrics = await r.text()
        assert counter_value(metrics, "vitalgate_response_spooled_bytes_total") > 3 * BIG
        assert counter_value(metrics, "vitalgate_response_spool_errors_total") == 0
        assert counter_value(metrics, "vitalgate_response_spool_fallbacks_total") == 0
        # The clients go away: their files are closed (and so gone).
        for w in stalled:
            w.transport.abort()
        await _until(lambda: not _spool_fds(pid, spool), "spool files closed after the clients left")
        assert os.listdir(spool) == []
        # Their log lines go out through the access log's queue: wait for them before the
        # kill -9 below, which loses what is still queued (as any kill -9 does).
        await _until(
            lambda: (
                sum(r["http.route"] == "/fhir/Binary/{id}" for r in read_log(tmp_path / "access.log")) == 4
            ),
            "the four clients' requests logged",
        )

        # kill -9 with responses spooled: nothing is left on disk.
        stalled = [await _stalled(port, f"/fhir/Binary/{BIG}") for _ in range(2)]
        await _until(lambda: len(_spool_fds(pid, spool)) == 2, "two responses spooled")
        gw.kill()
        for w in stalled:
            w.transport.abort()
        assert os.listdir(spool) == []
        # What the instant between creating and unlinking a file could leave (a process gone
        # by then) is removed when the gateway starts again.
        gone = await asyncio.create_subprocess_exec("true")
        await gone.wait()
        (spool / f"vitalgate-spool-{gone.pid}-7").write_bytes(b"left behind")
        gw = GatewayProcess(cfg)
        assert os.listdir(spool) == []
        assert [(e["directory"], e["files"]) for e in gw.events("spool_cleaned")] == [(str(spool), 1)]
        async with aiohttp.ClientSession() as s:
            assert (await _get(s, gw.proxy + "/fhir/Patient/7"))[0] == 200
    finally:
        gw.kill()
    log = read_log(tmp_path / "access.log")
    bodies = [r for r in log if r["http.route"] == "/fhir/Binary/{id}"]
    # The four first clients left (499: not the upstream's fault); the two after were killed
    # with the gateway, unrecorded.
    assert [(r["http.response.status_code"], r.get("error.type")) for r in bodies] == [
        (499, "client_disconnect")
    ] * 4


@pytest.mark.slow
async def test_without_spooling_the_pool_wait_is_bounded_by_total(tmp_path: Path, big: BigAnswers) -> None:
    """``max_temp_file_size: 0`` keeps streaming at the client's pace: the four hold the pool,
    and a fifth request waits no longer than the route's total (5 s), not timeout.pool (10 s)."""
    big.bodies[BIG] = body_of(BIG)  # made now: made in the handler, it would block this loop
    async with running_gateway(_config(tmp_path, big.port, max_temp_file_size=0)) as gw:
        stalled = [await _stalled(gw.proxy_port, f"/fhir/Binary/{BIG}") for _ in range(4)]
        await _until(lambda: big.seen == 4, "four answers under way")
        async with aiohttp.ClientSession() as s:
            status, body, elapsed = await _get(s, f"http://127.0.0.1:{gw.proxy_port}/fhir/Patient/5")
        assert status == 503 and body["error"] == "upstream_pool_exhausted"
        assert "within 5 s" in body["detail"]
        assert elapsed < 5 + 1
        assert big.finished == 0
        assert not (tmp_path / "spool").exists() or os.listdir(tmp_path / "spool") == []
        for w in stalled:
            w.transport.abort()


async def _metric(admin: str, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(admin + "/metrics") as r:
        return counter_value(await r.text(), name, **labels)


async def _read_slowly(port: int, path: str, admin: str, name: str, **labels: str) -> bytes:
    """Ask, read nothing until the gateway's counter ``name`` shows it had to queue the answer
    the way the case needs, then read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    await writer.drain()
    deadline = time.monotonic() + 20
    while await _metric(admin, name, **labels) == 0:
        assert time.monotonic() < deadline, f"{name} {labels} stayed 0"
        await asyncio.sleep(0.05)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    return body


@pytest.mark.parametrize("case", ["spooled", "limit", "disk_gone"])
async def test_a_slow_reader_gets_every_byte_in_order(tmp_path: Path, big: BigAnswers, case: str) -> None:
    """Whether the rest goes through the file, or the file is full or cannot be made (then the
    response streams at the client's pace, counted): the same bytes, never a failed request."""
    size = 16 * 1024 * 1024
    limits = {"max_temp_file_size": 1024 * 1024} if case == "limit" else {}
    async with running_gateway(_config(tmp_path, big.port, **limits)) as gw:
        if case == "disk_gone":
            (tmp_path / "spool").rmdir()  # every file fails to be created (as on a full disk)
        admin = f"http://127.0.0.1:{gw.admin_port}"
        # The case's mark: bytes in the file, the limit reached, the file not made.
        mark: dict[str, tuple[str, dict[str, str]]] = {
            "spooled": ("vitalgate_response_spooled_bytes_total", {}),
            "limit": ("vitalgate_response_spool_fallbacks_total", {"reason": "limit"}),
            "disk_gone": ("vitalgate_response_spool_errors_total", {"operation": "create"}),
        }
        name, labels = mark[case]
        body = await _read_slowly(gw.proxy_port, f"/fhir/Binary/{size}", admin, name, **labels)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as r:
            metrics = await r.text()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(big.bodies[size]).hexdigest()
    spooled = counter_value(metrics, "vitalgate_response_spooled_bytes_total")
    errors = {
        op: counter_value(metrics, "vitalgate_response_spool_errors_total", operation=op)
        for op in ("create", "write", "read")
    }
    fallbacks = {
        why: counter_value(metrics, "vitalgate_response_spool_fallbacks_total", reason=why)
        for why in ("error", "limit")
    }
    if case == "spooled":
        assert spooled > 0 and errors == {"create": 0, "write": 0, "read": 0}
        assert fallbacks == {"error": 0, "limit": 0}
    elif case == "limit":
        # (the file is reused from its start each time the client has caught up with it, so
        # more than its limit may pass through it in all)
        assert spooled > 0 and fallbacks == {"error": 0, "limit": 1}
    else:
        assert spooled == 0 and errors["create"] == 1 and fallbacks == {"error": 1, "limit": 0}
    (line,) = [r for r in read_log(tmp_path / "access.log") if r["http.route"] == "/fhir/Binary/{id}"]
    assert line["http.response.status_code"] == 200 and "error.type" not in line


def test_a_spool_directory_that_cannot_be_made_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    cfg = _config(tmp_path, 9, temp_path=str(tmp_path / "file" / "spool"))
    out = vitalgate("serve", "--config", str(cfg), check=False, timeout=60)
    assert out.returncode == 1
    assert "limits.temp_path: cannot keep temporary files in" in out.stderr + out.stdout
    assert json.dumps(str(tmp_path / "file" / "spool"))[1:-1] in out.stderr + out.stdout


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
async def test_each_worker_spools_on_its_own(tmp_path: Path, big: BigAnswers) -> None:
    spool = tmp_path / "spool"
    big.bodies[20971520] = body_of(20971520)
    gw = GatewayProcess(_config(tmp_path, big.port), workers=2)
    port = int(gw.proxy.rpartition(":")[2])
    try:
        workers = _children(gw.proc.pid)
        assert len(workers) == 2
        # 20 MB each: more than the socket buffers and the first read-ahead hold, so each
        # answer needs a file.
        stalled = [await _stalled(port, "/fhir/Binary/20971520") for _ in range(4)]
        await _until(lambda: big.finished == 4, "the upstream sent all four answers")
        held = {w: len(_spool_fds(w, spool)) for w in workers}
        assert sum(held.values()) == 4 and not _spool_fds(gw.proc.pid, spool)  # the supervisor spools nothing
        for w in stalled:
            w.transport.abort()
        await _until(lambda: not any(_spool_fds(w, spool) for w in workers), "files closed")
        assert os.listdir(spool) == []
    finally:
        gw.terminate()


@pytest.mark.slow
async def test_a_spool_file_that_cannot_grow_falls_back_to_streaming(tmp_path: Path, big: BigAnswers) -> None:
    """A write that fails (here the file-size limit, EFBIG, as a full disk's ENOSPC would):
    counted, logged, and the response goes on at the client's pace, whole."""
    size = 16 * 1024 * 1024
    gw = GatewayProcess(_config(tmp_path, big.port), file_size=2 * 1024 * 1024)
    try:
        body = await _read_slowly(
            int(gw.proxy.rpartition(":")[2]),
            f"/fhir/Binary/{size}",
            gw.admin,
            "vitalgate_response_spool_errors_total",
            operation="write",
        )
        async with aiohttp.ClientSession() as s, s.get(gw.admin + "/metrics") as r:
            metrics = await r.text()
    finally:
        assert gw.terminate() == 0
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(big.bodies[size]).hexdigest()
    assert counter_value(metrics, "vitalgate_response_spool_errors_total", operation="write") == 1
    assert counter_value(metrics, "vitalgate_response_spool_fallbacks_total", reason="error") == 1
    assert counter_value(metrics, "vitalgate_response_spooled_bytes_total") > 0
    (warning,) = gw.events("spool_error")
    # (the write that reaches the limit is cut short; the kernel says EFBIG to the next)
    assert warning["operation"] == "write" and "spooling a response failed (write)" in warning["message"]
    (line,) = [r for r in read_log(tmp_path / "access.log") if r["http.route"] == "/fhir/Binary/{id}"]
    assert line["http.response.status_code"] == 200


def test_importing_the_data_plane_loads_no_cryptography() -> None:
    """Only a process that spools loads it (when it starts): the request path's import stays lean."""
    code = (
        "import sys, gateway.dataplane.proxy, gateway.dataplane.spool; print('cryptography' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
