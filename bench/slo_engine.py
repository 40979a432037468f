"""SLO status at scale: 200 facilities x 5 SLOs x 30 days of minute data in the store.

Prints: the time of a full ``slo status`` (every row, every window) through the
embedded backend and the engine; the time numpy needs merely to sum the same
arrays, and the ratio; the store's size per day at 200 facilities x 30 routes;
and, with ``--throughput``, the gateway's requests/s with the store recorder on
and off (interleaved wrk rounds, as bench/proxy.py).

    python bench/slo_engine.py [--facilities 200] [--throughput]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gateway.dataplane.metrics import duration_buckets_s
from slo.embedded import EmbeddedBackend
from slo.spec import Facility, Slo, load_slos
from slo.status import StatusRow, compute_status, row_specs
from slo.store import MINUTES_PER_DAY, Store, StoreWriter, hour_rollup

SLOS_YAML = """
version: 1
slos:
  - {name: fhir-availability, service: fhir, objective: 99.9, window: 30d, sli: {availability: {}}}
  - {name: fhir-read-latency, service: fhir, objective: 99, window: 30d, filter: {methods: [GET]}, sli: {latency: {threshold: 300ms}}}
  - {name: fhir-write-availability, service: fhir, objective: 99.5, window: 28d, filter: {methods: [POST, PUT]}, sli: {availability: {}}}
  - {name: monthly-contract, service: fhir, objective: 99.5, window: {calendar: month}, sli: {availability: {}}}
  - {name: uptime-minutes, service: fhir, objective: 99, window: 30d, budgeting: timeslices, sli: {availability: {}}}
