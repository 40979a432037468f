"""A contract year in VictoriaMetrics and the uptime report read back from it (``python -m
bench.report_year --store victoria-metrics``).

One facility, one service, GET and POST traffic with 5xx errors and slow GETs, 20-minute
outages every 17 days: per minute, as Poisson counts. The gateway's counters (``_count`` and
four ``le`` buckets per method and status) become cumulative samples at each minute's end, the
tiles the rules would have recorded become one sample per SLO and minute 17 s later (a rule
group's evaluation phase), and the embedded store gets each SLO's minutes as the recorder
writes them. The figures of the three reports must agree.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from bench.slo_engine import SLOS_YAML
from core import conventions as names
from reports.data import build_report, parse_period
from reports.prometheus_backend import PrometheusReportBackend
from slo.prometheus import PrometheusBackend
from slo.spec import Facility, Slo, load_slos
from slo.store import MINUTES_PER_DAY, Store, hour_rollup
from vitalgate.peers import free_port

I64 = npt.NDArray[np.int64]
CHUNK = 50_000
"""Samples a line of the import API carries."""
PHASE_S = 17


def _traffic(minutes: int, rng: np.random.Generator) -> dict[str, I64]:
    get = rng.poisson(24, minutes)
    post = rng.poisson(6, minutes)
    get_bad = rng.binomial(get, 0.0005)
    post_bad = rng.binomial(post, 0.001)
    for start in range(int(rng.integers(0, 17 * 1440)), minutes - 20, 17 * 1440):
        get_bad[start : start + 20] = get[start : start + 20]
        post_bad[start : start + 20] = post[start : start + 20]
    get_ok = get - get_bad
    slow = rng.binomial(get_ok, 0.004)
    mid = rng.binomial(get_ok - slow, 0.3)
    return {
        "get_ok": get_ok,
        "get_bad": get_bad,
        "post_ok": post - post_bad,
        "post_bad": post_bad,
        "slow": slow,
        "mid": mid,
    }


def _slo_minutes(t: dict[str, I64]) -> dict[str, tuple[I64, I64]]:
    """What each SLO of SLOS_YAML counts a minute: (requests, good)."""
    every = t["get_ok"] + t["get_bad"] + t["post_ok"] + t["post_bad"]
    ok = t["get_ok"] + t["post_ok"]
    return {
        "fhir-availability": (every, ok),
        "fhir-read-latency": (t["get_ok"] + t["get_bad"], t["get_ok"] - t["slow"]),
        "fhir-write-availability": (t["post_ok"] + t["post_bad"], t["post_ok"]),
        "monthly-contract": (every, ok),
        "uptime-minutes": (every, ok),
    }


def _raw_series(t: dict[str, I64], facility: str) -> Iterator[tuple[dict[str, str], I64]]:
    """The gateway's counters per minute (not yet cumulative): count and buckets."""
    # Buckets a request falls in: GET 200s fast (<= 0.1), mid (<= 0.3) or slow (<= 1.0); the
    # 5xx slower than a second; POSTs fast.
    fast = t["get_ok"] - t["mid"] - t["slow"]
    per = {
        ("GET", "200"): {"0.1": fast, "0.3": fast + t["mid"], "1.0": t["get_ok"], "+Inf": t["get_ok"]},
        ("GET", "500"): {"0.1": 0 * fast, "0.3": 0 * fast, "1.0": 0 * fast, "+Inf": t["get_bad"]},
        ("POST", "201"): {
            "0.1": t["post_ok"],
            "0.3": t["post_ok"],
            "1.0": t["post_ok"],
            "+Inf": t["post_ok"],
        },
        ("POST", "500"): {"0.1": 0 * fast, "0.3": 0 * fast, "1.0": 0 * fast, "+Inf": t["post_bad"]},
    }
    for (method, status), buckets in per.items():
        labels = {
            names.FACILITY: facility,
            names.SERVICE: "fhir",
            names.ROUTE: "/fhir/Patient/{id}",
            names.METHOD: method,
            names.STATUS: status,
            "instance": "gw-0:9464",
            "job": "vitalgate",
        }
        yield {"__name__": f"{names.REQUEST_DURATION}_count", **labels}, buckets["+Inf"]
        for le, counts in buckets.items():
            yield {"__name__": f"{names.REQUEST_DURATION}_bucket", **labels, "le": le}, counts


def _lines(metric: dict[str, str], values: I64, stamps_ms: I64) -> Iterator[bytes]:
    for i in range(0, len(values), CHUNK):
        yield (
            json.dumps(
                {
                    "metric": metric,
                    "values": values[i : i + CHUNK].tolist(),
                    "timestamps": stamps_ms[i : i + CHUNK].tolist(),
                }
            )
            + "\n"
        ).encode()


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, data=body, method="POST")  # noqa: S310  loopback
    with urllib.request.urlopen(req, timeout=600) as r:  # noqa: S310
        r.read()


def _figures(report: Any) -> list[tuple[str, int, int, Any, Any]]:
    return [(s.slo, s.total, s.good, s.availability, s.uptime) for s in report.slos]


