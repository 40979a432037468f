"""``vitalgate demo``: the gateway in front of a demo clinical upstream, with traffic.

In one process tree: a FHIR-like upstream with scripted per-facility faults,
the gateway (a ``vitalgate serve`` child process), an OTLP receiver for its
traces, and a traffic generator for several facilities that sends realistic
FHIR calls, PHI-like search parameters and bodies included, on behalf of
clinicians named in a header the gateway's audit trail believes. A live
table, read from the gateway's own ``/metrics``, shows each facility's
requests/s, error rate and p95 latency.

Everything lands in one folder: the config, the access log, traces, the final
metrics, the embedded store, the audit trail (with keys generated into
``keys/`` on the first run), the generated alert rules and dashboards. Ctrl-C
ends the traffic early and still writes all of it; the closing summary names
only what works once the demo has stopped, each with a command to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo

import aiohttp
import yaml
from aiohttp import web

from core import conventions as names
from dashboards.provisioning import GRAFANA_PROVISIONING
from gateway.audit.keys import DATA_KEY, SIGNING_KEY, AuditKeyError, Keyring, keygen, read_signing_key
from gateway.audit.search import counted
from gateway.audit.verify import published_checkpoints, verify
from gateway.settings import data_key_paths
from slo.embedded import EmbeddedBackend
from slo.status import compute_status, now_utc, sort_worst_first, to_table
from slo.store import Store
from vitalgate.config import load_config
from vitalgate.demo_metrics import Snapshot, quantile, read_snapshot, scrape
from vitalgate.generate import unrouted_warning, write_alerts, write_all_dashboards
from vitalgate.otlpsink import OtlpSink
from vitalgate.peers import UpstreamPeer, free_port, operation_outcome, reset

FACILITIES = {
    "st-marys": {"name": "St Mary's", "timezone": "America/Chicago", "sla": 99.9},
    "riverside": {"name": "Riverside", "timezone": "America/New_York", "sla": 99.5},
    "lakeside": {"name": "Lakeside Clinic", "timezone": "America/Denver", "sla": 99.5},
    "northgate": {"name": "Northgate", "timezone": "Europe/London", "sla": 99.0},
}
FAMILY = ["Garcia", "Okafor", "Lindqvist", "Nakamura", "Haddad", "Kowalski", "Brennan"]
GIVEN = ["Amara", "Jonas", "Priya", "Mateo", "Ingrid", "Kofi", "Sofia"]
USERS = ["dr-abebe", "dr-moreau", "nurse-tanaka", "nurse-oduya", "pharm-ruiz"]
"""Clinicians the traffic acts for: named only in the audit trail, never in telemetry."""
USER_HEADER = "X-Authenticated-User"
"""Set by the demo's client, which plays the authenticating proxy the audit trail trusts."""
KEYS_DIR = "keys"
AUDIT_DIR = "audit"


@dataclass(frozen=True)
class Fault:
    facility: str
    kind: str  # "errors" | "latency" | "down"
    start_s: float
    end_s: float


def fault_script(duration_s: float) -> list[Fault]:
    """The scripted faults, placed as fractions of the run so any --duration shows them all."""
    d = duration_s
    down = min(60.0, 0.3 * d)
    return [
        Fault("riverside", "errors", 0.20 * d, 0.35 * d),
        Fault("lakeside", "latency", 0.40 * d, 0.60 * d),
        Fault("northgate", "down", 0.62 * d, 0.62 * d + down),
    ]


