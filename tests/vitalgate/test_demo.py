import re
import subprocess
import sys
from pathlib import Path

from vitalgate.demo import FACILITIES, FAMILY, GIVEN, fault_script, quantile


def test_demo_runs_and_every_request_is_counted(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitalgate",
            "demo",
            "--duration",
            "8",
            "--rate",
            "80",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    assert "req/s" in out and "p95 ms" in out
    summary = {}
    for fac in [*FACILITIES, "unknown"]:
        m = re.search(rf"^{re.escape(fac)}\s+(\d+)\s+(\d+)\s+(\d+)$", out, re.M)
        assert m, f"no summary row for {fac}"
        summary[fac] = tuple(int(x) for x in m.groups())
    for fac, (sent, counted, _errors) in summary.items():
        assert sent == counted, fac
    assert all(summary[f][0] > 0 for f in FACILITIES)  # traffic from every facility
    assert sum(s for s, _, _ in summary.values()) > 300
    assert summary["riverside"][2] > 0  # its scripted error burst was seen
    log = (tmp_path / "access.log").read_text()
    traces = (tmp_path / "traces.jsonl").read_text()
    metrics = (tmp_path / "metrics.txt").read_text()
    assert len(log.splitlines()) == sum(s for s, _, _ in summary.values())
    assert f"Traces:   {tmp_path / 'traces.jsonl'}" in out
    # It ends with each facility's SLOs from the embedded store.
    tail = out.split("SLOs per facility", 1)[1]
    assert "fhir-availability" in tail and "fhir-read-latency" in tail
    assert re.search(r"^fhir-availability\s+riverside\s+99\.90%", tail, re.M)
    for text in (log, traces, metrics):
        for word in [*FAMILY, *GIVEN, "MRN", "demo-token"]:
            assert word not in text


def test_fault_script_fits_any_duration() -> None:
    for duration in (10.0, 60.0, 600.0):
        faults = fault_script(duration)
        assert {f.facility for f in faults} == {"riverside", "lakeside", "northgate"}
        assert all(0 <= f.start_s < f.end_s <= duration for f in faults)


def test_quantile_matches_prometheus() -> None:
    # 10 requests <= 0.1 s, 10 more <= 0.5 s: p50 at the first bucket's top, p95 interpolated.
    buckets = {0.1: 10.0, 0.5: 20.0, float("inf"): 20.0}
    assert quantile(0.5, buckets) == 0.1
    assert abs(quantile(0.95, buckets) - 0.46) < 1e-9  # type: ignore[operator]
    assert quantile(0.95, {0.1: 0.0, float("inf"): 0.0}) is None
