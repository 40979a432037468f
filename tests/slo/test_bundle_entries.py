"""An SLO that counts batch entries: the same counts from the embedded store and from a real
Prometheus scraping the gateway, and rules that promtool accepts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests import slos
from tests.fhirpeer import FhirPeer
from tests.fhirpeer import batch as fhir_batch
from tests.support.cli import slo_status, vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.services import PrometheusProcess, require_binary
from tests.support.waiting import wait_until

SLOS = slos.ENTRIES
BATCH = fhir_batch({"request": {"method": "DELETE", "url": "Patient/p2"}})


class _PeerThread:
    def __init__(self) -> None:
        self.peer = FhirPeer("fixed")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FhirPeer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.peer.start(), self._loop).result(10)
        return self.peer

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.peer.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _post(url: str, body: Mapping[str, object]) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"X-Facility-ID": "st-marys", "Content-Type": "application/fhir+json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return int(r.status)


@pytest.mark.slow
def test_entries_count_as_events_in_both_backends(tmp_path: Path) -> None:
    with _PeerThread() as peer:
        cfg = gateway_config(
            tmp_path,
            peer.port,
            slos=SLOS,
            extra={"telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}}},
        )
        gw = GatewayProcess(cfg)
        prom = PrometheusProcess(tmp_path, [gw.admin.removeprefix("http://")])
        try:
            for _ in range(2):
                assert _post(gw.proxy + "/fhir/", BATCH) == 200
            for pid in ("p1", "p2", "p3"):
                req = urllib.request.Request(
                    gw.proxy + f"/fhir/Patient/{pid}", headers={"X-Facility-ID": "st-marys"}
                )
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.status == 200
            # Requests: 2 batches and 3 reads, all 200. Entries: 12, of which 4 are 5xx.
            expected = {"avail": (5, 5), "entries": (17, 13), "entry-deletes": (4, 2)}

            def scraped(expr: str) -> float:
                result = prom.query(expr)
                return float(result[0]["value"][1]) if result else 0.0

            wait_until(
                lambda: (
                    scraped('sum(vitalgate_fhir_bundle_entries_total{facility="st-marys"})') == 12
                    and scraped('sum(http_server_request_duration_seconds_count{facility="st-marys"})') == 5
                ),
                "every entry and every request scraped",
                timeout_s=30,
            )
            from_prom = slo_status(cfg, "--backend", "prometheus", "--prometheus-url", prom.url)
            for name, (total, good) in expected.items():
                row = from_prom[(name, "st-marys")]
                assert (round(row["total"]), round(row["good"])) == (total, good), (name, row)
        finally:
            prom.stop()
            assert gw.terminate() == 0
    from_store = slo_status(cfg)
    for name, (total, good) in expected.items():
        row = from_store[(name, "st-marys")]
        assert (row["total"], row["good"]) == (total, good), (name, row)
    out = tmp_path / "alerts"
    vitalgate("alerts", "generate", "--config", str(cfg), "--out", str(out))
    rules = (out / "rules.yaml").read_text()
    assert "vitalgate_fhir_bundle_entries_total" in rules
    check = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(out / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
