"""Added latency at a steady request rate (open loop): direct to nginx vs through vitalgate.

wrk is closed-loop: when the proxy stalls, wrk stops sending, and the stall
hides from the percentiles (coordinated omission). This harness sends on a
fixed schedule instead (``--rate`` requests a second over a keep-alive pool,
from a small C generator, ``bench/openloop.c``, built with gcc at start) and
measures each request from the moment it was *due*, so a stall counts for
every request that should have gone out during it.

Run by hand (``make bench``); results go in the issue note. The proxy and
the nginx upstream are pinned to core 0; the load generator and a
discarding OTLP receiver to core 1. (With nginx on the generator's core,
every proxied request could also wait for the scheduler to hand nginx a turn:
latency that is the harness's, not the gateway's.)

    python -m bench.latency [--rate 1000] [--seconds 20] [--sample 1.0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.proxy import (
    LOAD_CORE,
    PATIENT,
    PROXY_CORE,
    SINK,
    free_port,
    nginx_conf,
    start,
    stop_all,
    vitalgate_config,
    wait_port,
)


def build_generator(work: Path) -> Path:
    """bench/openloop.c, compiled: a C generator, so the harness's own pauses do not show up
    as the target's latency."""
    binary = work / "openloop"
    src = Path(__file__).with_name("openloop.c")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(src)], check=True)
    return binary


def run_load(binary: Path, port: int, rate: float, seconds: float, connections: int) -> list[float]:
    """Latencies in ms, in schedule order, from the generator on the load core."""
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CORE,
            str(binary),
            "127.0.0.1",
            str(port),
            str(rate),
            str(seconds),
            str(connections),
            "/fhir/Patient/123",
            "X-Facility-ID: st-marys",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"openloop failed: {out.stderr.strip()}")
    if out.stderr:
        print(out.stderr.strip(), file=sys.stderr)
    return [float(x) / 1000 for x in out.stdout.split()]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--sample", type=float, default=1.0, help="vitalgate's trace sample ratio")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64, help="the generator's keep-alive pool")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vitalgate-latency-"))
    os.chmod(work, 0o755)  # noqa: S103  nginx workers (user root) read it
    (work / "patient.json").write_bytes(json.dumps(PATIENT, indent=1).encode())
    generator = build_generator(work)
    up_port, sink_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, list[float]] = {"direct (nginx upstream)": [], "through vitalgate": []}
    try:
        conf = nginx_conf(
            work,
            f"server {{ listen 127.0.0.1:{up_port}; root {work};"
            " location / { default_type application/fhir+json; try_files /patient.json =404; } }",
        )
        procs.append(start(["/usr/sbin/nginx", "-p", str(work), "-c", str(conf)], PROXY_CORE))
        (work / "sink.py").write_text(SINK)
        procs.append(start([sys.executable, str(work / "sink.py"), str(sink_port)], LOAD_CORE))
        cfg, gw_port = vitalgate_config(work, "gw", up_port, sink_port, args.sample)
        procs.append(start([sys.executable, "-m", "vitalgate", "serve", "--config", str(cfg)], PROXY_CORE))
        for port_ in (up_port, sink_port, gw_port):
            wait_port(port_)
        run_load(generator, gw_port, args.rate, 2, args.connections)  # warm-up
        for r in range(args.rounds):
            for name, port in (("direct (nginx upstream)", up_port), ("through vitalgate", gw_port)):
                results[name] += run_load(generator, port, args.rate, args.seconds, args.connections)
                print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr)
    finally:
        stop_all(procs)
    print(
        f"\nopen loop, {args.rate:.0f} req/s for {args.seconds:.0f} s x {args.rounds} rounds per target, "
        f"{args.connections} connections; latency from each request's scheduled time; "
        f"vitalgate trace sample {args.sample}\n"
    )
    print(
        f"{'target':<26}{'requests':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}"
    )
    for name, lat in results.items():
        print(
            f"{name:<26}{len(lat):>10}{pct(lat, 50):>9.3f}{pct(lat, 90):>9.3f}{pct(lat, 99):>9.3f}"
            f"{pct(lat, 99.9):>10.3f}{max(lat):>9.2f}"
        )
    d, v = results["direct (nginx upstream)"], results["through vitalgate"]
    print(
        f"\nadded by vitalgate: p50 {pct(v, 50) - pct(d, 50):.3f} ms, p99 {pct(v, 99) - pct(d, 99):.3f} ms "
        f"(target: p99 under 2 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