class DemoUpstream(UpstreamPeer):
    """A FHIR-like server that misbehaves on schedule for some facilities."""

    max_body = 32 * 1024 * 1024

    def __init__(self, faults: list[Fault], t0: float) -> None:
        self.faults = faults
        self.t0 = t0

    def _active(self, facility: str) -> str | None:
        now = time.monotonic() - self.t0
        for f in self.faults:
            if f.facility == facility and f.start_s <= now < f.end_s:
                return f.kind
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.can_read_body:
            await request.read()
        fault = self._active(request.headers.get("X-Facility-ID", ""))
        await asyncio.sleep(random.uniform(0.002, 0.02))
        if fault == "latency":
            await asyncio.sleep(random.uniform(0.3, 0.9))
        if fault == "errors" and random.random() < 0.35:
            if random.random() < 0.15:
                return reset(request)
            return web.json_response(operation_outcome("exception", "database unavailable"), status=500)
        if fault == "down":
            return web.json_response(operation_outcome("transient", "service unavailable"), status=503)
        path = request.path
        if path.endswith("/metadata"):
            return web.json_response(
                {"resourceType": "CapabilityStatement", "status": "active", "fhirVersion": "4.0.1"}
            )
        if request.method == "POST":
            return web.json_response(
                {"resourceType": "Patient", "id": str(random.randint(1000, 9999))}, status=201
            )
        if "?" in request.path_qs or path.rstrip("/").endswith(
            ("Observation", "Patient", "Appointment", "appointments")
        ):
            return web.json_response({"resourceType": "Bundle", "type": "searchset", "total": 3, "entry": []})
        return web.json_response({"resourceType": "Patient", "id": path.rsplit("/", 1)[-1], "active": True})


def write_demo_config(
    out: Path, gateway_port: int, admin_port: int, upstream_port: int, otlp_port: int
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    gateway = {
        "version": 1,
        "listen": f"127.0.0.1:{gateway_port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "upstreams": {
            "fhir": {
                "url": f"http://127.0.0.1:{upstream_port}",
                "timeout": {"connect": "1s", "total": "5s"},
            },
            "scheduling": {
                "url": f"http://127.0.0.1:{upstream_port}",
                "timeout": {"connect": "1s", "total": "5s"},
            },
        },
        "routes": [
            {"prefix": "/fhir/", "upstream": "fhir", "kind": "fhir"},
            {
                "prefix": "/scheduling/",
                "upstream": "scheduling",
                "templates": ["/scheduling/appointments", "/scheduling/appointments/{id}"],
            },
        ],
        "facilities": {"from": [{"header": "X-Facility-ID"}], "known": FACILITIES},
        "telemetry": {
            "access_log": {"path": "access.log"},
            "traces": {"otlp_endpoint": f"http://127.0.0.1:{otlp_port}", "sample_ratio": 1.0},
            "store": {"path": "vitalgate.db"},
        },
        "audit": {
            "path": AUDIT_DIR,
            "key_file": f"{KEYS_DIR}/{DATA_KEY}",
            "signing_key_file": f"{KEYS_DIR}/{SIGNING_KEY}",
            "identity": {"header": USER_HEADER, "trusted_sources": ["127.0.0.1/32"]},
            "checkpoint_interval": "5s",
        },
        "slos": "slos.yaml",
    }
    slos = {
        "version": 1,
        "slos": [
            {
                "name": "fhir-availability",
                "service": "fhir",
                "objective": 99.9,
                "window": "30d",
                "sli": {"availability": {}},
            },
            {
                "name": "fhir-read-latency",
                "service": "fhir",
                "objective": 99,
                "window": "30d",
                "filter": {"methods": ["GET"]},
                "sli": {"latency": {"threshold": "300ms"}},
            },
        ],
    }
    header = "# Written by `vitalgate demo`; edit a copy, not this file.\n"
    (out / "gateway.yaml").write_text(header + yaml.safe_dump(gateway, sort_keys=False))
    (out / "slos.yaml").write_text(header + yaml.safe_dump(slos, sort_keys=False))
    return out / "gateway.yaml"


