"""Added latency at a steady request rate (open loop): direct to nginx vs through vitalgate.

wrk is closed-loop: when the proxy stalls, wrk stops sending, and the stall
hides from the percentiles (coordinated omission). This harness sends on a
fixed schedule instead (``--rate`` requests a second over a keep-alive pool)
and measures each request from the moment it was *due*, so a stall counts for
every request that should have gone out during it.

Run by hand (``make bench``); results go in the issue note. The proxy is
pinned to core 0; nginx, the OTLP sink and this load generator to core 1.

    python -m bench.latency [--rate 1000] [--seconds 20] [--sample 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.proxy import (
    LOAD_CORE,
    PATIENT,
    PROXY_CORE,
    free_port,
    nginx_conf,
    start,
    vitalgate_config,
    wait_port,
)
from gateway.config import UpstreamConfig
from gateway.upstream import Upstream


# An OTLP receiver that takes the batches and discards them: decoding them would load the
# load generator's core and show up as latency that is not the gateway's.
DISCARD_SINK = """
import sys
from aiohttp import web
async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def open_loop(port: int, rate: float, seconds: float, headers: dict[str, str]) -> list[float]:
    """Latencies in ms, each from the request's scheduled time to its last body byte."""
    client = Upstream("load", UpstreamConfig(url=f"http://127.0.0.1:{port}", max_connections=256), None)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0

    async def one(due: float) -> None:
        nonlocal errors
        try:
            resp = await client.send("GET", "/fhir/Patient/123", headers, None)
            while await resp.read():
                pass
            resp.release()
            if resp.status != 200:
                errors += 1
        except Exception:
            errors += 1
        latencies.append((time.perf_counter() - due) * 1000)

    n = int(rate * seconds)
    t0 = time.perf_counter() + 0.1
    tasks = []
    gc.disable()  # the generator's own pauses must not show up as the target's latency
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(due)))
    await asyncio.gather(*tasks)
    await client.close()
    if errors:
        print(f"  {errors} errors", file=sys.stderr)
    return latencies


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def run_load(port: int, rate: float, seconds: float) -> list[float]:
    """The load generator in its own process on the load core."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CORE,
            sys.executable,
            "-m",
            "bench.latency",
            "--generate",
            str(port),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [float(x) for x in json.loads(out)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sample", type=float, default=1.0, help="vitalgate's trace sample ratio")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--generate", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate is not None:
        import uvloop

        lat = uvloop.run(open_loop(args.generate, args.rate, args.seconds, {"X-Facility-ID": "st-marys"}))
        print(json.dumps([round(x, 4) for x in lat]))
        return 0

    work = Path(tempfile.mkdtemp(prefix="vitalgate-latency-"))
    os.chmod(work, 0o755)  # noqa: S103  nginx workers (user root) read it
    (work / "patient.json").write_bytes(json.dumps(PATIENT, indent=1).encode())
    up_port, sink_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conf = nginx_conf(
            work,
            f"server {{ listen 127.0.0.1:{up_port}; root {work};"
            " location / { default_type application/fhir+json; try_files /patient.json =404; } }",
        )
        procs.append(start(["/usr/sbin/nginx", "-p", str(work), "-c", str(conf)], LOAD_CORE))
        (work / "sink.py").write_text(DISCARD_SINK)
        procs.append(start([sys.executable, str(work / "sink.py"), str(sink_port)], LOAD_CORE))
        cfg, gw_port = vitalgate_config(work, "gw", up_port, sink_port, args.sample)
        procs.append(start([sys.executable, "-m", "vitalgate", "serve", "--config", str(cfg)], PROXY_CORE))
        for p in (up_port, sink_port, gw_port):
            wait_port(p)
        run_load(gw_port, args.rate, 2)  # warm-up
        results: dict[str, list[float]] = {"direct (nginx upstream)": [], "through vitalgate": []}
        for r in range(args.rounds):
            for name, port in (("direct (nginx upstream)", up_port), ("through vitalgate", gw_port)):
                results[name] += run_load(port, args.rate, args.seconds)
                print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    print(
        f"\nopen loop, {args.rate:.0f} req/s for {args.seconds:.0f} s x {args.rounds} rounds per target, "
        f"latency from each request's scheduled time; vitalgate trace sample {args.sample}\n"
    )
    print(f"{'target':<26}{'requests':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}")
    for name, lat in results.items():
        print(
            f"{name:<26}{len(lat):>10}{pct(lat, 50):>9.2f}{pct(lat, 90):>9.2f}{pct(lat, 99):>9.2f}"
            f"{pct(lat, 99.9):>10.2f}{max(lat):>9.2f}"
        )
    d, v = results["direct (nginx upstream)"], results["through vitalgate"]
    print(
        f"\nadded by vitalgate: p50 {pct(v, 50) - pct(d, 50):.2f} ms, p99 {pct(v, 99) - pct(d, 99):.2f} ms "
        f"(target: p99 under 2 ms)"
    )
    return 0


if __name__ == "__main__":
    t = time.monotonic()
    code = main()
    sys.exit(code)
