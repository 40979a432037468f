"""Exact counts end to end: traffic through a running gateway, then `slo status`."""

import json
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import slos
from tests.support.cli import slo_status, vitalgate
from tests.support.gateway import GatewayProcess, flushed, gateway_config, running_gateway
from tests.support.peers import BackgroundPeers, Upstream
from tests.support.readers import counter_value, fetch, live_total
from tests.support.waiting import wait_until

SLOS = slos.STORE


@pytest.mark.slow
async def test_slo_status_counts_exactly_what_was_sent(tmp_path: Path, upstream: Upstream) -> None:
    cfg = gateway_config(
        tmp_path,
        upstream.port,
        slos=SLOS,
        extra={"telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}}},
    )
    plan = []
    for i in range(300):
        facility = ["st-marys", "riverside", "lakeside"][i % 3]
        fault = "500" if i % 17 == 0 else ("slow" if i % 23 == 0 else "")
        method = "POST" if i % 5 == 0 else "GET"
        plan.append((facility, fault, method))
    sent = Counter(f for f, _, _ in plan)
    bad = Counter(f for f, fault, _ in plan if fault == "500")
    gets = Counter(f for f, _, m in plan if m == "GET")
    slow_gets = Counter(f for f, fault, m in plan if m == "GET" and fault == "slow")
    async with running_gateway(cfg) as gw:
        async with aiohttp.ClientSession() as s:
            for facility, fault, method in plan:
                headers = {"X-Facility-ID": facility}
                if fault:
                    headers |= {"X-Test-Fault": fault, "X-Test-Sleep": "0.3"}
                async with s.request(
                    method, f"http://127.0.0.1:{gw.proxy_port}/fhir/Patient/1", headers=headers
                ) as r:
                    await r.read()
            await flushed(gw)
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/api/v1/slo?facility=riverside") as r:
                assert r.status == 200
                api = (await r.json())["slos"]
            async with s.get(f"http://127.0.0.1:{gw.admin_port}/api/v1/slo?facility=nowhere") as r:
                assert r.status == 404
    assert {row["facility"] for row in api} == {"riverside"}
    got = slo_status(cfg)
    for fac in sent:
        assert got[("avail", fac)]["total"] == sent[fac]
        assert got[("avail", fac)]["good"] == sent[fac] - bad[fac]
        assert got[("fast-reads", fac)]["total"] == gets[fac]
        assert got[("fast-reads", fac)]["good"] == gets[fac] - slow_gets[fac]
    assert got[("avail", "*")]["total"] == 300
    api_row = next(r for r in api if r["slo"] == "avail")
    assert api_row["total"] == sent["riverside"]
    table = vitalgate("slo", "status", "--config", str(cfg)).stdout.splitlines()
    assert table[0].split()[:3] == ["SLO", "FACILITY", "OBJECTIVE"]
    budgets = [float(line.split()[4].rstrip("%")) for line in table[1:]]
    assert budgets == sorted(budgets)  # worst budget first


def _send(base: str, n: int, facility: str) -> None:
    for _ in range(n):
        assert fetch(base + "/fhir/Observation?_count=1", {"X-Facility-ID": facility}) == 200


def test_kill_9_loses_at_most_a_flush_and_restart_continues(tmp_path: Path, peers: BackgroundPeers) -> None:
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        slos=SLOS,
        extra={"telemetry": {"store": {"path": "store.db", "flush_interval": "500ms"}}},
    )
    gw = GatewayProcess(cfg)
    _send(gw.proxy, 120, "st-marys")
    wait_until(lambda: live_total(gw.admin, "avail", "st-marys") == 120, "the 120 requests flushed")
    _send(gw.proxy, 7, "riverside")  # may or may not be flushed before the kill
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait()
    db = tmp_path / "store.db"
    import sqlite3

    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    after_kill = slo_status(cfg)
    assert after_kill[("avail", "st-marys")]["total"] == 120
    assert after_kill[("avail", "riverside")]["total"] in (0, 7)
    lost = 7 - int(str(after_kill[("avail", "riverside")]["total"]))

    gw = GatewayProcess(cfg)  # restart: continues the same minute, hour and day rows
    _send(gw.proxy, 30, "st-marys")
    assert gw.terminate() == 0
    final = slo_status(cfg)
    assert final[("avail", "st-marys")]["total"] == 150
    assert final[("avail", "*")]["total"] == 157 - lost


