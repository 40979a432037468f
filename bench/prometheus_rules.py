"""What the generated SLO rules cost a real Prometheus, at sizes a deployment reaches.

For each ``--size FACILITIES x ROUTES x DAYS``: synthetic history in the gateway's label
schema (one sample a minute; Poisson traffic with a daily cycle; incidents; counter resets
for 2% of the facilities; 5xx series born late) is backfilled with ``promtool tsdb
create-blocks-from openmetrics``; a small exporter then continues every counter from where
the history ends, scraped every 15 s, so the rules read live data as well as history.
Prometheus (the Debian binary) runs the rules ``vitalgate alerts generate`` writes for four
SLOs (30-day availability, 28-day latency, a calendar month, 30-day timeslices) with their
own group intervals, and the benchmark reports, per group, the evaluation time
(``/api/v1/rules``, polled; median and max), missed iterations, and Prometheus' CPU and RSS.

The long windows sum the one-minute tiles the first group records. History has no tiles
(Prometheus did not run then), so the benchmark writes them with the history: per facility,
the exact minute counts of the synthetic traffic it generated, which is what the tile rules
record (``tests/alerts/test_exactness.py`` checks that on promtool's engine). ``--rules
FILE`` runs another rules file on the same data instead (for example the rules of an
earlier version, to compare).

    python -m bench.prometheus_rules [--size 50x5x1 --size 50x20x1 --size 50x5x3 --size 200x5x3]
                                     [--measure 240] [--rules FILE] [--keep DIR]

The first two sizes differ in raw series only (the long groups' cost must not follow), the
first and third in history only (it may grow at most linearly), the last is the largest.

Results go in the issue note, never into test assertions.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from alerts.rules import RuleOptions, build_rules, render
from core import conventions as names
from slo.prometheus import PrometheusBackend, PrometheusError
from slo.spec import Facility, Slo, load_slos
from slo.status import compute_status

METRIC = "http_server_request_duration_seconds"
STATUSES = (200, 201, 404, 500)
THRESHOLD_LE = "0.3"
SCRAPE_S = 15
MINUTE_MS = 60_000
TICKS = os.sysconf("SC_CLK_TCK")
SLOS_YAML = """version: 1
slos:
  - {name: fhir-availability, service: fhir, objective: 99.9, window: 30d, sli: {availability: {}}}
  - name: fhir-latency
    service: fhir
    objective: 99
    window: 28d
    filter: {methods: [GET]}
    sli: {latency: {threshold: 300ms}}
  - {name: fhir-monthly, service: fhir, objective: 99.5, window: {calendar: month}, sli: {availability: {}}}
  - name: fhir-minutes
    service: fhir
    objective: 99
    window: 30d
    sli: {availability: {}}
    budgeting: timeslices
    timeslice: {target: 95}