def _fill_store(
    store: Store,
    slos: list[Slo],
    facility: Facility,
    per_slo: dict[str, tuple[I64, I64]],
    d0: int,
    minutes: int,
) -> None:
    """The per-SLO minute rows of the year, written as the gateway's writer would."""
    for day in range(minutes // MINUTES_PER_DAY):
        sl = slice(day * MINUTES_PER_DAY, (day + 1) * MINUTES_PER_DAY)
        rows = []
        for s in slos:
            total, good = per_slo[s.name]
            arr = np.stack([total[sl], good[sl]]).astype(np.uint32)
            rows.append((s.key, facility.id, d0 + day, arr, hour_rollup(arr, s.timeslice_target)))
        store.write((), rows)


def _start_victoria_metrics(binary: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """VictoriaMetrics on a free port, its data and log in ``tmp``, answering its health check."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp / "victoria-metrics.log").open("w") as log:  # (the child keeps its own descriptor)
        proc = subprocess.Popen(
            [
                binary,
                f"-storageDataPath={tmp / 'vmdata'}",
                f"-httpListenAddr=127.0.0.1:{port}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
            ],
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()  # noqa: S310
            return proc, url
        except OSError:
            if time.monotonic() > deadline:
                proc.terminate()
                proc.wait(30)
                raise
            time.sleep(0.2)


def _import_series(
    url: str,
    traffic: dict[str, I64],
    per_slo: dict[str, tuple[I64, I64]],
    slos: list[Slo],
    facility: Facility,
    ends_ms: I64,
    minutes: int,
) -> None:
    """The raw counters and the per-SLO tiles of the year, imported as the rules would record them."""
    t0 = time.perf_counter()
    samples = 0
    body: list[bytes] = []
    for metric, counts in _raw_series(traffic, facility.id):
        body += _lines(metric, np.cumsum(counts), ends_ms)
        samples += minutes
    for s in slos:
        total, good = per_slo[s.name]
        for name, values in ((names.TILE_REQUESTS, total), (names.TILE_GOOD, good)):
            metric = {
                "__name__": name,
                names.SLO_LABEL: s.name,
                names.SERVICE: s.service,
                names.FACILITY: facility.id,
            }
            body += _lines(metric, values, ends_ms + PHASE_S * 1000)
            samples += minutes
    for i in range(0, len(body), 40):
        _post(url + "/api/v1/import", b"".join(body[i : i + 40]))
    urllib.request.urlopen(url + "/internal/force_flush", timeout=60).read()  # noqa: S310
    t_import = time.perf_counter() - t0
    print(
        f"imported {samples / 1e6:.1f} M samples ({minutes} minutes x {samples // minutes} series)"
        f" in {t_import:.1f} s"
    )


def run(year: int) -> int:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        print("victoria-metrics is not installed (scripts/install-system-deps installs it)")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="vitalgate-report-vm-"))
    (tmp / "slos.yaml").write_text(SLOS_YAML)
    slos: list[Slo] = load_slos(tmp / "slos.yaml")
    tz = ZoneInfo("America/Chicago")
    facility = Facility("st-marys", "St Mary's", "America/Chicago", 0.999, ())
    # Whole UTC days around the facility's year, a day's margin each side.
    d0 = int(datetime(year, 1, 1, tzinfo=tz).timestamp()) // 86400 - 1
    d1 = int(datetime(year + 1, 1, 1, tzinfo=tz).timestamp()) // 86400 + 1
    minutes = (d1 - d0 + 1) * MINUTES_PER_DAY
    traffic = _traffic(minutes, np.random.default_rng(11))
    per_slo = _slo_minutes(traffic)
    ends_ms = (d0 * 86400 + 60 * (np.arange(minutes, dtype=np.int64) + 1)) * 1000
    store = Store(tmp / "store.db")
    _fill_store(store, slos, facility, per_slo, d0, minutes)
    proc, url = _start_victoria_metrics(binary, tmp)
    try:
        _import_series(url, traffic, per_slo, slos, facility, ends_ms, minutes)
        period = parse_period(str(year))
        now = time.time()
        t0 = time.perf_counter()
        embedded = build_report(store, slos, facility, period, now)
        t_embedded = time.perf_counter() - t0
        results = {}
        for source in ("recorded", "raw"):
            backend = PrometheusBackend(url, timeout_s=120, source=source)
            t0 = time.perf_counter()
            report = build_report(PrometheusReportBackend(backend), slos, facility, period, now)
            results[source] = (time.perf_counter() - t0, backend.queries, report)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"\nyear report, {facility.name}, {period.label}, {len(slos)} SLOs: figures from")
    print(f"  the embedded store:               {t_embedded:6.2f} s")
    for source, (took, queries, _report) in results.items():
        print(
            f"  VictoriaMetrics, {source + ' ' * (9 - len(source))}:        {took:6.2f} s   ({queries} queries)"
        )
    want = _figures(embedded)
    for source, (_took, _q, report) in results.items():
        got = _figures(report)
        same = "equal to the embedded store's" if got == want else f"DIFFERENT: {got} != {want}"
        print(f"  {source}: per-SLO requests, good, availability and uptime {same}")
    print(f"  (data in {tmp})")
    return 0 if all(_figures(r) == want for _t, _q, r in results.values()) else 1