def demo_request(rng: random.Random) -> tuple[str, str, dict[str, str], bytes | None]:
    """One realistic FHIR or scheduling call: method, path, extra headers, body."""
    pid = rng.randint(10000, 99999)
    family, given = rng.choice(FAMILY), rng.choice(GIVEN)
    birth = f"19{rng.randint(30, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    r = rng.random()
    if r < 0.35:
        return "GET", f"/fhir/Patient/{pid}", {}, None
    if r < 0.55:
        return (
            "GET",
            f"/fhir/Patient?family={family}&given={given}&birthdate={birth}&_count=10",
            {},
            None,
        )
    if r < 0.70:
        return (
            "GET",
            f"/fhir/Observation?subject=Patient/{pid}&category=vital-signs&_count=50",
            {},
            None,
        )
    if r < 0.78:
        body = {
            "resourceType": "Patient",
            "name": [{"family": family, "given": [given]}],
            "birthDate": birth,
            "identifier": [{"system": "urn:mrn", "value": f"MRN{pid}"}],
        }
        return (
            "POST",
            "/fhir/Patient",
            {"Content-Type": "application/fhir+json"},
            json.dumps(body).encode(),
        )
    if r < 0.84:
        return "GET", f"/fhir/Patient/{pid}/$everything", {}, None
    if r < 0.88:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": []}
        return (
            "POST",
            "/fhir/",
            {"Content-Type": "application/fhir+json"},
            json.dumps(bundle).encode(),
        )
    if r < 0.92:
        return "GET", "/fhir/metadata", {}, None
    if r < 0.97:
        return "GET", f"/scheduling/appointments/{pid}", {}, None
    return "GET", f"/scheduling/appointments?patient={family}", {}, None


async def traffic(
    base: str, rate: float, duration_s: float, stop: asyncio.Event | None = None, seed: int = 7
) -> dict[str, int]:
    """Send about ``rate`` requests/s for ``duration_s`` (or until ``stop``); returns requests
    sent per facility, every one of them answered or failed."""
    rng = random.Random(seed)
    sent: dict[str, int] = defaultdict(int)
    facilities = list(FACILITIES)
    weights = [0.35, 0.25, 0.2, 0.15]
    sem = asyncio.Semaphore(64)
    timeout = aiohttp.ClientTimeout(total=10)
    tasks: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, facility: str | None) -> None:
        method, path, headers, body = demo_request(rng)
        hdrs = {"Authorization": "Bearer demo-token-not-logged", USER_HEADER: rng.choice(USERS), **headers}
        if facility is not None:
            hdrs["X-Facility-ID"] = facility
        async with sem:
            # The demo's own client: a failed request is the gateway's to record (it counts and
            # logs every one), not the traffic generator's.
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.request(method, base + path, headers=hdrs, data=body) as resp:
                    await resp.read()

    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.monotonic()
        n = 0
        while (now := time.monotonic() - t0) < duration_s and not (stop is not None and stop.is_set()):
            due = int(now * rate)
            while n < due:
                n += 1
                facility: str | None = rng.choices(facilities, weights)[0]
                if rng.random() < 0.04:
                    facility = rng.choice([None, "St-Unlisted-Hospital"])  # becomes "unknown"
                sent[facility if facility in FACILITIES else "unknown"] += 1
                task = asyncio.create_task(one(session, facility))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.01)
        if tasks:
            await asyncio.gather(*tasks)
    return dict(sent)


def render_table(
    prev: Snapshot, cur: Snapshot, dt: float, elapsed: float, duration: float, faults: list[Fault]
) -> str:
    lines = [
        f"vitalgate demo  {elapsed:5.0f}s / {duration:.0f}s   (live, from the gateway's /metrics)",
        "",
        f"{'facility':<14}{'req/s':>8}{'error %':>10}{'p95 ms':>10}{'requests':>10}   now",
    ]
    for fac in [*FACILITIES, "unknown"]:
        d_total = cur.total.get(fac, 0.0) - prev.total.get(fac, 0.0)
        d_err = cur.errors.get(fac, 0.0) - prev.errors.get(fac, 0.0)
        d_buckets = {
            le: c - prev.buckets.get(fac, {}).get(le, 0.0) for le, c in cur.buckets.get(fac, {}).items()
        }
        p95 = quantile(0.95, d_buckets)
        active = [f.kind for f in faults if f.facility == fac and f.start_s <= elapsed < f.end_s]
        err = f"{100 * d_err / d_total:.1f}" if d_total else "-"
        p95s = f"{p95 * 1000:.0f}" if p95 is not None else "-"
        lines.append(
            f"{fac:<14}{d_total / dt:>8.1f}{err:>10}{p95s:>10}{cur.total.get(fac, 0):>10.0f}   "
            f"{'FAULT: ' + active[0] if active else ''}"
        )
    return "\n".join(lines)