"""


@dataclass(frozen=True)
class Size:
    facilities: int
    routes: int
    days: int

    @classmethod
    def parse(cls, text: str) -> Size:
        f, r, d = (int(x) for x in text.lower().split("x"))
        return cls(f, r, d)

    def __str__(self) -> str:
        return f"{self.facilities} x {self.routes}, {self.days} d"


@dataclass
class History:
    """Per label set: labels, per-minute counts (all and fast), and the values where it ends."""

    labels: list[dict[str, str]]
    counts: npt.NDArray[np.int64]
    fast: npt.NDArray[np.int64]
    resets: dict[int, int]
    """Label set -> the minute its gateway restarted (its counters from zero again)."""
    born: npt.NDArray[np.int64]
    """Label set -> its first minute with a request (no samples before)."""


def _history(size: Size, rng: np.random.Generator) -> History:
    minutes = size.days * 1440
    labels: list[dict[str, str]] = []
    rates: list[float] = []
    for f in range(size.facilities):
        scale = rng.uniform(0.2, 3.0)
        for r in range(size.routes):
            for status in STATUSES:
                share = {200: 0.8, 201: 0.1, 404: 0.05, 500: 0.002}[status]
                labels.append(
                    {
                        "facility": f"facility-{f:03d}",
                        "service": "fhir",
                        "http_route": f"/fhir/Resource{r}/{{id}}",
                        "http_request_method": "POST" if status == 201 else "GET",
                        "http_response_status_code": str(status),
                        "instance": "gateway-a:9464",
                        "job": "vitalgate",
                    }
                )
                rates.append(20.0 * scale * share)
    day = np.arange(minutes) % 1440
    cycle = 0.3 + 0.7 * np.sin(np.pi * day / 1440) ** 2  # quiet nights, busy days
    lam = np.asarray(rates)[:, None] * cycle[None, :]
    for f in rng.choice(size.facilities, max(1, size.facilities // 10), replace=False):
        # An incident: an hour of one facility's requests at 20x the 5xx rate.
        start = int(rng.integers(0, minutes - 60))
        rows = [i for i, lab in enumerate(labels) if lab["facility"] == f"facility-{f:03d}"]
        for i in rows:
            if labels[i]["http_response_status_code"] == "500":
                lam[i, start : start + 60] *= 20
    counts = rng.poisson(lam).astype(np.int64)
    fast = rng.binomial(counts, 0.97).astype(np.int64)
    # 5xx series are born where their first request falls, not at the start.
    born = np.where(counts.any(axis=1), counts.argmax(axis=1), minutes).astype(np.int64)
    resets: dict[int, int] = {}
    for f in rng.choice(size.facilities, max(1, size.facilities // 50), replace=False):
        minute = int(rng.integers(60, minutes - 60))
        for i, lab in enumerate(labels):
            if lab["facility"] == f"facility-{f:03d}":
                resets[i] = minute
    return History(labels, counts, fast, resets, born)


def _cumulative(row: npt.NDArray[np.int64], reset: int | None) -> npt.NDArray[np.int64]:
    out = np.cumsum(row)
    if reset is not None:
        out[reset:] -= out[reset - 1]
    return out


def _label_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def _write_openmetrics(
    h: History, slos: list[Slo], start_ms: int, path: Path
) -> tuple[int, dict[int, float]]:
    """The history as OpenMetrics, with the tiles of each SLO; the samples written, and each
    label set's last values (``_count``) for the exporter to continue from."""
    minutes = h.counts.shape[1]
    ts = [f"{(start_ms + (m + 1) * MINUTE_MS) / 1000:.3f}" for m in range(minutes)]
    lines = 0
    ends: dict[int, float] = {}
    with path.open("w") as out:
        for family, values_of in (("_count", h.counts), ("_bucket", h.fast)):
            out.write(f"# TYPE {METRIC}{family} unknown\n")
            for i, lab in enumerate(h.labels):
                first = int(h.born[i])
                if first >= minutes:
                    continue
                cum = _cumulative(values_of[i], h.resets.get(i))
                extra = f',le="{THRESHOLD_LE}"' if family == "_bucket" else ""
                prefix = f"{METRIC}{family}{{{_label_text(lab)}{extra}}} "
                out.write(
                    "".join(
                        f"{prefix}{v} {t}\n" for v, t in zip(cum[first:].tolist(), ts[first:], strict=True)
                    )
                )
                lines += minutes - first
                if family == "_count":
                    ends[i] = float(cum[-1])
        lines += _write_tiles(h, slos, ts, out)
        out.write("# EOF\n")
    return lines, ends


