"""What synthetic probes cost an idle gateway: CPU per second of a gateway with N facilities
probed every 30 s and no client traffic, against the same gateway without probes.

Throughput under load with probes running is a target of ``bench/proxy.py --probes N``;
this measures the probes alone (the number that matters at 3 a.m.), over ``--seconds``.

    python -m bench.probe_cost [--facilities 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.proxy import (
    LOAD_CORE,
    PATIENT,
    PROXY_CORE,
    TICKS,
    cpu_ticks,
    free_port,
    nginx_conf,
    start,
    stop_all,
    vitalgate_config,
    wait_port,
)


def _probe_requests(admin: str) -> float:
    with urllib.request.urlopen(admin + "/metrics", timeout=10) as r:  # noqa: S310  (our own http:// URL)
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vitalgate_probe_requests_total{")
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--facilities", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() or shutil.which("taskset") is None:
        sys.exit("nginx and taskset are required: scripts/install-system-deps bench")
    work = Path(tempfile.mkdtemp(prefix="vitalgate-probes-"))
    os.chmod(work, 0o755)  # noqa: S103  nginx workers (user root) read it
    (work / "patient.json").write_text(json.dumps(PATIENT))
    up_port = free_port()
    up_conf = nginx_conf(
        work,
        f"server {{ listen 127.0.0.1:{up_port}; root {work};"
        " location / { default_type application/fhir+json; try_files /patient.json =404; } }",
    )
    procs = {"upstream": start([nginx, "-p", str(work), "-c", str(up_conf)], LOAD_CORE)}
    gateways = {}
    try:
        for name, n in (("none", 0), ("probed", args.facilities)):
            cfg, port = vitalgate_config(work, name, up_port, free_port(), 1.0, probed=n)
            procs[name] = start(
                [sys.executable, "-m", "vitalgate", "serve", "--config", str(cfg)], PROXY_CORE
            )
            admin = "http://" + cfg.read_text().split('admin: {listen: "', 1)[1].split('"', 1)[0]
            gateways[name] = (procs[name], port, admin)
        wait_port(up_port)
        for _, port, _ in gateways.values():
            wait_port(port)
        time.sleep(35)  # past the first interval: every probe has started its cycle
        before = {name: (cpu_ticks(p.pid), _probe_requests(a)) for name, (p, _, a) in gateways.items()}
        t0 = time.monotonic()
        time.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        print(f"idle gateway, {args.seconds:g} s, probes every 30 s; one core pinned per gateway")
        print(f"{'target':<32}{'CPU % of a core':>16}{'probes/s':>10}{'CPU us/probe':>14}")
        rows = {}
        for name, (p, _, a) in gateways.items():
            c0, r0 = before[name]
            cpu_s = (cpu_ticks(p.pid) - c0) / TICKS
            probes = _probe_requests(a) - r0
            rows[name] = (cpu_s, probes)
        base_cpu = rows["none"][0]
        for name, (cpu_s, probes) in rows.items():
            label = "no probes" if name == "none" else f"{args.facilities} facilities probed"
            per = f"{(cpu_s - base_cpu) / probes * 1e6:.0f}" if probes else "-"
            print(f"{label:<32}{100 * cpu_s / elapsed:>16.2f}{probes / elapsed:>10.2f}{per:>14}")
    finally:
        stop_all(procs.values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