"""
ZONES = [
    "America/Chicago",
    "America/New_York",
    "America/Denver",
    "America/Los_Angeles",
    "Europe/London",
    "Asia/Kolkata",
]


def populate(store: Store, slos: list[Slo], facilities: list[Facility], now_s: float, days: int) -> None:
    """Per-SLO minute arrays for every facility and day, as the recorder writes them."""
    rng = np.random.default_rng(7)
    today = int(now_s // 86400)
    for d in range(today - days, today + 1):
        rows = []
        for s in slos:
            totals = rng.poisson(20, size=(len(facilities), MINUTES_PER_DAY)).astype(np.uint32)
            bad = rng.binomial(totals, 0.002).astype(np.uint32)
            for i, f in enumerate(facilities):
                arr = np.stack([totals[i], totals[i] - bad[i]])
                rows.append((s.key, f.id, d, arr, hour_rollup(arr, s.timeslice_target)))
            star = np.stack([totals.sum(0), (totals - bad).sum(0)]).astype(np.uint32)
            rows.append((s.key, "*", d, star, hour_rollup(star, s.timeslice_target)))
        store.write((), rows)


def store_size_per_day(
    tmp: Path, slos: list[Slo], n_facilities: int, routes: int
) -> tuple[float, float, int]:
    """Bytes per day at every (facility, route) active every minute: raw rows measured over one
    hour (x24), per-SLO rows over one full day. Returns (raw MB/day, per-SLO MB/day, series)."""
    store = Store(tmp / "size.db")
    writer = StoreWriter(store, slos, duration_buckets_s([0.3]))
    rng = np.random.default_rng(1)
    n_cols = len(writer.bounds_s) + 1
    t0 = 1_700_000_000 - 1_700_000_000 % 86400
    for minute in range(60):
        batch = {}
        for f in range(n_facilities):
            for r in range(routes):
                method = "GET" if r % 3 else "POST"
                for status, p in ((200, 1.0), (500, 0.05)):
                    if rng.random() < p:
                        counts = [0] * n_cols
                        for b in rng.integers(0, 8, size=4):
                            counts[int(b)] += int(rng.integers(1, 5))
                        batch[
                            ((f"f{f:03d}", "fhir", f"/fhir/R{r}/{{id}}", method, status), t0 + minute * 60)
                        ] = counts
        writer.apply(batch)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw_bytes = store.db.execute("SELECT sum(length(cells)) + 24 * count(*) FROM raw_minutes").fetchone()[0]
    series = store.db.execute("SELECT count(*) FROM series").fetchone()[0]
    store.close()
    full = Store(tmp / "slo-day.db")
    populate(full, slos, [Facility(f"f{f:03d}", "", "UTC") for f in range(n_facilities)], t0, 0)
    slo_bytes = full.db.execute(
        "SELECT (SELECT sum(length(cells)) + 40 * count(*) FROM slo_minutes) + (SELECT sum(length(cells)) + 40 * count(*) FROM slo_hours)"
    ).fetchone()[0]
    full.close()
    return raw_bytes * 24 / 1e6, slo_bytes / 1e6, series


def _median_s(repeat: int, run: Callable[[], object]) -> float:
    """The median wall time of ``repeat`` runs of ``run``, in seconds."""
    timings = []
    for _ in range(repeat):
        t = time.perf_counter()
        run()
        timings.append(time.perf_counter() - t)
    return statistics.median(timings)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--facilities", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--throughput", action="store_true", help="also measure gateway req/s with the store on and off"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vitalgate-slo-bench-"))
    (tmp / "slos.yaml").write_text(SLOS_YAML)
    slos = load_slos(tmp / "slos.yaml")
    facilities = [
        Facility(f"f{i:03d}", f"Facility {i}", ZONES[i % len(ZONES)], 0.995) for i in range(args.facilities)
    ]
    now_s = time.time()
    store = Store(tmp / "bench.db")
    t = time.perf_counter()
    populate(store, slos, facilities, now_s, args.days)
    print(
        f"populated {len(slos)} SLOs x {args.facilities} facilities x {args.days} days of minutes "
        f"in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
    )

    backend = EmbeddedBackend(store)
    rows: list[StatusRow] = []

    def status() -> None:
        rows[:] = compute_status(slos, facilities, backend, now_s)

    status_s = _median_s(args.repeat, status)
    # The same arrays, loaded once; then only summed.
    specs = row_specs(slos, facilities, now_s)
    mt, mg, ht, hg, hs, hsg, _, _ = backend.arrays(specs, now_s)
    read = (mt, mg, ht, hg, hs, hsg)
    sum_s = _median_s(args.repeat, lambda: [a.sum(axis=1) for a in read])
    load_s = _median_s(args.repeat, lambda: backend.arrays(specs, now_s))
    n_numbers = sum(a.size for a in read)
    # The data as it sits in the store: every row's 30 days of minutes, total and good.
    day_of_traffic = np.random.default_rng(3).poisson(20, size=args.days * MINUTES_PER_DAY).astype(np.uint32)
    full = [np.tile(day_of_traffic, (len(specs), 1)) for _ in range(2)]
    full_sum_s = _median_s(args.repeat, lambda: [a.sum(axis=1) for a in full])

    raw_mb, slo_mb, series = store_size_per_day(tmp, slos, args.facilities, 30)
    print(
        f"\nslo status: {len(rows)} rows ({len(slos)} SLOs x {args.facilities + 1} facilities incl. '*'), "
        f"windows 5m..3d + SLO window, {args.days} days of minute data"
    )
    print(f"  full status (read store + engine):  {status_s * 1000:8.1f} ms   (median of {args.repeat})")
    print(f"    of which reading arrays:          {load_s * 1000:8.1f} ms")
    print(
        f"  numpy sum of the stored minute arrays: {full_sum_s * 1000:5.1f} ms   "
        f"({sum(a.size for a in full) / 1e6:.1f} M numbers: {args.days} days x 1440 x 2 per row)"
    )
    print(f"  ratio status / that sum:            {status_s / full_sum_s:8.1f} x")
    print(
        f"  numpy sum of the arrays status reads: {sum_s * 1000:6.1f} ms   ({n_numbers / 1e6:.1f} M numbers: "
        "3 days of minutes, hours before)"
    )
    print(f"  ratio status / that sum:            {status_s / sum_s:8.1f} x")
    print(f"  ratio engine only / that sum:       {(status_s - load_s) / sum_s:8.1f} x")
    print(
        f"\nstore size per day, {args.facilities} facilities x 30 routes, every route active every minute "
        f"({series} series):"
    )
    print(f"  raw minute history:  {raw_mb:8.1f} MB/day (kept 35 days; hourly roll-ups after)")
    print(f"  per-SLO arrays:      {slo_mb:8.1f} MB/day for {len(slos)} SLOs")
    if args.throughput:
        throughput(tmp)
    return 0


def throughput(tmp: Path) -> None:
    import json
    import shutil
    import signal

    from bench.proxy import LOAD_CORE, PROXY_CORE, free_port, nginx_conf, run_wrk, start, wait_port

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    (tmp / "patient.json").write_text(json.dumps({"resourceType": "Patient", "id": "1", "active": True}))
    tmp.chmod(0o755)
    up_port = free_port()
    procs = [
        start(
            [
                nginx,
                "-p",
                str(tmp),
                "-c",
                str(
                    nginx_conf(
                        tmp,
                        f"server {{ listen 127.0.0.1:{up_port}; root {tmp};"
                        " location / { try_files /patient.json =404; } }",
                    )
                ),
            ],
            LOAD_CORE,
        )
    ]
    urls = {}
    for name, enabled in (("store on", True), ("store off", False)):
        port = free_port()
        cfg = tmp / f"{name.replace(' ', '-')}.yaml"
        cfg.write_text(
            f"version: 1\nlisten: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{free_port()}}}\n"
            f"upstreams: {{fhir: {{url: 'http://127.0.0.1:{up_port}'}}}}\nroutes: [{{prefix: /fhir/, upstream: fhir, kind: fhir}}]\n"
            "facilities: {from: [{header: X-Facility-ID}], known: {st-marys: {name: S}}}\n"
            f"telemetry: {{access_log: {{path: {tmp / (name[6:] + '.log')}}}, store: {{enabled: {str(enabled).lower()}, "
            f"path: {tmp / (name[6:] + '.db')}}}}}\nslos: slos.yaml\n"
        )
        procs.append(start([sys.executable, "-m", "vitalgate", "serve", "--config", str(cfg)], PROXY_CORE))
        urls[name] = f"http://127.0.0.1:{port}/fhir/Patient/1"
        wait_port(port)
    wait_port(up_port)
    results: dict[str, list[float]] = {n: [] for n in urls}
    try:
        for url in urls.values():
            run_wrk(url, 1, 50, {"X-Facility-ID": "st-marys"})
        for _ in range(5):
            for name, url in urls.items():
                results[name].append(run_wrk(url, 5, 50, {"X-Facility-ID": "st-marys"})[0])
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(15)
    on, off = (statistics.median(results[n]) for n in ("store on", "store off"))
    print(f"\ngateway throughput (wrk -c50, proxy on core {PROXY_CORE}, median of 5 interleaved rounds):")
    print(f"  store recorder on:  {on:8.0f} req/s   rounds {[round(x) for x in results['store on']]}")
    print(f"  store recorder off: {off:8.0f} req/s   rounds {[round(x) for x in results['store off']]}")
    print(f"  on / off:           {on / off:8.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