def _write_tiles(h: History, slos: list[Slo], ts: list[str], out: Any) -> int:
    """Per SLO and facility, each minute's requests and good ones: what the tile rules
    record of this traffic (a reset loses nothing here: each minute is counted once)."""
    facilities = sorted({lab["facility"] for lab in h.labels})
    index = {f: [i for i, lab in enumerate(h.labels) if lab["facility"] == f] for f in facilities}
    lines = 0
    series: dict[str, list[tuple[str, npt.NDArray[np.float64]]]] = {}
    for slo in slos:
        for f in facilities:
            rows = index[f]
            methods = set(slo.methods or ())
            mine = [i for i in rows if not methods or h.labels[i]["http_request_method"] in methods]
            total = h.counts[mine].sum(axis=0).astype(np.float64)
            if slo.kind == "latency":
                good = h.fast[mine].sum(axis=0).astype(np.float64)
            else:
                ok = [i for i in mine if not h.labels[i]["http_response_status_code"].startswith("5")]
                good = h.counts[ok].sum(axis=0).astype(np.float64)
            lab = f'facility="{f}",slo="{slo.name}",service="{slo.service}"'
            series.setdefault(names.TILE_REQUESTS, []).append((lab, total))
            series.setdefault(names.TILE_GOOD, []).append((lab, good))
            if slo.budgeting == "timeslices":
                has = (total > 0).astype(np.float64)
                met = ((good >= slo.timeslice_target * total - 1e-9) & (total > 0)).astype(np.float64)
                series.setdefault(names.TILE_MINUTES, []).append((lab, has))
                series.setdefault(names.TILE_GOOD_MINUTES, []).append((lab, met))
    for name, rows_of in series.items():
        out.write(f"# TYPE {name} unknown\n")
        for lab, values in rows_of:
            out.write(
                "".join(f"{name}{{{lab}}} {v:g} {t}\n" for v, t in zip(values.tolist(), ts, strict=True))
            )
            lines += len(ts)
    return lines


class Exporter:
    """Serves every counter, continued from the history at its own mean rate, so that the tile
    rules read live samples: what a gateway would serve."""

    def __init__(self, h: History, ends: dict[int, float], since_s: float, created_s: float) -> None:
        self.since_s = since_s
        self.created_s = created_s
        minutes = h.counts.shape[1]
        self.rows = []
        for i, value in ends.items():
            lab = _label_text(h.labels[i])
            rate = float(h.counts[i].sum()) / minutes / 60.0
            fast_rate = float(h.fast[i].sum()) / minutes / 60.0
            fast_end = float(_cumulative(h.fast[i], h.resets.get(i))[-1])
            self.rows.append((lab, value, rate, fast_end, fast_rate))
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def render(self) -> str:
        dt = time.time() - self.since_s
        out = []
        for lab, value, rate, fast_end, fast_rate in self.rows:
            # ``_created``, as the gateway exports it: the scrapes resume after a gap as long as
            # the backfill took, which the tiles must not take for births.
            out.append(f"{METRIC}_created{{{lab}}} {self.created_s}\n")
            out.append(f"{METRIC}_count{{{lab}}} {int(value + rate * dt)}\n")
            out.append(f'{METRIC}_bucket{{{lab},le="{THRESHOLD_LE}"}} {int(fast_end + fast_rate * dt)}\n')
        return "".join(out)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 (the local Prometheus)
        return json.loads(r.read())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _free_port_after(port: int) -> int:
    """The first port after ``port`` that can be bound (an HTTP probe would miss a port held
    by something that does not speak HTTP)."""
    while True:
        port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _start_prometheus(
    work: Path, data: Path, rules: Path, exporter: Exporter
) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus on the backfilled ``data``, scraping the exporter and evaluating ``rules``; its
    log in ``work/prometheus.log``."""
    cfg = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": "30s"},
        # honor_labels: the exporter speaks for the gateways, whose instance labels it keeps.
        "scrape_configs": [
            {
                "job_name": "vitalgate",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
            }
        ],
        "rule_files": [str(rules)],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = _free_port_after(exporter.port)
    with (work / "prometheus.log").open("w") as log:  # (the child keeps its own descriptor)
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=400d",
            ],
            stdout=log,
            stderr=log,
        )
    return proc, f"http://127.0.0.1:{port}"


def _watch_rule_groups(base: str, measure_s: float) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Every rule group's evaluations during ``measure_s`` ({group: {evaluated at: seconds}}),
    and each group's interval."""
    seen: dict[str, dict[str, float]] = {}
    intervals: dict[str, float] = {}
    wall0 = time.monotonic()
    while time.monotonic() - wall0 < measure_s:
        time.sleep(5)
        for g in _get(f"{base}/api/v1/rules")["data"]["groups"]:
            intervals[g["name"]] = float(g["interval"])
            if g.get("lastEvaluation", "").startswith("0001"):
                continue
            seen.setdefault(g["name"], {})[g["lastEvaluation"]] = float(g["evaluationTime"])
    return seen, intervals


