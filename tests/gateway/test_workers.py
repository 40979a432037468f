"""``vitalgate serve --workers N``: one port, several processes, and still exact telemetry."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

from gateway.roles import Role
from gateway.server import Gateway
from tests import slos
from tests.support.cli import slo_status
from tests.support.gateway import GatewayProcess, StartGateway, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import assert_period_gauges, counter_value, fetch, fetch_text, histogram_counts
from tests.support.waiting import wait_until
from vitalgate.config import load_config

SLOS = slos.AVAIL
FACILITIES = ["st-marys", "riverside", "lakeside"]


def _worker_pids(supervisor_pid: int) -> list[int]:
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split()
    return [int(c) for c in children]


def _client(base: str, n: int, index: int, sent: Counter[tuple[str, int]], lock: threading.Lock) -> None:
    host = base.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=30)
    for i in range(n):
        facility = FACILITIES[(index + i) % 3]
        headers = {"X-Facility-ID": facility}
        if i % 25 == 0:
            headers["X-Test-Fault"] = "500"
        if i % 10 == 0:  # a new connection now and then: the kernel picks a worker per connection
            conn.close()
            conn = http.client.HTTPConnection(host, timeout=30)
        conn.request("GET", f"/fhir/Patient/{i}", headers=headers)
        resp = conn.getresponse()
        resp.read()
        with lock:
            sent[(facility, resp.status)] += 1
    conn.close()


def _drive(base: str, clients: int, each: int) -> Counter[tuple[str, int]]:
    """``clients`` threads sending ``each`` requests; what was answered, by (facility, status)."""
    sent: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()
    threads = [threading.Thread(target=_client, args=(base, each, i, sent, lock)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return sent


def _config(tmp_path: Path, peers: BackgroundPeers) -> Path:
    return gateway_config(
        tmp_path,
        peers.upstream.port,
        peers.sink_port,
        slos=SLOS,
        extra={
            "listen": "127.0.0.1:0",
            "telemetry": {"store": {"path": "store.db", "flush_interval": "300ms"}},
        },
    )


def _proxy_base(gw: GatewayProcess) -> str:
    (listening,) = gw.events("listening")
    assert listening["level"] == "info" and listening["workers"] == 2
    return gw.bound_proxy()


def _by_facility(metrics: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for key, value in histogram_counts(metrics).items():
        out[key[0]] += int(value)
    return out


def test_workers_share_the_port_and_keep_every_count_exact(tmp_path: Path, peers: BackgroundPeers) -> None:
    cfg = _config(tmp_path, peers)
    gw = GatewayProcess(cfg, workers=2)
    try:
        base = _proxy_base(gw)
        assert len(_worker_pids(gw.proc.pid)) == 2
        sent = _drive(base, clients=8, each=150)
        metrics = fetch_text(gw.admin + "/metrics")
    finally:
        assert gw.terminate() == 0  # SIGTERM: every worker drains and flushes
    assert sum(sent.values()) == 1200
    per_facility: Counter[str] = Counter()
    for (facility, _status), n in sent.items():
        per_facility[facility] += n
    bad = {f: sent[(f, 500)] for f in FACILITIES}
    assert all(bad.values())

    # /metrics on the supervisor: both workers summed, exactly; info gauges not doubled.
    assert _by_facility(metrics) == per_facility
    assert counter_value(metrics, "vitalgate_facility_info", facility="riverside") == 1
    assert_period_gauges(metrics)
    digest = hashlib.sha256(cfg.read_bytes() + (cfg.parent / "slos.yaml").read_bytes()).hexdigest()
    assert counter_value(metrics, "vitalgate_config_info", sha256=digest) == 1
    assert counter_value(metrics, "vitalgate_worker_restarts_total") == 0

    # Spans: one SERVER span per request, from both workers.
    server = [s for s in peers.sink.spans if s.kind == "SERVER"]
    assert Counter(s.attributes["facility"] for s in server) == per_facility
    instances = {s.resource.get("service.instance.id") for s in server}
    assert len(instances) == 2 and all("/worker-" in str(i) for i in instances)

    # The access log: every line whole (none torn or interleaved), one per request.
    lines = (tmp_path / "access.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert Counter(r["facility"] for r in records if r["event"] == "request") == per_facility

    # The store: both workers added to the same rows.
    got = slo_status(cfg)
    for f in FACILITIES:
        assert got[("avail", f)]["total"] == per_facility[f]
        assert got[("avail", f)]["good"] == per_facility[f] - bad[f]
    assert got[("avail", "*")]["total"] == 1200


def test_a_dead_worker_is_replaced_and_its_counts_kept(
    tmp_path: Path, peers: BackgroundPeers, gateway_process: StartGateway
) -> None:
    gw = gateway_process(_config(tmp_path, peers), workers=2)
    base = _proxy_base(gw)
    sent = _drive(base, clients=4, each=50)
    before = _by_facility(fetch_text(gw.admin + "/metrics"))
    assert sum(before.values()) == sum(sent.values()) == 200
    victim = _worker_pids(gw.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        pids = _worker_pids(gw.proc.pid)
        return len(pids) == 2 and victim not in pids

    # Until the new worker binds, SO_REUSEPORT hands every connection to the other.
    wait_until(replaced, "the killed worker replaced", timeout_s=30)
    for _ in range(20):
        assert fetch(base + "/fhir/Patient/x", {"X-Facility-ID": "lakeside"}) == 200
    # A request is counted as its response ends, which the client may see a moment
    # before the worker has recorded it: wait for the last one, not a fixed time.
    expected = before + Counter({"lakeside": 20})
    wait_until(
        lambda: _by_facility(fetch_text(gw.admin + "/metrics")) == expected,
        "the requests after the replacement counted",
    )
    metrics = fetch_text(gw.admin + "/metrics")
    after = _by_facility(metrics)
    assert "exited" in gw.stderr_path.read_text()
    # The supervisor counts the replacement (what VitalgateWorkerRestarting alerts on).
    assert counter_value(metrics, "vitalgate_worker_restarts_total") == 1
    assert (
        counter_value(metrics, "vitalgate_worker_restarts_total", worker="0")
        + counter_value(metrics, "vitalgate_worker_restarts_total", worker="1")
        == 1
    )
    assert after == before + Counter({"lakeside": 20})


def test_the_supervisor_builds_no_data_plane(tmp_path: Path) -> None:
    """The supervisor proxies nothing: no upstream pools, router, recorder, store writer or proxy
    are built in it (a worker and a single process build them)."""
    config = load_config(gateway_config(tmp_path, 1))
    supervisor = Gateway(config, role=Role("supervisor", count=2, port=1, metrics_dir=str(tmp_path)))
    assert supervisor.dataplane is None
    single = Gateway(config)
    assert single.dataplane is not None and set(single.dataplane.upstreams) == set(config.gateway.upstreams)
    # The store is on in this config: the per-request counter, and its writer thread beside it.
    assert single.dataplane.recorder is not None and single.dataplane.store_writer is not None
