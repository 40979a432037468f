"""The gateway's self-alerts on a real Prometheus: a store another process has locked stops
the gateway's flushes, and VitalgateStoreFlushStale fires (and resolves once it is let go)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from tests import slos
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import fetch
from tests.support.services import PrometheusProcess, firing
from tests.support.waiting import wait_until


def test_a_locked_store_fires_the_stale_flush_alert(tmp_path: Path, peers: BackgroundPeers) -> None:
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        slos=slos.AVAIL,
        extra={"telemetry": {"store": {"path": "store.db", "flush_interval": "1s"}}},
    )
    out = tmp_path / "generated"
    vitalgate("alerts", "generate", "--config", str(cfg), "--out", str(out))
    gw = GatewayProcess(cfg)
    prom = PrometheusProcess(tmp_path, [gw.admin.removeprefix("http://")], rule_files=[out / "rules.yaml"])
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            fetch(gw.proxy + "/fhir/Patient/1", {"X-Facility-ID": "st-marys"})
            time.sleep(0.05)  # paced traffic

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    locker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        wait_until(
            lambda: bool(prom.query("vitalgate_store_last_flush_timestamp_seconds")),
            "the flush gauge scraped",
            timeout_s=30,
        )
        time.sleep(5)  # (healthy for a while: a stale-flush alert would have had time to fire)
        assert not firing(prom, "VitalgateStoreFlushStale")  # healthy: flushing each second

        locker.execute("BEGIN EXCLUSIVE")  # another process holds the store: writes wait
        wait_until(
            lambda: bool(firing(prom, "VitalgateStoreFlushStale")),
            "VitalgateStoreFlushStale fires",
            timeout_s=40,
        )
        depth = prom.query('vitalgate_telemetry_queue_depth{signal="store"}')
        assert float(depth[0]["value"][1]) >= 1  # the batches wait, counted

        locker.execute("COMMIT")
        wait_until(
            lambda: not firing(prom, "VitalgateStoreFlushStale"),
            "the alert resolves once the store takes writes again",
            timeout_s=60,
        )
    finally:
        stop.set()
        sender.join(10)
        locker.close()
        prom.stop()
        assert gw.terminate() == 0
