"""Proxy throughput and cost: direct, nginx, a bare aiohttp proxy, and vitalgate.

Run by hand (``make bench``); results go in the issue note, never into test
assertions. One run interleaves rounds of every target, so machine noise hits
all of them alike. The proxy under test is pinned to core 0; wrk, the nginx
upstream (serving a ~1.5 KB FHIR JSON file) and the OTLP sink to core 1. With
``--audit``, the gateway's audit writer process goes to core 1 as well (and in one
more target stays on core 0); a proxy's CPU figure includes its child processes.

    python bench/proxy.py [--rounds 3] [--seconds 5] [--connections 50] [--probes 200]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

PROXY_CORE, LOAD_CORE = "0", "1"
AUDIT_ONE_CORE = "vitalgate audit batched, 1 core"
"""The audit writer left on the proxy's core: the cost where no second core is free."""
TICKS = os.sysconf("SC_CLK_TCK")
PATIENT = {
    "resourceType": "Patient",
    "id": "example",
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><table><tbody><tr><td>Name</td><td>Peter James '
        "<b>Chalmers</b> (&quot;Jim&quot;)</td></tr><tr><td>Address</td><td>534 Erewhon, Pleasantville, "
        "Vic, 3999</td></tr><tr><td>Contacts</td><td>Home: unknown. Work: (03) 5555 6473</td></tr>"
        "<tr><td>Id</td><td>MRN: 12345 (Acme Healthcare)</td></tr></tbody></table></div>",
    },
    "meta": {"versionId": "3", "lastUpdated": "2026-10-01T12:00:00Z"},
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
    "active": True,
    "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
    "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work"}],
    "gender": "male",
    "birthDate": "1974-12-25",
    "address": [{"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
    "contact": [
        {
            "relationship": [
                {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}
            ],
            "name": {"family": "du Marché", "given": ["Bénédicte"]},
            "gender": "female",
        }
    ],
    "managingOrganization": {"reference": "Organization/1"},
}


@dataclass
class Result:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, its threads and its children (nginx's worker)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def nginx_conf(prefix: Path, body: str) -> Path:
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / f"nginx-{abs(hash(body))}.conf"
    conf.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {conf.with_suffix('.pid')};\n"
        f"error_log {prefix}/nginx-error.log warn;\n"
        "events { worker_connections 4096; }\n"
        f"http {{\n access_log off;\n client_body_temp_path {prefix};\n proxy_temp_path {prefix};\n"
        f"{body}\n}}\n"
    )
    return conf


def start(cmd: list[str], core: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", core, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> None:
    """SIGTERM every process, then wait for each (killing what does not stop in time)."""
    procs = list(procs)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()


def run_wrk(
    url: str, seconds: float, connections: int, headers: dict[str, str]
) -> tuple[float, float, float, int]:
    cmd = [
        "taskset",
        "-c",
        LOAD_CORE,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
    ]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return rps, pct("50"), pct("99"), errors


BARE_PROXY = """
import sys, aiohttp
from aiohttp import web
upstream = sys.argv[2]
async def handle(request):
    session = request.app["session"]
    async with session.request(request.method, upstream + request.raw_path, headers=request.headers,
                               data=request.content if request.can_read_body else None,
                               allow_redirects=False) as r:
        resp = web.StreamResponse(status=r.status, headers={"Content-Type": r.headers.get("Content-Type", "")})
        resp.content_length = r.content_length
        await resp.prepare(request)
        async for chunk in r.content.iter_any():
            await resp.write(chunk)
        return resp
async def session_ctx(app):
    app["session"] = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=100))
    yield
    await app["session"].close()
app = web.Application()
app.cleanup_ctx.append(session_ctx)
app.router.add_route("*", "/{tail:.*}", handle)
import uvloop
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())
"""

# An OTLP receiver that takes the batches and discards them: decoding them (as the tests'
# receiver does) would load the load core and slow wrk and the upstream, not the proxy.
SINK = """
import sys
from aiohttp import web
async def traces(request):
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def vitalgate_config(
    work: Path,
    name: str,
    upstream_port: int,
    sink_port: int,
    ratio: float,
    inspect: bool = True,
    total_timeout_s: float = 30.0,
    connect_timeout_s: float = 2.0,
    audit: str | None = None,
    probed: int = 0,
) -> tuple[Path, int]:
    """A gateway config; ``audit`` (``batched`` or ``strict``) adds an audit trail with keys of
    its own; ``probed`` adds that many facilities, each probed every 30 s."""
    port = free_port()
    cfg = work / f"{name}.yaml"
    audit_section = ""
    if audit is not None:
        from gateway.audit.keys import keygen

        keygen(work / f"keys-{name}")
        audit_section = (
            f"audit: {{path: {work / ('audit-' + name)}, key_file: {work / f'keys-{name}' / 'audit.key'},"
            f" signing_key_file: {work / f'keys-{name}' / 'audit-signing.key'}, durability: {audit}}}\n"
        )
    extra = [f"site-{i:03d}" for i in range(probed)]
    extra_known = "".join(f", {f}: {{name: {f}}}" for f in extra)
    probes = (
        f"probes: [{{upstream: fhir, interval: 30s, facilities: [{', '.join(extra)}]}}]\n" if probed else ""
    )
    cfg.write_text(
        f"""version: 1
listen: "127.0.0.1:{port}"
admin: {{listen: "127.0.0.1:{free_port()}"}}
upstreams:
  fhir: {{url: "http://127.0.0.1:{upstream_port}", max_connections: 100, timeout: {{connect: {connect_timeout_s:g}s, total: {total_timeout_s:g}s}}}}
routes: [{{prefix: /fhir/, upstream: fhir, kind: fhir{"" if inspect else ", rewrite_max_bytes: 0"}}}]
facilities:
  from: [{{header: X-Facility-ID}}]
  known: {{st-marys: {{name: "St Mary's"}}, riverside: {{name: Riverside}}{extra_known}}}
telemetry:
  access_log: {{path: {work / (name + ".log")}}}
  store: {{path: {work / (name + ".db")}}}
  traces: {{otlp_endpoint: "http://127.0.0.1:{sink_port}", sample_ratio: {ratio}}}
"""
        + audit_section
        + probes
    )
    return cfg, port


Targets = dict[str, tuple[str, int | None]]
"""name -> (URL, pid of the proxy whose CPU is counted; None: no proxy)."""


def _start_targets(
    work: Path,
    nginx: str,
    workers: int,
    procs: dict[str, subprocess.Popen[bytes]],
    audit: bool = False,
    probes: int = 0,
) -> tuple[Targets, list[int]]:
    """The upstream, the sink and every proxy compared, started into ``procs``; the targets
    and the ports to wait for."""
    up_port, nginx_port, bare_port, sink_port = free_port(), free_port(), free_port(), free_port()
    up_conf = nginx_conf(
        work,
        f"server {{ listen 127.0.0.1:{up_port}; root {work};"
        " location / { default_type application/fhir+json;"
        " try_files /patient.json =404; } }",
    )
    procs["upstream"] = start([nginx, "-p", str(work), "-c", str(up_conf)], LOAD_CORE)
    px_conf = nginx_conf(
        work,
        f"upstream backend {{ server 127.0.0.1:{up_port}; keepalive 64; }}\n"
        f"server {{ listen 127.0.0.1:{nginx_port};"
        " location / { proxy_pass http://backend; proxy_http_version 1.1;"
        ' proxy_set_header Connection ""; } }',
    )
    procs["nginx proxy"] = start([nginx, "-p", str(work), "-c", str(px_conf)], PROXY_CORE)
    (work / "bare.py").write_text(BARE_PROXY)
    procs["bare aiohttp proxy"] = start(
        [sys.executable, str(work / "bare.py"), str(bare_port), f"http://127.0.0.1:{up_port}"], PROXY_CORE
    )
    (work / "sink.py").write_text(SINK)
    procs["sink"] = start([sys.executable, str(work / "sink.py"), str(sink_port)], LOAD_CORE)
    path = "/fhir/Patient/123"
    targets: Targets = {
        "direct (nginx upstream)": (f"http://127.0.0.1:{up_port}{path}", None),
        "nginx proxy": (f"http://127.0.0.1:{nginx_port}{path}", procs["nginx proxy"].pid),
        "bare aiohttp proxy": (f"http://127.0.0.1:{bare_port}{path}", procs["bare aiohttp proxy"].pid),
    }
    gateways: list[tuple[str, str, float, int, str, str | None]] = [
        (name, name.split()[-1].rstrip(")"), ratio, 0, PROXY_CORE, None)
        for name, ratio in (("vitalgate (sample 1.0)", 1.0), ("vitalgate (sample 0.1)", 0.1))
    ]
    if probes:
        gateways.append((f"vitalgate {probes} probed", "probed", 1.0, 0, PROXY_CORE, None))
    if audit:
        gateways += [
            (f"vitalgate audit {d}", f"audit-{d}", 1.0, 0, PROXY_CORE, d) for d in ("batched", "strict")
        ]
        gateways.append((AUDIT_ONE_CORE, "audit-one-core", 1.0, 0, PROXY_CORE, "batched"))
    if workers:
        # Both unpinned: the kernel may use both cores (shared with wrk and the upstream).
        gateways += [(f"vitalgate x{n} unpinned", f"w{n}", 1.0, n, "0-1", None) for n in (1, workers)]
    for name, tag, ratio, n, cores, durability in gateways:
        cfg, port = vitalgate_config(
            work, tag, up_port, sink_port, ratio, audit=durability, probed=probes if tag == "probed" else 0
        )
        cmd = [sys.executable, "-m", "vitalgate", "serve", "--config", str(cfg)]
        procs[name] = start([*cmd, "--workers", str(n)] if n else cmd, cores)
        targets[name] = (f"http://127.0.0.1:{port}{path}", procs[name].pid)
    return targets, [up_port, nginx_port, bare_port, sink_port]


def audit_writer(gateway_pid: int) -> int | None:
    """The audit writer process a gateway process started (``gateway.audit.writer``)."""
    for child in Path(f"/proc/{gateway_pid}/task/{gateway_pid}/children").read_text().split():
        if b"gateway.audit.writer" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    return None


def pin_audit_writers(targets: Targets) -> None:
    """Each audit writer onto the load core, beside the other processes that are not the proxy
    (the sink, the upstream), except in ``AUDIT_ONE_CORE``: there it shares the proxy's core.
    Its CPU is counted with the gateway's either way (``cpu_ticks`` reads the children)."""
    for name, (_, pid) in targets.items():
        writer = audit_writer(pid) if pid is not None and name.startswith("vitalgate audit") else None
        if writer is not None and name != AUDIT_ONE_CORE:
            subprocess.run(["taskset", "-pc", LOAD_CORE, str(writer)], check=True, stdout=subprocess.DEVNULL)


def _measure(
    targets: Targets, upstream_pid: int, rounds: int, seconds: float, connections: int
) -> dict[str, list[Result]]:
    """Interleaved rounds of wrk against every target, after a warm-up of each."""
    headers = {"X-Facility-ID": "st-marys", "Accept": "application/fhir+json"}
    samples: dict[str, list[Result]] = {name: [] for name in targets}
    for url, _ in targets.values():  # warm-up: connection pools, first-call paths
        run_wrk(url, 1, connections, headers)
    for r in range(rounds):
        for name, (url, pid) in targets.items():
            # For a proxy, the process children's and threads' CPU is counted; the
            # direct target has no proxy, so its CPU figure is the upstream's.
            pid_for_cpu = pid if pid is not None else upstream_pid
            c0 = cpu_ticks(pid_for_cpu)
            rps, p50, p99, errors = run_wrk(url, seconds, connections, headers)
            cpu_s = (cpu_ticks(pid_for_cpu) - c0) / TICKS
            n = rps * seconds
            samples[name].append(Result(name, rps, p50, p99, cpu_s / n * 1e6 if n else 0.0, errors))
            print(f"round {r + 1}/{rounds}  {name:<26} {rps:>9.0f} req/s", file=sys.stderr)
    return samples


def _median_results(samples: dict[str, list[Result]]) -> dict[str, Result]:
    return {
        name: Result(
            name,
            statistics.median(s.rps for s in rs),
            statistics.median(s.p50_ms for s in rs),
            statistics.median(s.p99_ms for s in rs),
            statistics.median(s.cpu_us_per_req for s in rs),
            sum(s.errors for s in rs),
        )
        for name, rs in samples.items()
    }


def _print_table(results: dict[str, Result]) -> None:
    nginx_rps = results["nginx proxy"].rps
    bare_rps = results["bare aiohttp proxy"].rps
    print(
        f"{'target':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'x nginx':>9}{'x bare':>8}{'errors':>8}"
    )
    for r_ in results.values():
        print(
            f"{r_.target:<26}{r_.rps:>10.0f}{r_.p50_ms:>9.2f}{r_.p99_ms:>9.2f}{r_.cpu_us_per_req:>12.1f}"
            f"{r_.rps / nginx_rps:>9.2f}{r_.rps / bare_rps:>8.2f}{r_.errors:>8}"
        )
    print("\n(CPU us/req of 'direct' is the nginx upstream's own cost.)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON here")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also run vitalgate --workers N (sample 1.0) against 1 worker, both unpinned",
    )
    parser.add_argument(
        "--audit",
        action="store_true",
        help="also run vitalgate (sample 1.0) with the audit trail, batched and strict",
    )
    parser.add_argument(
        "--probes",
        type=int,
        default=0,
        help="also run vitalgate (sample 1.0) with N more facilities, each probed every 30 s",
    )
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required: scripts/install-system-deps bench")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        sys.exit("nginx is required: scripts/install-system-deps bench")

    work = Path(tempfile.mkdtemp(prefix="vitalgate-bench-"))
    os.chmod(work, 0o755)  # noqa: S103  nginx workers (user root) and the sink read it
    body = json.dumps(PATIENT, indent=1).encode()
    (work / "patient.json").write_bytes(body)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        targets, ports = _start_targets(work, nginx, args.workers, procs, args.audit, args.probes)
        for port in ports:
            wait_port(port)
        for url, _ in targets.values():
            wait_port(int(url.split(":")[2].split("/")[0]))
        pin_audit_writers(targets)
        samples = _measure(targets, procs["upstream"].pid, args.rounds, args.seconds, args.connections)
    finally:
        stop_all(procs.values())
    results = _median_results(samples)
    print(
        f"\nmedian of {args.rounds} interleaved rounds, {args.seconds:.0f} s each, "
        f"wrk -t1 -c{args.connections}; proxy on core {PROXY_CORE}, wrk+upstream on core {LOAD_CORE}; "
        f"{len(body)} B JSON body\n"
    )
    _print_table(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results.values()], indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