def _group_figures(
    seen: dict[str, dict[str, float]], intervals: dict[str, float], missed: dict[str, float]
) -> dict[str, dict[str, float]]:
    groups = {}
    for name, evals in sorted(seen.items()):
        times = list(evals.values())
        groups[name] = {
            "evaluations": len(times),
            "median_s": statistics.median(times),
            "max_s": max(times),
            "interval_s": intervals[name],
            "missed": missed.get(name, 0.0),
        }
    return groups


def run_size(
    size: Size, work: Path, rules: Path, slos: list[Slo], measure_s: float, status_raw: bool = False
) -> dict[str, Any]:
    rng = np.random.default_rng(size.facilities * 1000 + size.routes * 10 + size.days)
    t0 = time.perf_counter()
    h = _history(size, rng)
    now_ms = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
    start_ms = now_ms - size.days * 1440 * MINUTE_MS
    om = work / "history.om"
    samples, ends = _write_openmetrics(h, slos, start_ms, om)
    data = work / "tsdb"
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    om.unlink()
    prepared_s = time.perf_counter() - t0
    exporter = Exporter(h, ends, now_ms / 1000, start_ms / 1000)
    proc, base = _start_prometheus(work, data, rules, exporter)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                _get(f"{base}/api/v1/status/runtimeinfo")
                break
            except OSError:
                time.sleep(1)
        cpu0, wall0 = _cpu_s(proc.pid), time.monotonic()
        seen, intervals = _watch_rule_groups(base, measure_s)
        cpu = (_cpu_s(proc.pid) - cpu0) / (time.monotonic() - wall0)
        # What the rules counted over the last day, against the traffic generated (the live
        # minutes since add a little): the benchmark measured real work, not empty windows.
        q = urllib.parse.quote(f'sum({names.requests("1d")}{{slo="fhir-availability"}})')
        counted = _get(f"{base}/api/v1/query?query={q}")["data"]["result"]
        day = float(h.counts[:, -1440:].sum())
        rss = _rss_mb(proc.pid)
        status = _status_timings(base, slos, size, status_raw)
        missed = {
            r["metric"]["rule_group"].split(";")[-1]: float(r["value"][1])
            for r in _get(f"{base}/api/v1/query?query=prometheus_rule_group_iterations_missed_total")["data"][
                "result"
            ]
        }
    finally:
        proc.terminate()
        proc.wait(60)
        exporter.server.shutdown()
    return {
        "size": str(size),
        "label_sets": len(h.labels),
        "raw_series": 2 * len(h.labels),
        "samples_backfilled": samples,
        "prepared_s": round(prepared_s, 1),
        "cpu_cores": round(cpu, 3),
        "rss_mb": round(rss),
        "requests_1d_generated": day,
        "requests_1d_counted": float(counted[0]["value"][1]) if counted else None,
        "groups": _group_figures(seen, intervals, missed),
        "status": status,
    }