def test_store_rebuilt_from_the_access_log(tmp_path: Path, peers: BackgroundPeers) -> None:
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        slos=SLOS,
        extra={"telemetry": {"store": {"path": "store.db", "flush_interval": "200ms"}}},
    )
    gw = GatewayProcess(cfg)
    _send(gw.proxy, 40, "st-marys")
    _send(gw.proxy, 25, "lakeside")
    assert gw.terminate() == 0
    live = slo_status(cfg)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"store.db{suffix}").unlink(missing_ok=True)  # the store is lost
    for _ in range(2):  # importing twice changes nothing
        out = vitalgate(
            "store", "import", "--config", str(cfg), "--access-log", str(tmp_path / "access.log"), timeout=120
        ).stdout
        assert "imported 65 requests" in out
    rebuilt = slo_status(cfg)
    for key in (("avail", "st-marys"), ("avail", "lakeside"), ("fast-reads", "*")):
        assert (rebuilt[key]["total"], rebuilt[key]["good"]) == (live[key]["total"], live[key]["good"])
    assert rebuilt[("avail", "st-marys")]["total"] == 40
    missing = vitalgate(
        "store",
        "import",
        "--config",
        str(cfg),
        "--access-log",
        str(tmp_path / "nope.log"),
        check=False,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "nope.log: no such file" in missing.stderr


def test_a_second_gateway_on_the_same_store_is_refused(tmp_path: Path, peers: BackgroundPeers) -> None:
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    store = {"telemetry": {"store": {"path": str(tmp_path / "shared.db"), "flush_interval": "200ms"}}}
    first = GatewayProcess(gateway_config(first_dir, peers.upstream.port, slos=SLOS, extra=store))
    try:
        second_cfg = gateway_config(second_dir, peers.upstream.port, slos=SLOS, extra=store)
        second = subprocess.run(
            [sys.executable, "-m", "vitalgate", "serve", "--config", str(second_cfg)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"in use by another vitalgate process (pid {first.proc.pid})" in second.stderr
        _send(first.proxy, 12, "st-marys")  # the first one never noticed
    finally:
        assert first.terminate() == 0
    assert slo_status(first_dir / "gateway.yaml")[("avail", "st-marys")]["total"] == 12


def test_a_full_disk_that_frees_again_loses_nothing_and_counts_once(
    tmp_path: Path, peers: BackgroundPeers
) -> None:
    """The file-size limit (RLIMIT_FSIZE, set on the running gateway with prlimit) makes every
    write that grows a file fail, as a full disk does; then it is lifted. The batches written
    meanwhile are retried whole: the store ends with exactly what was sent, counted once."""
    cfg = gateway_config(
        tmp_path,
        peers.upstream.port,
        slos=SLOS,
        extra={
            "telemetry": {
                "access_log": {"path": "/dev/null"},  # a device: no file size to limit
                "store": {"path": "store.db", "flush_interval": "200ms"},
            }
        },
    )
    gw = GatewayProcess(cfg)
    try:
        _send(gw.proxy, 20, "st-marys")
        wait_until(lambda: live_total(gw.admin, "avail", "st-marys") == 20, "the first 20 flushed")
        subprocess.run(["prlimit", f"--pid={gw.proc.pid}", "--fsize=0:unlimited"], check=True)
        _send(gw.proxy, 30, "st-marys")
        wait_until(lambda: _store_write_errors(gw.admin) >= 2, "several flushes fail and are kept")
        subprocess.run(["prlimit", f"--pid={gw.proc.pid}", "--fsize=unlimited:unlimited"], check=True)
        _send(gw.proxy, 5, "st-marys")
        wait_until(lambda: live_total(gw.admin, "avail", "st-marys") == 55, "the retries succeed")
        metrics = _metrics(gw.admin)
        assert counter_value(metrics, "vitalgate_telemetry_dropped_total", signal="store") == 0
    finally:
        assert gw.terminate() == 0
    assert slo_status(cfg)[("avail", "st-marys")]["total"] == 55  # the history, read afresh
    # (the failure's own line could not be written either: stderr is a file on the same "disk")
    assert "store writes succeed again" in gw.stderr_path.read_text()


def _store_write_errors(admin: str) -> float:
    return counter_value(_metrics(admin), "vitalgate_store_errors_total", operation="write")


def _metrics(admin: str) -> str:
    with urllib.request.urlopen(admin + "/metrics", timeout=5) as r:
        return str(r.read().decode())


def _json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return dict(json.loads(r.read()))