@dataclass
class Run:
    """What one demo run produced, for its summary."""

    sent: dict[str, int]
    final: Snapshot
    elapsed_s: float
    interrupted: bool
    n_spans: int
    started: datetime
    gateway_ok: bool


def prepare_audit(out: Path) -> None:
    """Keys on the first run (kept after: a trail is unreadable without its key), and a fresh
    trail each run, as the access log its checkpoints are published in starts afresh."""
    keys = out / KEYS_DIR
    if not (keys / DATA_KEY).exists():
        keygen(keys)
    shutil.rmtree(out / AUDIT_DIR, ignore_errors=True)


def _fresh_folder(out: Path) -> bool:
    """The output folder without the last run's logs, traces and metrics, with audit keys and
    an empty trail; False (said on stderr) when the keys cannot be made or read."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("access.log", "traces.jsonl", "gateway.stderr", "metrics.txt"):
        (out / name).unlink(missing_ok=True)
    try:
        prepare_audit(out)
    except (AuditKeyError, OSError) as exc:
        print(f"vitalgate demo: audit keys in {out / KEYS_DIR}: {exc}", file=sys.stderr)
        return False
    return True


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    """One of the demo's peers (the upstream, the OTLP receiver) listening on ``port``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _start_gateway(config_path: Path, output: IO[str]) -> asyncio.subprocess.Process:
    """``vitalgate serve`` as a child, its output to ``output``. In its own session: a Ctrl-C
    in the terminal reaches the demo, which stops the gateway itself once the last metrics are
    read (the gateway would otherwise drain at once)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vitalgate",
        "serve",
        "--config",
        str(config_path),
        stdout=output,
        stderr=output,
        start_new_session=True,
    )


async def _demo(duration_s: float, out: Path, rate: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def interrupted() -> None:
        # The first Ctrl-C ends the traffic and the demo writes what it has; the handler goes,
        # so a second one interrupts at once.
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)
        print(
            "\nvitalgate demo: stopping early: writing what was recorded (Ctrl-C again to quit now)",
            file=sys.stderr,
            flush=True,
        )

    loop.add_signal_handler(signal.SIGINT, interrupted)
    if not _fresh_folder(out):
        return 1
    ports = [free_port() for _ in range(4)]
    gw_port, admin_port, up_port, otlp_port = ports
    config_path = write_demo_config(out, gw_port, admin_port, up_port, otlp_port)
    faults = fault_script(duration_s)
    t0 = time.monotonic()
    upstream = DemoUpstream(faults, t0)
    sink = OtlpSink(out_file=out / "traces.jsonl")
    runners = [await _serve(upstream.app(), up_port), await _serve(sink.app(), otlp_port)]
    stderr = (out / "gateway.stderr").open("w")
    started = datetime.now(UTC).replace(microsecond=0)
    proc = await _start_gateway(config_path, stderr)
    admin = f"http://127.0.0.1:{admin_port}"
    sent: dict[str, int] = {}
    cur = Snapshot({}, {}, {})
    t_traffic = time.monotonic()
    try:
        async with aiohttp.ClientSession() as session:
            if not await _ready(session, admin, proc, stop):
                print(f"vitalgate demo: the gateway exited; see {out / 'gateway.stderr'}", file=sys.stderr)
                return 1
            upstream.t0 = t_traffic = time.monotonic()
            gen = asyncio.create_task(traffic(f"http://127.0.0.1:{gw_port}", rate, duration_s, stop))
            cur, metrics_text = await _show_while(gen, session, admin, upstream.t0, duration_s, faults)
            sent = gen.result()
            (out / "metrics.txt").write_text(metrics_text)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        stderr.close()
        await asyncio.sleep(0.6)  # the last span export
        for runner in runners:
            await runner.cleanup()
    run = Run(
        sent,
        cur,
        time.monotonic() - t_traffic,
        stop.is_set(),
        len(sink.spans),
        started,
        proc.returncode == 0,
    )
    _summary(out, config_path, run, duration_s)
    return 0 if run.gateway_ok else 1


async def _ready(
    session: aiohttp.ClientSession, admin: str, proc: asyncio.subprocess.Process, stop: asyncio.Event
) -> bool:
    """Wait (up to 10 s, or a Ctrl-C) for the gateway's /readyz; False if it exited first."""
    for _ in range(100):
        if stop.is_set():
            return True
        with contextlib.suppress(aiohttp.ClientError):  # not listening yet
            async with session.get(f"{admin}/readyz") as r:
                if r.status == 200:
                    return True
        if proc.returncode is not None:
            return False
        await asyncio.sleep(0.1)
    return True  # still starting: the traffic will say what is wrong