def _status_timings(base: str, slos: list[Slo], size: Size, with_raw: bool) -> dict[str, Any]:
    """``slo status --backend prometheus`` for every facility, as the command computes it: from
    the recorded tiles (what ``auto`` chose, with its notes), and with ``with_raw`` from the raw
    counters too, with the largest difference between the two in any row's SLI."""
    zones = ["America/Chicago", "America/New_York", "America/Denver", "Europe/London"]
    facilities = [
        Facility(f"facility-{f:03d}", f"Facility {f}", zones[f % len(zones)], 0.999, ())
        for f in range(size.facilities)
    ]
    now = time.time()
    out: dict[str, Any] = {}
    figures: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}
    for source in ("auto", "raw") if with_raw else ("auto",):
        backend = PrometheusBackend(base, timeout_s=300, source=source)
        t = time.perf_counter()
        try:
            rows = compute_status(slos, facilities, backend, now)
        except PrometheusError as exc:
            out[source] = {"error": str(exc), "seconds": round(time.perf_counter() - t, 2)}
            continue
        out[source] = {
            "seconds": round(time.perf_counter() - t, 2),
            "queries": backend.queries,
            "rows": len(rows),
            "notes": backend.notes,
        }
        figures[source] = {(r.slo, r.facility): (r.total, r.good) for r in rows}
    if len(figures) == 2:
        a, b = figures["auto"], figures["raw"]
        for slo in slos:
            keys = [k for k in a if k[0] == slo.name]
            sli = [abs(a[k][1] / a[k][0] - b[k][1] / b[k][0]) for k in keys if a[k][0] and b[k][0]]
            total = [abs(a[k][0] - b[k][0]) / max(a[k][0], b[k][0]) for k in keys if a[k][0] or b[k][0]]
            out[f"{slo.name}: max SLI difference"] = max(sli) if sli else None
            out[f"{slo.name}: max relative difference in the count"] = max(total) if total else None
            out[f"{slo.name}: rows equal"] = f"{sum(a[k] == b[k] for k in keys)} of {len(keys)}"
            worst = max(keys, key=lambda k: abs(a[k][0] - b[k][0]), default=None)
            if worst is not None:
                out[f"{slo.name}: largest count difference"] = f"{worst[1]}: tiles {a[worst]}, raw {b[worst]}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", action="append", type=Size.parse, help="FACILITIES x ROUTES x DAYS")
    parser.add_argument("--measure", type=float, default=240.0, help="seconds of evaluations to watch")
    parser.add_argument("--rules", type=Path, default=None, help="run this rules file instead")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folders here")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--status-raw", action="store_true", help="also time slo status from the raw counters, and compare"
    )
    args = parser.parse_args()
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required: scripts/install-system-deps")
    sizes = args.size or [Size(50, 5, 1), Size(50, 20, 1), Size(50, 5, 3), Size(200, 5, 3)]
    root = args.keep or Path(tempfile.mkdtemp(prefix="vitalgate-rules-"))
    (root / "slos.yaml").write_text(SLOS_YAML)
    slos = list(load_slos(root / "slos.yaml"))
    rules = args.rules
    if rules is None:
        rules = root / "rules.yaml"
        rules.write_text(render(build_rules(slos, ["fhir"], RuleOptions()), "bench.prometheus_rules"))
    results = []
    for size in sizes:
        work = root / f"{size.facilities}x{size.routes}x{size.days}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"{size}: generating, backfilling, evaluating for {args.measure:g} s", file=sys.stderr)
        res = run_size(size, work, rules, slos, args.measure, args.status_raw)
        results.append(res)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        print(
            f"\n{res['size']}: {res['label_sets']} label sets ({res['raw_series']} raw series), "
            f"{res['samples_backfilled']:,} samples backfilled; Prometheus {res['cpu_cores']} cores, {res['rss_mb']} MB"
        )
        print(
            f"requests in the last day: generated {res['requests_1d_generated']:,.0f}, "
            f"counted by the rules {res['requests_1d_counted']}"
        )
        print(
            f"{'group':<44} {'interval':>8} {'evals':>5} {'median s':>9} {'max s':>8} {'max/int':>8} {'missed':>6}"
        )
        for source, st in res["status"].items():
            print(f"slo status --source {source}: {st}")
        for name, g in res["groups"].items():
            print(
                f"{name:<44} {g['interval_s']:>7g}s {g['evaluations']:>5} {g['median_s']:>9.3f} "
                f"{g['max_s']:>8.3f} {g['max_s'] / g['interval_s']:>7.1%} {g['missed']:>6g}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
