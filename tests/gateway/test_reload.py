"""Reloading the config (SIGHUP, ``vitalgate reload``): validated first, applied without closing
a listener or failing a request, all workers or none."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from tests import slos
from tests.support.cli import vitalgate
from tests.support.gateway import GatewayProcess, StartGateway, gateway_config
from tests.support.peers import BackgroundPeers
from tests.support.readers import counter_value, fetch, fetch_text, histogram_counts
from tests.support.waiting import wait_until

FACILITIES = ["st-marys", "riverside", "lakeside"]


def _config(tmp_path: Path, peers: BackgroundPeers, **extra: Any) -> Path:
    return gateway_config(
        tmp_path,
        peers.upstream.port,
        peers.sink_port,
        slos=slos.AVAIL,
        extra={"listen": "127.0.0.1:0", **extra},
    )


def _with_route(cfg: Path, prefix: str | None) -> None:
    """Rewrite gateway.yaml with one more route (``prefix`` to the fhir upstream), or without."""
    doc = yaml.safe_load(cfg.read_text())
    doc["routes"] = [r for r in doc["routes"] if r["prefix"] in ("/fhir/", "/scheduling/")]
    if prefix is not None:
        doc["routes"].insert(0, {"prefix": prefix, "upstream": "fhir", "kind": "fhir"})
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))


INVALID_ROUTE = "- {prefix: /broken/, upstream: nowhere}\n"


def _broken(cfg: Path) -> None:
    """A route to an upstream that does not exist, appended to the file as a person would."""
    text = cfg.read_text()
    cfg.write_text(text.replace("routes:\n", "routes:\n" + INVALID_ROUTE, 1))


def _broken_line(cfg: Path) -> int:
    return cfg.read_text().splitlines().index(INVALID_ROUTE.rstrip("\n")) + 1


def test_sighup_applies_a_valid_config_and_keeps_the_running_one_on_errors(
    tmp_path: Path, peers: BackgroundPeers, gateway_process: StartGateway
) -> None:
    cfg = _config(tmp_path, peers)
    gw = gateway_process(cfg)
    proxy = gw.bound_proxy()
    hdr = {"X-Facility-ID": "st-marys"}
    assert fetch(proxy + "/v2/Patient/1", hdr) == 404  # no such route yet
    before = fetch_text(gw.admin + "/metrics")
    old_sha = next(k[1] for k in _info(before))  # the sha256 label of vitalgate_config_info

    _with_route(cfg, "/v2/")
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: bool(gw.events("config_reloaded")), "the reload is logged")
    assert fetch(proxy + "/v2/Patient/1", hdr) == 200
    metrics = fetch_text(gw.admin + "/metrics")
    assert counter_value(metrics, "vitalgate_config_reloads_total", result="success") == 1
    assert counter_value(metrics, "vitalgate_config_last_reload_successful") == 1
    (new_sha,) = (k[1] for k in _info(metrics))
    assert new_sha != old_sha
    # Counters carried on: the request before the reload is still counted.
    assert sum(histogram_counts(metrics).values()) == 2

    _broken(cfg)
    line = _broken_line(cfg)
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: bool(gw.events("config_reload_failed")), "the failure is logged")
    (failed,) = gw.events("config_reload_failed")
    assert failed["level"] == "error"
    assert any(e.startswith(f"{cfg}:{line}:") and "nowhere" in e for e in failed["errors"])
    assert fetch(proxy + "/v2/Patient/1", hdr) == 200  # the running config stayed
    metrics = fetch_text(gw.admin + "/metrics")
    assert counter_value(metrics, "vitalgate_config_reloads_total", result="failure") == 1
    assert counter_value(metrics, "vitalgate_config_last_reload_successful") == 0
    assert [k[1] for k in _info(metrics)] == [new_sha]

    # `vitalgate reload` checks the file first: the gateway is not even asked.
    out = vitalgate("reload", "--config", str(cfg), check=False)
    assert out.returncode == 1 and f"{cfg}:{line}:" in out.stderr

    # A valid file through the admin API, with a setting only a restart applies.
    _with_route(cfg, None)
    doc = yaml.safe_load(cfg.read_text())
    doc["limits"]["shutdown_timeout"] = "20s"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = vitalgate("reload", "--config", str(cfg), check=False)
    assert out.returncode == 0, out.stderr
    assert "needs a restart to change: limits" in out.stdout
    assert fetch(proxy + "/v2/Patient/1", hdr) == 404  # the route is gone again
    metrics = fetch_text(gw.admin + "/metrics")
    assert counter_value(metrics, "vitalgate_config_reloads_total", result="success") == 2
    assert gw.terminate() == 0


def _info(metrics: str) -> list[tuple[str, str]]:
    """The label sets of vitalgate_config_info: (name, sha256)."""
    out = []
    for line in metrics.splitlines():
        if line.startswith("vitalgate_config_info{"):
            out.append(("sha256", line.split('sha256="', 1)[1].split('"', 1)[0]))
    return out


def test_reload_needs_the_sre_role(
    tmp_path: Path, peers: BackgroundPeers, gateway_process: StartGateway
) -> None:
    import hashlib

    tokens = [
        {"name": "ops", "sha256": hashlib.sha256(b"ops-token").hexdigest(), "role": "sre"},
        {"name": "eng", "sha256": hashlib.sha256(b"eng-token").hexdigest(), "role": "engineer"},
    ]
    cfg = _config(tmp_path, peers)
    doc = yaml.safe_load(cfg.read_text())
    doc["admin"]["tokens"] = tokens
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    gw = gateway_process(cfg)
    env = dict(os.environ, VITALGATE_ADMIN_TOKEN="eng-token")
    out = vitalgate("reload", "--config", str(cfg), check=False, env=env)
    assert out.returncode == 1 and "HTTP 403" in out.stderr
    env["VITALGATE_ADMIN_TOKEN"] = "ops-token"
    out = vitalgate("reload", "--config", str(cfg), check=False, env=env)
    assert out.returncode == 0, out.stderr
    assert gw.terminate() == 0


class _Load:
    """Clients sending steadily over keep-alive connections (a new one now and then), counting
    every answer by (facility, status) and every failure by its kind."""

    def __init__(self, proxy: str, clients: int, rate_each: float) -> None:
        self._host = proxy.removeprefix("http://")
        self._interval = 1.0 / rate_each
        self.sent: Counter[tuple[str, int]] = Counter()
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def __enter__(self) -> _Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _client(self, index: int) -> None:
        conn = http.client.HTTPConnection(self._host, timeout=30)
        i = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            facility = FACILITIES[(index + i) % 3]
            if i % 50 == 49:  # a new connection now and then: the kernel picks a worker per connection
                conn.close()
                conn = http.client.HTTPConnection(self._host, timeout=30)
            try:
                conn.request("GET", f"/fhir/Patient/{i}", headers={"X-Facility-ID": facility})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(self._host, timeout=30)
            else:
                with self._lock:
                    self.sent[(facility, resp.status)] += 1
                    if resp.status != 200:
                        self.failures[f"HTTP {resp.status}"] += 1
            i += 1
            next_at += self._interval
            time.sleep(max(0.0, next_at - time.monotonic()))  # paced: rate_each requests a second per client
        conn.close()


def test_reload_under_load_fails_no_request_and_loses_no_count(
    tmp_path: Path, peers: BackgroundPeers
) -> None:
    """Two workers at a few hundred requests a second for 20 s, reloaded every 2 s, alternating
    a route change and an invalid config: no request fails, the new route takes effect in
    both workers, the invalid configs are refused with their messages, and sent = counted =
    logged = spans."""
    cfg = _config(tmp_path, peers)
    gw = GatewayProcess(cfg, workers=2)
    results: list[tuple[str, int, str]] = []
    try:
        proxy = gw.bound_proxy()
        probe_hdr = {"X-Facility-ID": "riverside"}
        with _Load(proxy, clients=6, rate_each=50.0) as load:
            for step in range(10):
                time.sleep(1.0)  # the load runs on between reloads: one every 2 s for 20 s
                if step % 2 == 0:
                    prefix = f"/v{step}/"
                    _with_route(cfg, prefix)
                    out = vitalgate("reload", "--config", str(cfg), check=False)
                    results.append(("route", out.returncode, out.stdout + out.stderr))
                    # Both workers took it: new connections (each may land on either) see it.
                    statuses = {fetch(proxy + prefix + "Patient/1", probe_hdr) for _ in range(8)}
                    assert statuses == {200}, (step, statuses)
                else:
                    _broken(cfg)
                    # Straight to the gateway (SIGHUP to the supervisor): it must refuse it itself.
                    gw.proc.send_signal(signal.SIGHUP)
                    n = step // 2 + 1
                    wait_until(
                        lambda n=n: len(gw.events("config_reload_failed")) == n,  # type: ignore[misc]
                        "the invalid config is refused",
                    )
                    results.append(("invalid", 0, ""))
                time.sleep(1.0)  # (the second half of the 2 s)
        metrics = fetch_text(gw.admin + "/metrics")
    finally:
        assert gw.terminate() == 0
    sent = sum(load.sent.values())
    print(f"reload under load: {sent} requests, {len(results)} reloads, failures {dict(load.failures)}")
    assert not load.failures, load.failures
    assert sent > 20 * 200, sent  # a few hundred a second for 20 s
    assert [r[1] for r in results if r[0] == "route"] == [0] * 5, results
    failed = gw.events("config_reload_failed")
    assert len(failed) == 5 and all("nowhere" in " ".join(e["errors"]) for e in failed)
    assert counter_value(metrics, "vitalgate_config_reloads_total", result="success") == 5
    assert counter_value(metrics, "vitalgate_config_reloads_total", result="failure") == 5
    assert all(e["workers"] == 2 for e in gw.events("config_reloaded"))
    assert len(gw.events("worker_reloaded")) == 10  # 5 reloads x 2 workers

    # Conservation over the whole run: the load's requests plus the 40 route checks.
    expected: Counter[str] = Counter()
    for (facility, _status), n in load.sent.items():
        expected[facility] += n
    expected["riverside"] += 40
    by_metric: Counter[str] = Counter()
    for key, value in histogram_counts(metrics).items():
        by_metric[key[0]] += int(value)
    assert by_metric == expected
    records = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert Counter(r["facility"] for r in records if r["event"] == "request") == expected
    server = [s for s in peers.sink.spans if s.kind == "SERVER"]
    assert Counter(str(s.attributes["facility"]) for s in server) == expected


def test_a_worker_that_does_not_prepare_keeps_every_worker_on_the_running_config(
    tmp_path: Path, peers: BackgroundPeers, gateway_process: StartGateway
) -> None:
    """All or none: with one of two workers stopped (SIGSTOP) the reload cannot complete; the
    other worker discards what it prepared, and once the stopped one runs again it discards
    its own: neither serves the new route."""
    cfg = _config(tmp_path, peers)
    gw = gateway_process(cfg, workers=2)
    proxy = gw.bound_proxy()
    children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
    stalled = int(children[1])
    _with_route(cfg, "/v9/")
    os.kill(stalled, signal.SIGSTOP)
    try:
        out = vitalgate("reload", "--config", str(cfg), check=False)
    finally:
        os.kill(stalled, signal.SIGCONT)
    assert out.returncode == 1
    assert "did not prepare within 15 s" in out.stderr
    time.sleep(1)  # the stalled worker handles its pending signals: prepare, then discard
    statuses = {fetch(proxy + "/v9/Patient/1", {"X-Facility-ID": "riverside"}) for _ in range(12)}
    assert statuses == {404}  # no worker took the new route
    assert fetch(proxy + "/fhir/Patient/1", {"X-Facility-ID": "riverside"}) == 200
    metrics = fetch_text(gw.admin + "/metrics")
    assert counter_value(metrics, "vitalgate_config_reloads_total", result="failure") == 1
    assert gw.events("worker_reloaded") == []
    # Once every worker answers, the same file reloads.
    out = vitalgate("reload", "--config", str(cfg), check=False)
    assert out.returncode == 0, out.stderr
    statuses = {fetch(proxy + "/v9/Patient/1", {"X-Facility-ID": "riverside"}) for _ in range(12)}
    assert statuses == {200}
    assert gw.terminate() == 0
