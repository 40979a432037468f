"""The storage seam: under ``--workers`` every process keeps its values in prometheus_client's
multiprocess files because the folder is in its environment before the library is imported
(client_python's contract), never because the library was switched afterwards; the supervisor's
``/metrics`` then sums what each process declared through the same families."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.readers import counter_value, histogram_counts

ROOT = Path(__file__).resolve().parents[2]

# One gateway process's families and request metrics, counting what the process was told to.
_PROCESS = """
import os, sys
from prometheus_client import CollectorRegistry
from gateway.metrics import declare_families
from gateway.metrics.storage import MetricStorage
from gateway.roles import METRICS_DIR_ENV
from tests.support.outcomes import make_outcome

storage = MetricStorage(os.environ[METRICS_DIR_ENV])
registry = CollectorRegistry()
families = declare_families(registry, [0.3], {"st-marys": "St Mary's"}, {"st-marys": 0.999})
requests = storage.request_metrics(registry, families.buckets_s)
dropped, duration_s = int(sys.argv[1]), float(sys.argv[2])
families.telemetry.drop("log", dropped)
families.audit.audit_dropped(1)
requests.histogram.request(make_outcome("st-marys", "fhir", "/fhir/Patient/{id}", "GET", 200, duration_s))
requests.active.child("st-marys", "fhir").inc()
"""

# A supervisor: makes the folder before importing prometheus_client, counts as one process, starts
# a second that inherits the folder (as a worker does), then prints what /metrics would serve.
_SUPERVISOR = f"""
import shutil, subprocess, sys
from gateway.roles import prepare_metrics_dir
directory = prepare_metrics_dir()
try:
    PROCESS = {_PROCESS!r}
    sys.argv = ["supervisor", "2", "0.2"]
    exec(PROCESS)
    child = subprocess.Popen([sys.executable, "-c", PROCESS, "3", "0.01"])
    assert child.wait() == 0
    from prometheus_client import generate_latest, multiprocess
    multiprocess.mark_process_dead(child.pid, directory)  # as the supervisor does for a worker
    from gateway.metrics.storage import Joined
    scrape = CollectorRegistry()
    scrape.register(Joined(storage.exposed(registry)))
    sys.stdout.write(generate_latest(scrape).decode())
finally:
    shutil.rmtree(directory)
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_supervisor_and_a_worker_count_into_one_sum() -> None:
    run = _python(_SUPERVISOR)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    # Counters and histograms summed over both processes; the audit trail's loss is a
    # telemetry drop of its own signal.
    assert counter_value(text, "vitalgate_telemetry_dropped_total", signal="log") == 5
    assert counter_value(text, "vitalgate_telemetry_dropped_total", signal="audit") == 2
    counts = {key: n for key, n in histogram_counts(text).items() if "st-marys" in key}
    assert sum(counts.values()) == 2, counts
    # Info gauges not multiplied; active requests summed over live processes (the child is dead).
    assert counter_value(text, "vitalgate_facility_info", facility="st-marys") == 1
    assert counter_value(text, "vitalgate_facility_sla_ratio", facility="st-marys") == 0.999
    assert counter_value(text, "http_server_active_requests", facility="st-marys") == 1
    # The families keep their own help text through the files.
    helps = {f.name: f.documentation for f in text_string_to_metric_families(text)}
    assert (
        helps["http_server_request_duration_seconds"]
        == "Duration of HTTP server requests through the gateway."
    )
    assert helps["vitalgate_telemetry_dropped"].startswith("Telemetry items dropped")


def test_the_folder_cannot_be_chosen_after_prometheus_client_is_imported() -> None:
    run = _python(
        """
        import os, sys
        import prometheus_client
        from gateway.roles import METRICS_DIR_ENV, prepare_metrics_dir
        try:
            prepare_metrics_dir()
        except RuntimeError as exc:
            print(exc)
            sys.exit(3 if METRICS_DIR_ENV not in os.environ else 4)
        """
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert "PROMETHEUS_MULTIPROC_DIR" in run.stdout and "imported before" in run.stdout


def test_no_module_switches_prometheus_clients_value_store() -> None:
    """The store is the library's choice at import (the environment), not an assignment."""
    assigned = []
    for pkg in ("core", "slo", "gateway", "alerts", "dashboards", "reports", "vitalgate"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Assign):
                    assigned += [
                        f"{path}:{node.lineno}"
                        for t in node.targets
                        if isinstance(t, ast.Attribute) and t.attr == "ValueClass"
                    ]
    assert assigned == []