async def _show_while(
    gen: asyncio.Task[dict[str, int]],
    session: aiohttp.ClientSession,
    admin: str,
    t0: float,
    duration_s: float,
    faults: list[Fault],
) -> tuple[Snapshot, str]:
    """Redraw the per-facility table every 2 s from /metrics until the traffic is done; the
    last snapshot and text are read after it ended (also when it ended before a redraw)."""
    tty = sys.stdout.isatty()
    prev, prev_t = Snapshot({}, {}, {}), time.monotonic()
    cur, metrics_text = prev, ""
    while True:
        if not gen.done():
            await asyncio.wait({gen}, timeout=2.0)
        done = gen.done()  # this scrape is then after the last request: the final figures
        text = await scrape(session, admin)
        if text is not None:
            metrics_text, cur = text, read_snapshot(text)
            now = time.monotonic()
            table = render_table(prev, cur, max(now - prev_t, 1e-3), now - t0, duration_s, faults)
            print(("\x1b[2J\x1b[H" if tty else "\n") + table, flush=True)
            prev, prev_t = cur, now
        if done:
            return cur, metrics_text


def _command() -> str:
    """How to run ``vitalgate`` as this demo was run: the bare name when that is what the shell
    finds, else the path of the one installed beside this Python, else ``python -m``."""
    beside = Path(sys.executable).parent / "vitalgate"
    if not beside.exists():
        return f"{shlex.quote(sys.executable)} -m vitalgate"
    found = shutil.which("vitalgate")
    if found is not None and Path(found).resolve() == beside.resolve():
        return "vitalgate"
    return shlex.quote(str(beside))


def _audit_summary(config_path: Path) -> str:
    """The trail's record count, verified as `audit verify` does (or what is wrong with it)."""
    config = load_config(config_path)
    audit = config.gateway.audit
    assert audit is not None  # the demo's config has one
    log = config.resolve(config.gateway.telemetry.access_log.path)
    try:
        with log.open(encoding="utf-8", errors="replace") as f:
            anchors = published_checkpoints(f)
        report = verify(
            config.resolve(audit.path),
            Keyring.load(data_key_paths(config, audit)),
            read_signing_key(config.resolve(audit.signing_key_file)).public_key(),
            anchors,
        )
    except (AuditKeyError, OSError) as exc:
        return f"cannot be read: {exc}"
    if report.problem is not None:
        return f"BAD: {report.problem}"
    return f"{counted(report.records, 'record')}, chain verified"


