"""Slow readers against response buffering: how fast the gateway frees the upstream, and what
spooling costs it.

``--clients`` clients (4) each ask for a ``--megabytes`` (50) answer and read none of it,
through a gateway with ``max_connections: 4`` and ``timeout.total: 5s``. With buffering on,
the upstream's answers go to the gateway's encrypted temporary files; the benchmark reports
how long until the upstream had sent them all (its connections free again), the gateway's
CPU for it, its memory, and a fifth request's answer. With ``--off`` (``max_temp_file_size:
0``) the same clients hold the upstream, and the fifth request waits for the pool.

    python -m bench.spool [--clients 4] [--megabytes 50] [--off]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from aiohttp import web

from bench.proxy import cpu_ticks, free_port, wait_port

RECORD = b'{"resourceType": "Patient", "name": [{"family": "Example"}], "birthDate": "1970-01-01"},\n'


class Answers:
    def __init__(self, size: int) -> None:
        self.body = (RECORD * (size // len(RECORD) + 1))[:size]
        self.finished = 0

    async def binary(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/fhir+json"})
        resp.content_length = len(self.body)
        await resp.prepare(request)
        view = memoryview(self.body)
        try:
            for at in range(0, len(self.body), 1 << 20):
                await resp.write(view[at : at + (1 << 20)])
            await resp.write_eof()
        except ConnectionError:
            return resp
        self.finished += 1
        return resp

    async def patient(self, request: web.Request) -> web.Response:
        return web.json_response({"resourceType": "Patient", "id": "1"})


def _fifth(url: str) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310  (a local http URL)
            r.read()
            return r.status, time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, time.monotonic() - t0


def _upstream(answers: Answers) -> tuple[int, asyncio.AbstractEventLoop]:
    """The upstream on an event loop of its own (a thread): (port, loop)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    port = free_port()

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/fhir/Binary/1", answers.binary)
        app.router.add_get("/fhir/Patient/1", answers.patient)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    return port, loop


def run(clients: int, megabytes: int, off: bool) -> None:
    answers = Answers(megabytes * 1024 * 1024)
    up, loop = _upstream(answers)
    work = Path(tempfile.mkdtemp(prefix="vitalgate-spool-bench-"))
    port, admin = free_port(), free_port()
    cfg = {
        "version": 1,
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "upstreams": {
            "fhir": {"url": f"http://127.0.0.1:{up}", "max_connections": 4, "timeout": {"total": "5s"}}
        },
        "routes": [{"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir"}],
        "telemetry": {"access_log": {"path": "access.log"}, "store": {"enabled": False}},
        "limits": {"temp_path": "spool", "max_temp_file_size": 0 if off else 1 << 30},
    }
    (work / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "vitalgate", "serve", "--config", str(work / "gateway.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socks: list[socket.socket] = []
    try:
        wait_port(port)
        ticks0 = cpu_ticks(gateway.pid)
        t0 = time.monotonic()
        for _ in range(clients):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /fhir/Binary/1 HTTP/1.1\r\nHost: gw\r\n\r\n")
            socks.append(s)
        while answers.finished < clients and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        freed_s = time.monotonic() - t0
        cpu_s = (cpu_ticks(gateway.pid) - ticks0) / os.sysconf("SC_CLK_TCK")
        hwm_kb = next(
            int(line.split()[1])
            for line in Path(f"/proc/{gateway.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
        status, fifth_s = _fifth(f"http://127.0.0.1:{port}/fhir/Patient/1")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            spooled = next(
                (
                    float(line.split()[1])
                    for line in r.read().decode().splitlines()
                    if line.startswith("vitalgate_response_spooled_bytes_total ")
                ),
                0.0,
            )
        mode = "off (max_temp_file_size: 0)" if off else "on"
        if answers.finished == clients:
            upstream = f"all {clients} answers sent after {freed_s:.2f} s"
        else:
            upstream = f"{answers.finished} of {clients} answers sent after {freed_s:.0f} s"
        print(
            json.dumps(
                {
                    "buffering": mode,
                    "upstream": upstream,
                    "gateway_cpu_s": round(cpu_s, 2),
                    "gateway_peak_rss_mb": round(hwm_kb / 1024, 1),
                    "spooled_mb": round(spooled / 1048576, 1),
                    "fifth_request": {"status": status, "seconds": round(fifth_s, 3)},
                }
            )
        )
    finally:
        for s in socks:
            s.close()
        gateway.terminate()
        gateway.wait(30)
        loop.call_soon_threadsafe(loop.stop)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--off", action="store_true", help="max_temp_file_size: 0 (no buffering)")
    args = parser.parse_args()
    run(args.clients, args.megabytes, args.off)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
