"""Memory under load: 200 facilities x 30 route templates of label sets, for N minutes.

Drives the gateway with wrk and a Lua script that spreads requests over every
facility and route, and samples the gateway's RSS. The label sets reach the
full 200 x 30 (x method x status) within the first minute; after that RSS
should stay flat.

    python -m bench.soak [--minutes 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.proxy import LOAD_CORE, PROXY_CORE, free_port, nginx_conf, start, stop_all, wait_port
from core.conventions import REQUEST_DURATION
from gateway.dataplane.fhir import RESOURCE_TYPES

LUA = """
local facilities = {}
for i = 0, 199 do facilities[#facilities + 1] = string.format("f%03d", i) end
local routes = {ROUTES}
math.randomseed(os.time())
request = function()
  local f = facilities[math.random(#facilities)]
  local r = routes[math.random(#routes)]
  local path = "/fhir/" .. r .. "/" .. math.random(1, 1000000)
  return wrk.format("GET", path, {["X-Facility-ID"] = f})
end
"""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _write_config(work: Path, up_port: int, port: int, admin: int) -> Path:
    """The upstream's one file, the wrk script spreading 200 facilities x 30 routes, and the
    gateway's config."""
    (work / "p.json").write_text('{"resourceType":"Patient","id":"1"}')
    routes = sorted(RESOURCE_TYPES)[:30]
    (work / "spread.lua").write_text(LUA.replace("{ROUTES}", "{" + ", ".join(f'"{r}"' for r in routes) + "}"))
    known = "\n".join(f"    f{i:03d}: {{name: Facility {i}}}" for i in range(200))
    config = work / "gateway.yaml"
    config.write_text(
        f"version: 1\nlisten: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\n"
        f"upstreams: {{fhir: {{url: 'http://127.0.0.1:{up_port}'}}}}\nroutes: [{{prefix: /fhir/, upstream: fhir, kind: fhir}}]\n"
        f"facilities:\n  from: [{{header: X-Facility-ID}}]\n  known:\n{known}\n"
        f"telemetry: {{access_log: {{path: {work / 'access.log'}}}, store: {{path: {work / 'store.db'}}}}}\n"
    )
    return config


def _start_peers(work: Path, config: Path, up_port: int) -> list[subprocess.Popen[bytes]]:
    """nginx serving the upstream's file on the load core, the gateway on its own core."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    site = f"server {{ listen 127.0.0.1:{up_port}; root {work}; location / {{ try_files /p.json =404; }} }}"
    return [
        start([nginx, "-p", str(work), "-c", str(nginx_conf(work, site))], LOAD_CORE),
        start([sys.executable, "-m", "vitalgate", "serve", "--config", str(config)], PROXY_CORE),
    ]


def _sample(
    load: subprocess.Popen[str], admin: int, gw_pid: int, every_s: float
) -> list[tuple[float, float, int]]:
    """(seconds, RSS MB, request label sets) every ``every_s`` while the load runs."""
    t0 = time.monotonic()
    samples = []
    while load.poll() is None:
        time.sleep(every_s)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            series = sum(
                1 for line in r.read().decode().splitlines() if line.startswith(f"{REQUEST_DURATION}_count")
            )
        mb = rss_kb(gw_pid) / 1024
        samples.append((time.monotonic() - t0, mb, series))
        print(f"{samples[-1][0]:7.0f} s  RSS {mb:7.1f} MB  request label sets {series}", flush=True)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitalgate-soak-"))
    os.chmod(work, 0o755)  # noqa: S103  nginx workers read it
    up_port, port, admin = free_port(), free_port(), free_port()
    procs = _start_peers(work, _write_config(work, up_port, port, admin), up_port)
    try:
        wait_port(up_port)
        wait_port(port)
        gw_pid = procs[1].pid
        print(f"idle RSS {rss_kb(gw_pid) / 1024:.1f} MB")
        wrk = ["wrk", "-t1", "-c20", f"-d{int(args.minutes * 60)}s", "-s", str(work / "spread.lua")]
        load = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, *wrk, f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True
        )
        samples = _sample(load, admin, gw_pid, args.sample_seconds)
        out = load.stdout.read() if load.stdout else ""
        rps = next((line.split()[-1] for line in out.splitlines() if line.startswith("Requests/sec")), "?")
        after_first = [mb for t, mb, _ in samples if t > 60]
        if after_first:
            print(
                f"\n{rps} req/s; RSS after the first minute: min {min(after_first):.1f} MB, max {max(after_first):.1f} MB, "
                f"growth {after_first[-1] - after_first[0]:+.1f} MB; target < 300 MB and flat"
            )
    finally:
        stop_all(procs, 30)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