def _summary(out: Path, config_path: Path, run: Run, duration_s: float) -> None:
    config = load_config(config_path)
    print()
    if run.interrupted:
        print(
            f"Stopped by Ctrl-C after {run.elapsed_s:.0f}s of {duration_s:.0f}s of traffic: "
            "what was recorded is all written."
        )
    print(f"{'facility':<14}{'sent':>8}{'counted':>9}{'errors':>8}")
    for fac in [*FACILITIES, names.UNKNOWN_FACILITY]:
        counted, errors = run.final.total.get(fac, 0), run.final.errors.get(fac, 0)
        print(f"{fac:<14}{run.sent.get(fac, 0):>8}{counted:>9.0f}{errors:>8.0f}")
    _, n_rules = write_alerts(config, out / "alerts")
    write_all_dashboards(config, out / "grafana")
    q = shlex.quote
    vg = _command()
    cfg = q(str(config_path))
    routed = (
        ""
        if unrouted_warning(config) is None
        else " (the demo has no alerting: section: pages would reach nobody, as its header says)"
    )
    print()
    print(f"In {out} (the gateway has stopped; these stay):")
    print(f"  Config:   {config_path}, slos.yaml")
    print(f"  Logs:     {out / 'access.log'} (one JSON line per request; trace_id links to the spans)")
    print(f"            {out / 'gateway.stderr'} (the gateway's own diagnostics, one JSON line each)")
    store = config.resolve(config.gateway.telemetry.store.path)
    print(f"  Store:    {store} (the embedded store the commands below read)")
    print(f"  Traces:   {out / 'traces.jsonl'} ({run.n_spans} spans received over OTLP/HTTP protobuf)")
    print(f"  Metrics:  {out / 'metrics.txt'} (the gateway's /metrics at the end)")
    print(
        f"  Alerts:   {out / 'alerts'}/rules.yaml ({n_rules} Prometheus rules), "
        f"alertmanager.yml, tests/{routed}"
    )
    print(f"  Grafana:  {out / 'grafana'}/json/ (dashboards), provisioning/ (onto {GRAFANA_PROVISIONING}/)")
    print(f"  Audit:    {out / AUDIT_DIR}/ ({_audit_summary(config_path)}; keys in {out / KEYS_DIR}/)")
    print()
    print("SLOs per facility (embedded store, worst budget first):")
    print(slo_table(config_path))
    facility = "riverside"
    period = datetime.now(ZoneInfo(FACILITIES[facility]["timezone"])).strftime("%Y-%m")  # type: ignore[arg-type]
    since = run.started.isoformat().replace("+00:00", "Z")
    print()
    print("Next, from this folder's files (the gateway need not run):")
    print(f"  {vg} slo status --config {cfg}")
    pdf = q(str(out / f"{facility}.pdf"))
    print(f"  {vg} report --config {cfg} --facility {facility} --period {period} --out {pdf}")
    print("The compliance officer's view: who did what to which patient, and the trail's integrity:")
    print(f"  {vg} audit search --config {cfg} --facility {facility} --since {since}")
    print(f"  {vg} audit verify --config {cfg}")
    print("The status pages and reports in a browser: start the gateway on the recorded store,")
    print(f"  {vg} serve --config {cfg}")
    admin = config.gateway.admin.listen
    print(f"  then open http://{admin}/ui (reports: http://{admin}/api/v1/reports/{facility}/{period}.pdf)")


def slo_table(config_path: Path) -> str:
    config = load_config(config_path)
    store = Store(config.resolve(config.gateway.telemetry.store.path), readonly=True)
    try:
        rows = compute_status(config.slos, config.facilities(), EmbeddedBackend(store), now_utc())
    finally:
        store.close()
    return to_table(sort_worst_first(rows))


def run_demo(duration_s: float, out_dir: Path, rate: float) -> int:
    out = out_dir.resolve()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return asyncio.run(_demo(duration_s, out, rate))
    except KeyboardInterrupt:
        print("vitalgate demo: interrupted twice: stopped at once", file=sys.stderr)
        return 130
